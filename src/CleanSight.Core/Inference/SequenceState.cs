using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Inference
{
    /// <summary>
    /// The rows flowing through the decoder during one prefill (batch 1). Exclusions in Drop mode
    /// shrink it; in Mask mode they set −∞ in <see cref="KeyMask"/> instead.
    /// </summary>
    /// It owns its tensors (kept out of dispose scopes; a replaced tensor is freed at once).
    public sealed class SequenceState : System.IDisposable
    {
        Tensor hidden, keyMask, uniformKeys, positionTensor;

        /// <summary>[1, T', D] residual stream</summary>
        public Tensor Hidden { get => hidden; set => Own(ref hidden, value); }
        /// <summary>absolute position of each row (RoPE positions are kept across exclusions)</summary>
        public long[] Positions { get; private set; }
        /// <summary>Mask mode: additive key mask [1, 1, 1, T'] (0 or −∞), null while nothing is masked</summary>
        public Tensor KeyMask { get => keyMask; private set => Own(ref keyMask, value); }
        /// <summary>keys whose attention is made uniform: [1, 1, 1, T'] (1 or 0), null while there are none</summary>
        public Tensor UniformKeys { get => uniformKeys; private set => Own(ref uniformKeys, value); }
        public ExclusionMode Mode { get; }
        /// <summary>[T'] int64, the same as <see cref="Positions"/></summary>
        public Tensor PositionTensor { get => positionTensor; private set => Own(ref positionTensor, value); }

        static void Own(ref Tensor slot, Tensor value)
        {
            var old = slot;
            slot = value?.DetachFromDisposeScope();
            if (old is not null && !ReferenceEquals(old, slot)) old.Dispose();
        }

        public void Dispose()
        {
            Own(ref hidden, null); Own(ref keyMask, null); Own(ref uniformKeys, null); Own(ref positionTensor, null);
        }

        public SequenceState(Tensor hidden, ExclusionMode mode)
        {
            Hidden = hidden;
            Mode = mode;
            Positions = Enumerable.Range(0, (int)hidden.shape[1]).Select(i => (long)i).ToArray();
            PositionTensor = tensor(Positions, device: hidden.device);
        }

        public long Length => Positions.Length;

        /// <summary>Row indices (into the current rows) of the given absolute positions that are still present.</summary>
        public long[] RowsOf(System.Collections.Generic.IEnumerable<long> positions)
        {
            var set = positions.ToHashSet();
            return Enumerable.Range(0, Positions.Length).Where(i => set.Contains(Positions[i])).Select(i => (long)i).ToArray();
        }

        /// <summary>Drop mode: keep only the given rows (sorted) of Hidden and Positions.</summary>
        public Tensor Keep(long[] rows)
        {
            var index = tensor(rows, device: Hidden.device);
            Hidden = Hidden.index_select(1, index);
            if (UniformKeys is not null) UniformKeys = UniformKeys.index_select(3, index);
            Positions = rows.Select(r => Positions[r]).ToArray();
            PositionTensor = tensor(Positions, device: Hidden.device);
            return index;
        }

        /// <summary>Mask mode: mark the given rows as excluded keys.</summary>
        public void Mask(long[] rows, ScalarType dtype)
        {
            var mask = KeyMask ?? zeros(1, 1, 1, Length, dtype, Hidden.device);
            mask = mask.clone();
            using var minusInfinity = float.NegativeInfinity.ToScalar(); // explicit: see TensorArithmetic
            mask.index_fill_(3, tensor(rows, device: Hidden.device), minusInfinity);
            KeyMask = mask;
        }

        /// <summary>Mark the given rows as keys whose attention is made uniform (added to any marked before).</summary>
        public void Flatten(long[] rows)
        {
            var marks = UniformKeys?.clone() ?? zeros(1, 1, 1, Length, ScalarType.Float32, Hidden.device);
            using var one = 1.0f.ToScalar();
            marks.index_fill_(3, tensor(rows, device: Hidden.device), one);
            UniformKeys = marks;
        }
    }
}
