using System;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Inference
{
    /// <summary>
    /// Per-layer keys/values after RoPE, before the GQA repeat: [1, Hkv, T_ℓ, d]. T_ℓ differs between
    /// layers once tokens are excluded (Drop mode). In Mask mode a layer may carry an additive key
    /// mask [1, 1, 1, T] (0 or −∞), and a layer may mark keys whose attention is made uniform
    /// [1, 1, 1, T] (1 or 0). Owned by the caller; Dispose frees the tensors.
    /// </summary>
    public sealed class KvCache : IDisposable
    {
        readonly Tensor[] keys, values, masks, uniform;

        public KvCache(int layers)
        {
            keys = new Tensor[layers];
            values = new Tensor[layers];
            masks = new Tensor[layers];
            uniform = new Tensor[layers];
        }

        public int Layers => keys.Length;
        public Tensor Keys(int layer) => keys[layer];
        public Tensor Values(int layer) => values[layer];
        public Tensor KeyMask(int layer) => masks[layer];
        public Tensor UniformKeys(int layer) => uniform[layer];
        /// <summary>Keys held at a layer (after exclusions).</summary>
        public long Length(int layer) => keys[layer]?.shape[2] ?? 0;

        /// <summary>Stores the prefill's keys/values of a layer (detached from any dispose scope).</summary>
        public void Set(int layer, Tensor k, Tensor v, Tensor keyMask, Tensor uniformKeys)
        {
            Replace(ref keys[layer], k);
            Replace(ref values[layer], v);
            Replace(ref masks[layer], keyMask?.alias()); // the state keeps (and frees) its own handles
            Replace(ref uniform[layer], uniformKeys?.alias());
        }

        /// <summary>Appends one decode step's key/value [1, Hkv, 1, d] to a layer.</summary>
        public void Append(int layer, Tensor k, Tensor v)
        {
            Replace(ref keys[layer], keys[layer] is null ? k.alias() : cat(new[] { keys[layer], k }, 2));
            Replace(ref values[layer], values[layer] is null ? v.alias() : cat(new[] { values[layer], v }, 2));
            if (masks[layer] is not null)
                Replace(ref masks[layer], cat(new[] { masks[layer], zeros(1, 1, 1, 1, masks[layer].dtype, masks[layer].device) }, 3));
            if (uniform[layer] is not null) // a generated token is never in the uniform group
                Replace(ref uniform[layer], cat(new[] { uniform[layer], zeros(1, 1, 1, 1, uniform[layer].dtype, uniform[layer].device) }, 3));
        }

        static void Replace(ref Tensor slot, Tensor value)
        {
            var old = slot;
            slot = value?.DetachFromDisposeScope();
            if (old is not null && !ReferenceEquals(old, slot)) old.Dispose();
        }

        public void Dispose()
        {
            for (int i = 0; i < keys.Length; i++)
            {
                keys[i]?.Dispose(); values[i]?.Dispose(); masks[i]?.Dispose(); uniform[i]?.Dispose();
                keys[i] = values[i] = masks[i] = uniform[i] = null;
            }
        }
    }
}
