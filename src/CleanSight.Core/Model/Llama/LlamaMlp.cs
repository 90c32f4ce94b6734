using CleanSight.Core.Checkpoints;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Llama
{
    /// <summary>SwiGLU: down(silu(gate x) · up x).</summary>
    public sealed class LlamaMlp : nn.Module<Tensor, Tensor>
    {
        readonly Linear gate_proj, up_proj, down_proj;

        public LlamaMlp(LlamaConfig cfg, ScalarType dtype, Device device) : base(nameof(LlamaMlp))
        {
            gate_proj = new Linear(cfg.HiddenSize, cfg.IntermediateSize, cfg.MlpBias, dtype, device);
            up_proj = new Linear(cfg.HiddenSize, cfg.IntermediateSize, cfg.MlpBias, dtype, device);
            down_proj = new Linear(cfg.IntermediateSize, cfg.HiddenSize, cfg.MlpBias, dtype, device);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            return down_proj.forward(nn.functional.silu(gate_proj.forward(x)) * up_proj.forward(x)).MoveToOuterDisposeScope();
        }
    }
}
