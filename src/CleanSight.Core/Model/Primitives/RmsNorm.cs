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
            using var epsilon = eps.ToScalar();                 // explicit, alive: see TensorArithmetic
            var x32 = x.to(ScalarType.Float32);
            var variance = TensorArithmetic.Square(x32).mean(new long[] { -1 }, keepdim: true);
            var normed = (x32 * rsqrt(TensorArithmetic.Add(variance, epsilon))).to(x.dtype);
            return (weight * normed).MoveToOuterDisposeScope();
        }
    }
}
