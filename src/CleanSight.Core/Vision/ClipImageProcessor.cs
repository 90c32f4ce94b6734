using System;

namespace CleanSight.Core.Vision
{
    /// <summary>
    /// HF <c>CLIPImageProcessor.preprocess</c> for one RGB image, with the same arithmetic:
    /// resize (PIL, on uint8) → centre crop (uint8, zero padding) → rescale (uint8 × factor in float64,
    /// then cast to float32) → normalise ((x − mean) / std in float32) → CHW.
    /// </summary>
    public static class ClipImageProcessor
    {
        /// <summary>
        /// The model input for <paramref name="image"/>: float32 [3, H, W] flattened (CHW), where
        /// H × W is the crop size (or the resized size when <c>do_center_crop</c> is off; see
        /// <see cref="ResizeAndCrop"/> for the dimensions).
        /// </summary>
        public static float[] Preprocess(RgbImage image, ClipPreprocessorConfig cfg) =>
            RescaleAndNormalize(ResizeAndCrop(image, cfg), cfg);

        /// <summary>The uint8 image after resize and centre crop, before any float conversion.</summary>
        public static RgbImage ResizeAndCrop(RgbImage image, ClipPreprocessorConfig cfg)
        {
            if (image == null) throw new ArgumentNullException(nameof(image));
            if (cfg == null) throw new ArgumentNullException(nameof(cfg));
            if (cfg.DoResize)
            {
                var (h, w) = ResizeOutputSize(image.Height, image.Width, cfg);
                image = PilResize.Resize(image, w, h, cfg.Resample);
            }
            if (cfg.DoCenterCrop)
                image = CenterCrop(image, cfg.CropHeight, cfg.CropWidth);
            return image;
        }

        /// <summary>
        /// The (height, width) the resize step produces. Shortest edge (HF
        /// <c>get_resize_output_image_size(default_to_square=False)</c>): short → s, long → int(s · long / short)
        /// (so an image whose short edge already is s keeps its size); otherwise the exact configured size.
        /// </summary>
        public static (int Height, int Width) ResizeOutputSize(int height, int width, ClipPreprocessorConfig cfg)
        {
            if (cfg.ShortestEdge is not int s) return (cfg.ResizeHeight.Value, cfg.ResizeWidth.Value);
            int shortSide = Math.Min(height, width), longSide = Math.Max(height, width);
            // Python: int(s * long / short) — exact integer product, one correctly rounded division, truncation.
            int newLong = (int)((double)((long)s * longSide) / shortSide);
            return width <= height ? (newLong, s) : (s, newLong);
        }

        /// <summary>
        /// HF <c>center_crop</c>: output pixel (y, x) is input (y + top, x + left) with
        /// top = ⌊(H − cropH) / 2⌋, left = ⌊(W − cropW) / 2⌋ (floor division, negative when the input is
        /// smaller); positions outside the input are 0, which is HF's zero padding.
        /// </summary>
        public static RgbImage CenterCrop(RgbImage image, int cropH, int cropW)
        {
            if (cropH <= 0 || cropW <= 0) throw new ArgumentOutOfRangeException(nameof(cropH), $"crop {cropH}x{cropW} must be positive");
            if (cropH == image.Height && cropW == image.Width) return image;
            int top = FloorHalf(image.Height - cropH), left = FloorHalf(image.Width - cropW);
            var dst = new byte[3 * cropH * cropW]; // zero = HF's padding value
            // Columns of the crop that fall inside the input: x in [x0, x1).
            int x0 = Math.Max(0, -left), x1 = Math.Min(cropW, image.Width - left);
            for (int y = 0; y < cropH; y++)
            {
                int sy = y + top;
                if (sy < 0 || sy >= image.Height || x1 <= x0) continue;
                Array.Copy(image.Pixels, (sy * image.Width + x0 + left) * 3, dst, (y * cropW + x0) * 3, (x1 - x0) * 3);
            }
            return RgbImage.Wrap(cropW, cropH, dst);
        }

        static int FloorHalf(int v) => v >> 1; // arithmetic shift = floor(v / 2), like Python's v // 2

        /// <summary>
        /// uint8 HWC → float32 CHW: rescale as HF <c>rescale</c> does (float64 product, then float32), then
        /// normalise as HF <c>normalize</c> does (float32 mean/std, float32 arithmetic).
        /// </summary>
        public static float[] RescaleAndNormalize(RgbImage image, ClipPreprocessorConfig cfg)
        {
            int plane = image.Width * image.Height;
            var mean = new float[3];
            var std = new float[3];
            for (int c = 0; c < 3; c++)
            {
                mean[c] = (float)cfg.ImageMean[c];
                std[c] = (float)cfg.ImageStd[c];
            }
            // The 256 possible results per channel, computed once with exactly HF's operations.
            var table = new float[3, 256];
            for (int c = 0; c < 3; c++)
                for (int v = 0; v < 256; v++)
                {
                    float x = cfg.DoRescale ? (float)(v * cfg.RescaleFactor) : v;
                    table[c, v] = cfg.DoNormalize ? (x - mean[c]) / std[c] : x;
                }

            var px = image.Pixels;
            var output = new float[3 * plane];
            for (int i = 0; i < plane; i++)
                for (int c = 0; c < 3; c++)
                    output[c * plane + i] = table[c, px[i * 3 + c]];
            return output;
        }
    }
}
