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

        /// <summary>2, never collected: the exponent of <see cref="Square"/>.</summary>
        static readonly Scalar Two = 2;

        /// <summary>a + b (broadcasting).</summary>
        public static Tensor Add(Tensor a, Tensor b) => a.add(b, One);

        /// <summary>a + b for a Scalar b (keep b alive to the end of the call).</summary>
        public static Tensor Add(Tensor a, Scalar b) => a.add(b, One);
        // (a − b needs nothing here: TorchSharp's Tensor − Tensor passes no Scalar.)

        /// <summary>x² as TorchSharp's <c>square()</c> computes it (<c>pow(2)</c>, whose implicit 2 is a temporary).</summary>
        public static Tensor Square(Tensor x) => x.pow(Two);

        /// <summary>0, 1, …, n − 1 like <c>arange(n)</c>, whose implicit start, stop and step are temporaries.</summary>
        public static Tensor Arange(long n, ScalarType dtype, Device device) => Arange(0, n, 1, dtype, device);

        /// <summary>start, start + step, … below stop, like <c>arange(start, stop, step)</c>, with held Scalars.</summary>
        public static Tensor Arange(long start, long stop, long step, ScalarType dtype, Device device)
        {
            using Scalar first = start, end = stop, by = step;
            return arange(first, end, by, dtype, device);
        }
    }
}
