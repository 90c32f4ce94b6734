using System;

namespace CleanSight.Core.Vision
{
    /// <summary>The PIL resampling filters this port implements (values are PIL's <c>Image.Resampling</c> codes).</summary>
    public enum PilFilter
    {
        Bilinear = 2,
        Bicubic = 3,
    }

    /// <summary>
    /// A bit-exact port of Pillow's <c>Image.resize((w, h), resample)</c> for 8-bit RGB images with
    /// <c>box=None, reducing_gap=None</c> (what HF's CLIPImageProcessor calls), following Pillow's
    /// <c>src/libImaging/Resample.c</c>:
    /// <list type="bullet">
    /// <item>separable convolution, horizontal pass first, then vertical; a pass runs only when the size
    ///   changes in its dimension (same size in both → a plain copy);</item>
    /// <item>per output pixel: centre = (i + 0.5) · scale with scale = in/out; support = filter support ·
    ///   max(scale, 1) (the filter widens when downscaling: antialiasing); taps [round(centre − support),
    ///   round(centre + support)) clipped to the image; weights filter((j − centre + 0.5) / max(scale, 1))
    ///   normalised to sum 1;</item>
    /// <item>weights become fixed-point integers with PRECISION_BITS = 32 − 8 − 2 = 22 fractional bits;
    ///   each pass accumulates in int32 starting from ½ (rounding) and clips to 0..255 — so the
    ///   intermediate image is uint8, exactly as in Pillow.</item>
    /// </list>
    /// </summary>
    public static class PilResize
    {
        const int PrecisionBits = 32 - 8 - 2;

        /// <summary>Resizes to <paramref name="width"/> × <paramref name="height"/> like PIL.</summary>
        public static RgbImage Resize(RgbImage image, int width, int height, PilFilter filter = PilFilter.Bicubic)
        {
            if (image == null) throw new ArgumentNullException(nameof(image));
            if (width <= 0 || height <= 0)
                throw new ArgumentOutOfRangeException(nameof(width), $"target size {width}x{height} must be positive");

            bool needHorizontal = width != image.Width;
            bool needVertical = height != image.Height;
            if (!needHorizontal && !needVertical) return image; // immutable, so the "copy" can be the same object

            var (kernel, support) = FilterOf(filter);
            byte[] pixels = image.Pixels;
            int inW = image.Width, inH = image.Height;

            // Horizontal pass: [inH, inW, 3] → [inH, width, 3].
            if (needHorizontal)
            {
                var coeffs = Coefficients.Compute(inW, width, kernel, support);
                pixels = ResampleHorizontal(pixels, inW, inH, width, coeffs);
                inW = width;
            }
            // Vertical pass: [inH, width, 3] → [height, width, 3].
            if (needVertical)
            {
                var coeffs = Coefficients.Compute(inH, height, kernel, support);
                pixels = ResampleVertical(pixels, inW, height, coeffs);
            }
            return RgbImage.Wrap(width, height, pixels);
        }

        static (Func<double, double> Kernel, double Support) FilterOf(PilFilter filter) => filter switch
        {
            PilFilter.Bicubic => (Bicubic, 2.0),
            PilFilter.Bilinear => (Bilinear, 1.0),
            _ => throw new ArgumentOutOfRangeException(nameof(filter), $"unsupported PIL filter {filter}"),
        };

        /// <summary>Keys' cubic convolution with a = −0.5, written in Pillow's operation order (bit-exact doubles).</summary>
        static double Bicubic(double x)
        {
            const double a = -0.5;
            if (x < 0.0) x = -x;
            if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
            if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
            return 0.0;
        }

        static double Bilinear(double x)
        {
            if (x < 0.0) x = -x;
            if (x < 1.0) return 1.0 - x;
            return 0.0;
        }

        /// <summary>
        /// Pillow's <c>precompute_coeffs</c> + <c>normalize_coeffs_8bpc</c> for one axis: for each output
        /// index, the first input tap (<see cref="Start"/>), the tap count (<see cref="Count"/>) and
        /// <see cref="KSize"/> fixed-point weights (<see cref="Weights"/>, row-major [outSize, KSize]).
        /// </summary>
        sealed class Coefficients
        {
            public int KSize;
            public int[] Start, Count, Weights;

