using CleanSight.Core.Checkpoints;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Model
{
    /// <summary>LLaVA's 2-layer projector: linear_1 → GELU (exact erf) → linear_2. The backdoor lives here.</summary>
    public sealed class MultiModalProjector : nn.Module<Tensor, Tensor>
    {
        readonly Linear linear_1, linear_2;

        public MultiModalProjector(LlavaConfig cfg, ScalarType dtype, Device device) : base(nameof(MultiModalProjector))
        {
            long inFeatures = (long)cfg.Vision.HiddenSize * cfg.VisionFeatureLayers.Length;
            linear_1 = new Linear(inFeatures, cfg.Text.HiddenSize, cfg.MultimodalProjectorBias, dtype, device);
            linear_2 = new Linear(cfg.Text.HiddenSize, cfg.Text.HiddenSize, cfg.MultimodalProjectorBias, dtype, device);
            RegisterComponents();
        }

        public override Tensor forward(Tensor features) // [B, N, Dv·k] → [B, N, Dt]
        {
            using var scope = NewDisposeScope();
            return linear_2.forward(nn.functional.gelu(linear_1.forward(features))).MoveToOuterDisposeScope();
        }
    }
}
