using CleanSight.Core.Checkpoints;
using CleanSight.Core.Inference;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using static TorchSharp.torch;
using static CleanSight.Core.Model.Primitives.TensorArithmetic;

namespace CleanSight.Core.Model.Llama
{
    /// <summary>Pre-norm decoder block: h + attn(norm h), then + mlp(norm h).</summary>
    public sealed class LlamaDecoderLayer : nn.Module
    {
        readonly LlamaAttention self_attn;
        readonly LlamaMlp mlp;
        readonly RmsNorm input_layernorm;
        readonly RmsNorm post_attention_layernorm;

        public LlamaDecoderLayer(LlamaConfig cfg, ScalarType dtype, Device device) : base(nameof(LlamaDecoderLayer))
        {
            self_attn = new LlamaAttention(cfg, dtype, device);
            mlp = new LlamaMlp(cfg, dtype, device);
            input_layernorm = new RmsNorm(cfg.HiddenSize, cfg.RmsNormEps, dtype, device);
            post_attention_layernorm = new RmsNorm(cfg.HiddenSize, cfg.RmsNormEps, dtype, device);
            RegisterComponents();
        }

        /// <summary>One layer of the prefill; updates <paramref name="state"/> in place.</summary>
        public void Prefill(SequenceState state, int layer, IAttentionPolicy policy, KvCache cache, RotaryEmbedding rope)
        {
            using var scope = NewDisposeScope();
            var attn = self_attn.Prefill(input_layernorm.forward(state.Hidden), state, layer, policy, cache, rope);
            var h = Add(state.Hidden, attn);                // rows as after any exclusion at this layer
            state.Hidden = Add(h, mlp.forward(post_attention_layernorm.forward(h)));
        }

        public Tensor Decode(Tensor h, Tensor position, int layer, KvCache cache, RotaryEmbedding rope)
        {
            using var scope = NewDisposeScope();
            h = Add(h, self_attn.Decode(input_layernorm.forward(h), position, layer, cache, rope));
            return Add(h, mlp.forward(post_attention_layernorm.forward(h))).MoveToOuterDisposeScope();
        }

        public Tensor Forward(Tensor h, Tensor cos, Tensor sin)
        {
            h = Add(h, self_attn.Forward(input_layernorm.forward(h), cos, sin));
            return Add(h, mlp.forward(post_attention_layernorm.forward(h)));
        }
    }
}
