using System;
using System.Collections.Generic;

namespace CleanSight.Core.Inference
{
    /// <summary>
    /// Post-softmax attention of one query (the last prompt token) over the keys present at a layer,
    /// per head. Weights are row-major [heads, keys]; <see cref="KeyPositions"/> maps a key index to
    /// its absolute sequence position (keys excluded at earlier layers are absent).
    /// </summary>
    public sealed record AttentionRow(int Layer, int Heads, long QueryPosition, long[] KeyPositions, float[] Weights)
    {
        public int Keys => KeyPositions.Length;
        public float this[int head, int key] => Weights[head * KeyPositions.Length + key];
    }

    /// <summary>
    /// The one seam between the model and any defense. During the prefill, at each decoder layer
    /// the model asks <see cref="Observes"/>; if true it computes the last query's attention row by
    /// hand (every other layer keeps the fast kernel) and hands it to <see cref="OnAttention"/>,
    /// which may return absolute key positions to exclude from this layer on — for the rest of the
    /// prefill and every decode step. Kept positions keep their RoPE positions.
    /// A policy may also edit attention instead of removing keys: <see cref="Uniform"/>, asked at every
    /// layer before anything else there, names keys whose attention is made uniform from that layer on.
    /// </summary>
    public interface IAttentionPolicy
    {
        bool Observes(int layer);

        /// <returns>positions to exclude from this layer on; empty for none</returns>
        IReadOnlyCollection<long> OnAttention(AttentionRow row);

        /// <summary>
        /// Keys (absolute positions) whose attention is made uniform from this layer on, for every
        /// query of the prefill and every decode step: each query keeps its total attention on them
        /// and spreads it evenly over those it can see. Added to any named at earlier layers.
        /// </summary>
        /// <returns>positions to flatten from this layer on; empty for none (the default)</returns>
        IReadOnlyCollection<long> Uniform(int layer) => Array.Empty<long>();
    }

    /// <summary>The empty policy: observe nothing, exclude nothing (no defense).</summary>
    public sealed class NoPolicy : IAttentionPolicy
    {
        public static readonly NoPolicy Instance = new();
        public bool Observes(int layer) => false;
        public IReadOnlyCollection<long> OnAttention(AttentionRow row) => Array.Empty<long>();
    }

    /// <summary>
    /// Observe chosen layers and keep their rows (calibration, analysis, tests). Given an inner
    /// policy, it also observes the inner policy's layers and passes their rows on, returning its
    /// exclusions: recording rides along a defense's own prefill, with no extra forward pass.
    /// </summary>
    public sealed class RecordingPolicy : IAttentionPolicy
    {
        readonly HashSet<int> layers;
        readonly IAttentionPolicy inner;
        public List<AttentionRow> Rows { get; } = new();
        public RecordingPolicy(IEnumerable<int> layers) : this(layers, NoPolicy.Instance) { }
        public RecordingPolicy(IEnumerable<int> layers, IAttentionPolicy inner)
        {
            this.layers = new HashSet<int>(layers);
            this.inner = inner ?? NoPolicy.Instance;
        }
        public bool Observes(int layer) => layers.Contains(layer) || inner.Observes(layer);
        public IReadOnlyCollection<long> OnAttention(AttentionRow row)
        {
            if (layers.Contains(row.Layer)) Rows.Add(row);
            return inner.Observes(row.Layer) ? inner.OnAttention(row) : Array.Empty<long>();
        }
        public IReadOnlyCollection<long> Uniform(int layer) => inner.Uniform(layer);
    }

    /// <summary>Exclude a fixed set of positions from a fixed layer on (purification tests, prune-all, random pruning).</summary>
    public sealed class FixedExclusionPolicy : IAttentionPolicy
    {
        readonly int fromLayer;
        readonly long[] positions;
        public FixedExclusionPolicy(int fromLayer, IEnumerable<long> positions) { this.fromLayer = fromLayer; this.positions = new List<long>(positions).ToArray(); }
        public bool Observes(int layer) => layer == fromLayer;
        public IReadOnlyCollection<long> OnAttention(AttentionRow row) => positions;
    }

    /// <summary>
    /// Make the attention on a fixed set of positions uniform from a fixed layer on (the "uniform
    /// visual attention" baseline: the image tokens keep their share, no token can steal it).
    /// </summary>
    public sealed class UniformAttentionPolicy : IAttentionPolicy
    {
        readonly int fromLayer;
        readonly long[] positions;
        public UniformAttentionPolicy(int fromLayer, IEnumerable<long> positions) { this.fromLayer = fromLayer; this.positions = new List<long>(positions).ToArray(); }
        public bool Observes(int layer) => false;
        public IReadOnlyCollection<long> OnAttention(AttentionRow row) => Array.Empty<long>();
        public IReadOnlyCollection<long> Uniform(int layer) => layer == fromLayer ? positions : Array.Empty<long>();
    }

    /// <summary>
    /// How excluded keys are removed. Drop (default) removes them from the hidden sequence and the
    /// KV cache of the affected layers — cheaper, and exact because an excluded token is never
    /// attended to again. Mask keeps them and adds −∞ to their attention logits (the authors'
    /// formulation); it exists as the reference Drop is tested against.
    /// </summary>
    public enum ExclusionMode { Drop, Mask }
}
