using System;
using System.Linq;
using CleanSight.Core.Checkpoints;
using CleanSight.Core.Inference;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using static TorchSharp.torch;
using static CleanSight.Core.Model.Primitives.TensorArithmetic;

namespace CleanSight.Core.Model.Llama
{
    /// <summary>
    /// Causal grouped-query self-attention with RoPE. The attention-policy seam lives here: at an
    /// observed layer the last query's post-softmax row is computed by hand (the fast kernel still
    /// computes the layer's output) and the policy may exclude keys from this layer on. Keys a policy
    /// makes uniform take the explicit path (<see cref="UniformAttention"/>) at this layer and after.
    /// </summary>
    public sealed class LlamaAttention : nn.Module
    {
        readonly Linear q_proj, k_proj, v_proj, o_proj;
        readonly int heads, kvHeads, headDim;
        readonly double scale;

        public LlamaAttention(LlamaConfig cfg, ScalarType dtype, Device device) : base(nameof(LlamaAttention))
        {
            heads = cfg.NumAttentionHeads;
            kvHeads = cfg.NumKeyValueHeads;
            headDim = cfg.HeadDim;
            scale = 1.0 / Math.Sqrt(headDim);
            q_proj = new Linear(cfg.HiddenSize, (long)heads * headDim, cfg.AttentionBias, dtype, device);
            k_proj = new Linear(cfg.HiddenSize, (long)kvHeads * headDim, cfg.AttentionBias, dtype, device);
            v_proj = new Linear(cfg.HiddenSize, (long)kvHeads * headDim, cfg.AttentionBias, dtype, device);
            o_proj = new Linear((long)heads * headDim, cfg.HiddenSize, cfg.AttentionBias, dtype, device);
            RegisterComponents();
        }

        /// <summary>
        /// Prefill at one layer over the current rows of <paramref name="state"/>. x is the normed
        /// input [1, T', D]. May shrink the state (Drop mode) before computing the output, which then
        /// has the new row count. Stores this layer's keys/values in the cache.
        /// </summary>
        public Tensor Prefill(Tensor x, SequenceState state, int layer, IAttentionPolicy policy, KvCache cache, RotaryEmbedding rope)
        {
            long t = x.shape[1];
            var (cos, sin) = rope.At(state.PositionTensor, x.dtype);
            var q = RotaryEmbedding.Apply(Heads(q_proj.forward(x), heads), cos, sin);   // [1, H, T', d]
            var k = RotaryEmbedding.Apply(Heads(k_proj.forward(x), kvHeads), cos, sin); // [1, Hkv, T', d]
            var v = Heads(v_proj.forward(x), kvHeads);                                  // [1, Hkv, T', d]

            var flatten = policy.Uniform(layer);
            if (flatten.Count > 0) state.Flatten(state.RowsOf(flatten));

            if (policy.Observes(layer))
            {
                var row = LastQueryRow(q, RepeatKv(k), state.KeyMask, state.UniformKeys); // [H, T'] fp32
                var excluded = policy.OnAttention(new AttentionRow(layer, heads, state.Positions[^1],
                    (long[])state.Positions.Clone(), row.data<float>().ToArray()));
                if (excluded.Count > 0)
                {
                    if (excluded.Contains(state.Positions[^1]))
                        throw new InvalidOperationException($"layer {layer}: the query position {state.Positions[^1]} cannot exclude itself");
                    var rows = state.RowsOf(excluded);
                    if (state.Mode == ExclusionMode.Mask) state.Mask(rows, x.dtype);
                    else
                    {
                        var keep = Enumerable.Range(0, (int)t).Select(i => (long)i).Except(rows).ToArray();
                        var index = state.Keep(keep);
                        q = q.index_select(2, index); k = k.index_select(2, index); v = v.index_select(2, index);
                    }
                }
            }

            cache.Set(layer, k, v, state.KeyMask, state.UniformKeys);
            Tensor output;
            if (state.KeyMask is null && state.UniformKeys is null)
                output = nn.functional.scaled_dot_product_attention(q, RepeatKv(k), RepeatKv(v), is_casual: true);
            else
            {
                long n = state.Length;
                var causal = ones(n, n, dtype: ScalarType.Bool, device: x.device).triu(1);
                using var minusInf = float.NegativeInfinity.ToScalar();                    // explicit: see TensorArithmetic
                var mask = zeros(n, n, x.dtype, x.device).masked_fill(causal, minusInf);  // [T', T']
                if (state.KeyMask is not null) mask = Add(mask, state.KeyMask);             // [1, 1, T', T']
                output = state.UniformKeys is null
                    ? nn.functional.scaled_dot_product_attention(q, RepeatKv(k), RepeatKv(v), mask)
                    : UniformAttention(q, RepeatKv(k), RepeatKv(v), mask, state.UniformKeys);
            }
            return o_proj.forward(Merge(output));                                       // [1, T', D]
        }

