using CleanSight.Core.Checkpoints;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Clip
{
    /// <summary>fc1 → quick_gelu x·σ(1.702x) → fc2.</summary>
    public sealed class ClipMlp : nn.Module<Tensor, Tensor>
    {
        readonly Linear fc1, fc2;

        public ClipMlp(ClipVisionConfig cfg, ScalarType dtype, Device device) : base(nameof(ClipMlp))
        {
            fc1 = new Linear(cfg.HiddenSize, cfg.IntermediateSize, true, dtype, device);
            fc2 = new Linear(cfg.IntermediateSize, cfg.HiddenSize, true, dtype, device);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            using var k = 1.702.ToScalar();                // explicit: see TensorArithmetic
            var h = fc1.forward(x);
            h = h * sigmoid(h * k);
            return fc2.forward(h).MoveToOuterDisposeScope();
        }
    }
}
