using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Primitives
{
    /// <summary>LayerNorm over the last dimension with weight and bias (CLIP).</summary>
    public sealed class LayerNorm : nn.Module<Tensor, Tensor>
    {
        readonly Parameter weight; // [D]
        readonly Parameter bias;   // [D]
        readonly long dim;
        readonly double eps;

        public LayerNorm(long dim, double eps, ScalarType dtype, Device device) : base(nameof(LayerNorm))
        {
            this.dim = dim;
            this.eps = eps;
            weight = new Parameter(empty(new[] { dim }, dtype, device), requires_grad: false);
            bias = new Parameter(empty(new[] { dim }, dtype, device), requires_grad: false);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => nn.functional.layer_norm(x, new[] { dim }, weight, bias, eps);
    }
}
