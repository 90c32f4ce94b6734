using CleanSight.Core.Checkpoints;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using static TorchSharp.torch;
using static CleanSight.Core.Model.Primitives.TensorArithmetic;

namespace CleanSight.Core.Model.Clip
{
    /// <summary>Pre-norm transformer block: x + attn(ln1 x), then + mlp(ln2 x).</summary>
    public sealed class ClipEncoderLayer : nn.Module<Tensor, Tensor>
    {
        readonly ClipAttention self_attn;
        readonly LayerNorm layer_norm1;
        readonly ClipMlp mlp;
        readonly LayerNorm layer_norm2;

        public ClipEncoderLayer(ClipVisionConfig cfg, ScalarType dtype, Device device) : base(nameof(ClipEncoderLayer))
        {
            self_attn = new ClipAttention(cfg, dtype, device);
            layer_norm1 = new LayerNorm(cfg.HiddenSize, cfg.LayerNormEps, dtype, device);
            mlp = new ClipMlp(cfg, dtype, device);
            layer_norm2 = new LayerNorm(cfg.HiddenSize, cfg.LayerNormEps, dtype, device);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            x = Add(x, self_attn.forward(layer_norm1.forward(x)));
            x = Add(x, mlp.forward(layer_norm2.forward(x)));
            return x.MoveToOuterDisposeScope();
        }
    }
}
