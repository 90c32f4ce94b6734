using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Primitives
{
    /// <summary>Token embedding table: ids [B, T] → [B, T, D].</summary>
    public sealed class Embedding : nn.Module<Tensor, Tensor>
    {
        readonly Parameter weight; // [V, D]

        public Embedding(long vocab, long dim, ScalarType dtype, Device device) : base(nameof(Embedding))
        {
            weight = new Parameter(empty(new[] { vocab, dim }, dtype, device), requires_grad: false);
            RegisterComponents();
        }

        public Tensor Weight => weight;

        public override Tensor forward(Tensor ids)
        {
            var shape = ids.shape;                                // [B, T]
            var rows = weight.index_select(0, ids.reshape(-1));   // [B·T, D]
            return rows.reshape(shape[0], shape[1], weight.shape[1]);
        }
    }
}
