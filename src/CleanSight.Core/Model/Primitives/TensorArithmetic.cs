using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Primitives
{
    /// <summary>
    /// Tensor sums that create no temporary <see cref="Scalar"/>. TorchSharp's
    /// <c>a + b</c> is <c>a.add(b, alpha: 1)</c> with a fresh implicit Scalar that nothing keeps alive
    /// during the native call: the GC may finalise (free) it while libtorch reads it, which kills long
    /// runs at random ("Expected false to be true" in <c>Scalar::toFloat</c> inside <c>add_Tensor</c>,
    /// seen in vision pre-training; dotnet/TorchSharp#1434). A static alpha is never collected.
    /// </summary>
    public static class TensorArithmetic
    {
        static readonly Scalar One = 1;

        /// <summary>a + b (broadcasting).</summary>
        public static Tensor Add(Tensor a, Tensor b) => a.add(b, One);
        // (a − b needs nothing here: TorchSharp's Tensor − Tensor passes no Scalar.)
    }
}
