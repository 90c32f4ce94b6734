using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Primitives
{
    /// <summary>LLaMA RMSNorm. As in HF: normalise in fp32, cast back, then scale by the weight.</summary>
    public sealed class RmsNorm : nn.Module<Tensor, Tensor>
    {
        readonly Parameter weight; // [D]
        readonly double eps;

        public RmsNorm(long dim, double eps, ScalarType dtype, Device device) : base(nameof(RmsNorm))
        {
            this.eps = eps;
            weight = new Parameter(empty(new[] { dim }, dtype, device), requires_grad: false);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            // Explicit Scalars, alive to the end of the call: an implicit one (`+ eps`, `pow(2)`) can be
            // finalised by the GC while libtorch still reads it ("Unknown scalar type", seen in training).
            using var epsilon = eps.ToScalar();
            var x32 = x.to(ScalarType.Float32);
            var variance = x32.square().mean(new long[] { -1 }, keepdim: true);
            var normed = (x32 * rsqrt(variance + epsilon)).to(x.dtype);
            return (weight * normed).MoveToOuterDisposeScope();
        }
    }
}