        /// <summary>One decode step: x [1, 1, D] at an absolute position; appends to this layer's cache.</summary>
        public Tensor Decode(Tensor x, Tensor position, int layer, KvCache cache, RotaryEmbedding rope)
        {
            var (cos, sin) = rope.At(position, x.dtype);
            var q = RotaryEmbedding.Apply(Heads(q_proj.forward(x), heads), cos, sin);   // [1, H, 1, d]
            var k = RotaryEmbedding.Apply(Heads(k_proj.forward(x), kvHeads), cos, sin); // [1, Hkv, 1, d]
            var v = Heads(v_proj.forward(x), kvHeads);
            cache.Append(layer, k, v);
            // One query over the cache: no causal mask (the cache holds only the past and itself).
            var output = cache.UniformKeys(layer) is null
                ? nn.functional.scaled_dot_product_attention(
                    q, RepeatKv(cache.Keys(layer)), RepeatKv(cache.Values(layer)), cache.KeyMask(layer))
                : UniformAttention(q, RepeatKv(cache.Keys(layer)), RepeatKv(cache.Values(layer)), cache.KeyMask(layer), cache.UniformKeys(layer));
            return o_proj.forward(Merge(output));
        }

        /// <summary>Full causal attention over a batch with no cache or policy (training): x [B, T, D].</summary>
        public Tensor Forward(Tensor x, Tensor cos, Tensor sin)
        {
            var q = RotaryEmbedding.Apply(Heads(q_proj.forward(x), heads), cos, sin);
            var k = RotaryEmbedding.Apply(Heads(k_proj.forward(x), kvHeads), cos, sin);
            var v = Heads(v_proj.forward(x), kvHeads);
            return o_proj.forward(Merge(nn.functional.scaled_dot_product_attention(q, RepeatKv(k), RepeatKv(v), is_casual: true)));
        }

        /// <summary>softmax(q_last·kᵀ·scale + mask) in fp32, as HF's eager attention, with any uniform keys flattened: [H, T].</summary>
        Tensor LastQueryRow(Tensor q, Tensor kRep, Tensor keyMask, Tensor uniformKeys)
        {
            using var s = scale.ToScalar();                                             // explicit: see TensorArithmetic
            var qLast = q.narrow(2, q.shape[2] - 1, 1);                                 // [1, H, 1, d]
            var scores = matmul(qLast, kRep.transpose(2, 3)) * s;                       // [1, H, 1, T']
            if (keyMask is not null) scores = Add(scores, keyMask);
            var p = nn.functional.softmax(scores.to(ScalarType.Float32), -1);
            if (uniformKeys is not null) p = Flatten(p, keyMask is null ? null : scores, uniformKeys);
            return p.reshape(heads, -1).cpu();
        }

        /// <summary>
        /// Attention whose weights on the keys marked in <paramref name="uniformKeys"/> [1, 1, 1, Tk]
        /// are replaced, per query, by their mean over the marked keys that query can see: the mass
        /// on the group is kept, its distribution made uniform. q [1, H, Tq, d], k/v [1, H, Tk, d],
        /// mask additive [.., Tq, Tk] or null. Computed in fp32.
        /// </summary>
        Tensor UniformAttention(Tensor q, Tensor kRep, Tensor vRep, Tensor mask, Tensor uniformKeys)
        {
            using var s = scale.ToScalar();
            var scores = matmul(q, kRep.transpose(2, 3)) * s;                           // [1, H, Tq, Tk]
            if (mask is not null) scores = Add(scores, mask);
            var p = Flatten(nn.functional.softmax(scores.to(ScalarType.Float32), -1), mask is null ? null : scores, uniformKeys);
            return matmul(p.to(q.dtype), vRep);                                         // [1, H, Tq, d]
        }

        /// <summary>p [1, H, Tq, Tk] fp32 → the same with the visible marked keys sharing their total weight evenly.</summary>
        static Tensor Flatten(Tensor p, Tensor maskedScores, Tensor uniformKeys)
        {
            var group = uniformKeys.to(ScalarType.Float32);                              // [1, 1, 1, Tk]
            if (maskedScores is not null) group = group * isfinite(maskedScores).to(ScalarType.Float32); // visible only
            using var one = 1.0.ToScalar();
            var mass = (p * group).sum(-1, keepdim: true);                              // [1, H, Tq, 1]
            var count = group.sum(-1, keepdim: true).clamp_min(one);
            return Add(p - p * group, group * (mass / count));
        }

        Tensor Heads(Tensor y, int n) => y.view(y.shape[0], y.shape[1], n, headDim).transpose(1, 2); // [B, n, T, d]

        Tensor Merge(Tensor o) => o.transpose(1, 2).reshape(o.shape[0], o.shape[2], (long)heads * headDim); // [B, T, H·d]

        Tensor RepeatKv(Tensor kv) => kvHeads == heads ? kv : kv.repeat_interleave(heads / kvHeads, dim: 1);
    }
}
