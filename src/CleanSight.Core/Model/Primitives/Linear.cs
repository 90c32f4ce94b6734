using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Primitives
{
    /// <summary>y = x Wᵀ + b. Parameters start uninitialised (torch.empty): the checkpoint fills them.</summary>
    public sealed class Linear : nn.Module<Tensor, Tensor>
    {
        readonly Parameter weight; // [out, in]
        readonly Parameter bias;   // [out] or absent

        public Linear(long inFeatures, long outFeatures, bool hasBias, ScalarType dtype, Device device) : base(nameof(Linear))
        {
            weight = new Parameter(empty(new[] { outFeatures, inFeatures }, dtype, device), requires_grad: false);
            if (hasBias) bias = new Parameter(empty(new[] { outFeatures }, dtype, device), requires_grad: false);
            RegisterComponents();
        }

        public Tensor Weight => weight;

        public override Tensor forward(Tensor x) => nn.functional.linear(x, weight, bias);
    }
}
