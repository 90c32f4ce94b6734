using CleanSight.Core.Checkpoints;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Clip
{
    /// <summary>Bidirectional multi-head self-attention with biases, scale head_dim^-0.5.</summary>
    public sealed class ClipAttention : nn.Module<Tensor, Tensor>
    {
        readonly Linear k_proj, v_proj, q_proj, out_proj;
        readonly int heads, headDim;

        public ClipAttention(ClipVisionConfig cfg, ScalarType dtype, Device device) : base(nameof(ClipAttention))
        {
            heads = cfg.NumAttentionHeads;
            headDim = cfg.HeadDim;
            k_proj = new Linear(cfg.HiddenSize, cfg.HiddenSize, true, dtype, device);
            v_proj = new Linear(cfg.HiddenSize, cfg.HiddenSize, true, dtype, device);
            q_proj = new Linear(cfg.HiddenSize, cfg.HiddenSize, true, dtype, device);
            out_proj = new Linear(cfg.HiddenSize, cfg.HiddenSize, true, dtype, device);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) // [B, T, D]
        {
            using var scope = NewDisposeScope();
            long b = x.shape[0], t = x.shape[1];
            Tensor Split(Tensor y) => y.view(b, t, heads, headDim).transpose(1, 2); // [B, H, T, d]
            var q = Split(q_proj.forward(x));
            var k = Split(k_proj.forward(x));
            var v = Split(v_proj.forward(x));
            var o = nn.functional.scaled_dot_product_attention(q, k, v);       // [B, H, T, d]
            o = o.transpose(1, 2).reshape(b, t, heads * headDim);             // [B, T, D]
            return out_proj.forward(o).MoveToOuterDisposeScope();
        }
    }
}
