using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Primitives
{
    /// <summary>
    /// Tensor sums that create no temporary <see cref="Scalar"/>. TorchSharp's <c>a + b</c> (tensor or
    /// Scalar b) is <c>a.add(b, alpha: 1)</c> with a fresh implicit Scalar that nothing keeps alive
    /// during the native call: the GC may finalise (free) it while libtorch reads it, which kills long
    /// runs at random ("Expected false to be true" in <c>Scalar::toFloat</c> inside <c>add_Tensor</c>,
    /// seen in vision pre-training; dotnet/TorchSharp#1434). A static alpha is never collected. Any other
    /// constant passed to libtorch must be an explicit Scalar alive to the end of the call (<c>using var</c>).
    /// </summary>
    public static class TensorArithmetic
    {
        /// <summary>1, never collected: the alpha of every sum here, and of in-place ones elsewhere (<c>add_(x, One)</c>).</summary>
        public static readonly Scalar One = 1;

        /// <summary>a + b (broadcasting).</summary>
        public static Tensor Add(Tensor a, Tensor b) => a.add(b, One);

        /// <summary>a + b for a Scalar b (keep b alive to the end of the call).</summary>
        public static Tensor Add(Tensor a, Scalar b) => a.add(b, One);
        // (a − b needs nothing here: TorchSharp's Tensor − Tensor passes no Scalar.)
    }
}