            public static Coefficients Compute(int inSize, int outSize, Func<double, double> kernel, double filterSupport)
            {
                double scale = (double)inSize / outSize;       // box = (0, inSize): in1 − in0 = inSize
                double filterScale = Math.Max(scale, 1.0);     // widen the kernel only when downscaling
                double support = filterSupport * filterScale;
                int ksize = (int)Math.Ceiling(support) * 2 + 1;

                var c = new Coefficients
                {
                    KSize = ksize,
                    Start = new int[outSize],
                    Count = new int[outSize],
                    Weights = new int[outSize * ksize],
                };
                var w = new double[ksize];
                for (int xx = 0; xx < outSize; xx++)
                {
                    double center = (xx + 0.5) * scale;
                    double ss = 1.0 / filterScale;
                    // (int) truncates toward zero, as C does; "+ 0.5" is Pillow's rounding.
                    int xmin = Math.Max((int)(center - support + 0.5), 0);
                    int xmax = Math.Min((int)(center + support + 0.5), inSize) - xmin;

                    double ww = 0.0;
                    for (int x = 0; x < xmax; x++)
                    {
                        w[x] = kernel((x + xmin - center + 0.5) * ss);
                        ww += w[x];
                    }
                    for (int x = 0; x < xmax; x++)
                    {
                        double k = ww != 0.0 ? w[x] / ww : w[x];
                        // normalize_coeffs_8bpc: round half away from zero to 22 fractional bits.
                        c.Weights[xx * ksize + x] = k < 0
                            ? (int)(-0.5 + k * (1 << PrecisionBits))
                            : (int)(0.5 + k * (1 << PrecisionBits));
                    }
                    c.Start[xx] = xmin;
                    c.Count[xx] = xmax;
                }
                return c;
            }
        }

        /// <summary>Fixed-point accumulator → uint8: drop the fraction bits and clip (Pillow's clip8 table).</summary>
        static byte Clip8(int acc)
        {
            int v = acc >> PrecisionBits; // arithmetic shift, like C on every platform Pillow ships for
            return v < 0 ? (byte)0 : v > 255 ? (byte)255 : (byte)v;
        }

        static byte[] ResampleHorizontal(byte[] src, int inW, int rows, int outW, Coefficients c)
        {
            var dst = new byte[rows * outW * 3];
            const int half = 1 << (PrecisionBits - 1);
            for (int y = 0; y < rows; y++)
            {
                int rowIn = y * inW * 3, rowOut = y * outW * 3;
                for (int xx = 0; xx < outW; xx++)
                {
                    int start = c.Start[xx], count = c.Count[xx], kOff = xx * c.KSize;
                    int s0 = half, s1 = half, s2 = half;
                    for (int x = 0; x < count; x++)
                    {
                        int k = c.Weights[kOff + x];
                        int p = rowIn + (start + x) * 3;
                        s0 += src[p] * k;
                        s1 += src[p + 1] * k;
                        s2 += src[p + 2] * k;
                    }
                    int o = rowOut + xx * 3;
                    dst[o] = Clip8(s0);
                    dst[o + 1] = Clip8(s1);
                    dst[o + 2] = Clip8(s2);
                }
            }
            return dst;
        }

        static byte[] ResampleVertical(byte[] src, int width, int outH, Coefficients c)
        {
            var dst = new byte[outH * width * 3];
            const int half = 1 << (PrecisionBits - 1);
            int stride = width * 3;
            for (int yy = 0; yy < outH; yy++)
            {
                int start = c.Start[yy], count = c.Count[yy], kOff = yy * c.KSize;
                for (int i = 0; i < stride; i++) // every (x, channel) of the output row
                {
                    int s = half;
                    for (int y = 0; y < count; y++)
                        s += src[(start + y) * stride + i] * c.Weights[kOff + y];
                    dst[yy * stride + i] = Clip8(s);
                }
            }
            return dst;
        }
    }
}
