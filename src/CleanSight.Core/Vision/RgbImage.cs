using System;
using System.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats;
using SixLabors.ImageSharp.Formats.Bmp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Formats.Webp;
using SixLabors.ImageSharp.Memory;
using SixLabors.ImageSharp.PixelFormats;

namespace CleanSight.Core.Vision
{
    /// <summary>
    /// An 8-bit RGB image: <see cref="Pixels"/> holds [Height, Width, 3] bytes (HWC, R G B), row-major.
    /// Immutable by convention: the public constructor copies its input, nothing in CleanSight writes
    /// to <see cref="Pixels"/> afterwards, and callers must not either.
    /// </summary>
    public sealed class RgbImage
    {
        /// <summary>Largest image <see cref="Load(string)"/> decodes (width × height), checked from the header first.</summary>
        public const long DefaultMaxPixels = 100_000_000;

        /// <summary>Largest image file <see cref="Load(string)"/> reads into memory.</summary>
        public const long MaxFileBytes = 1L << 30;

        public int Width { get; }
        public int Height { get; }

        /// <summary>[Height, Width, 3] bytes, HWC RGB. Do not modify.</summary>
        public byte[] Pixels { get; }

        /// <summary>An image holding a copy of <paramref name="pixels"/> ([height, width, 3] HWC RGB bytes).</summary>
        public RgbImage(int width, int height, byte[] pixels) : this(width, height, pixels, copy: true) { }

        RgbImage(int width, int height, byte[] pixels, bool copy)
        {
            if (pixels == null) throw new ArgumentNullException(nameof(pixels));
            if (width <= 0 || height <= 0)
                throw new ArgumentOutOfRangeException(nameof(width), $"image size {width}x{height} must be positive");
            if (pixels.LongLength != 3L * width * height)
                throw new ArgumentException($"{width}x{height} RGB needs {3L * width * height} bytes, got {pixels.LongLength}", nameof(pixels));
            Width = width;
            Height = height;
            Pixels = copy ? (byte[])pixels.Clone() : pixels;
        }

        /// <summary>Wraps <paramref name="pixels"/> without copying, for code in this assembly that just built the array.</summary>
        internal static RgbImage Wrap(int width, int height, byte[] pixels) => new(width, height, pixels, copy: false);

        /// <summary>Channel <paramref name="c"/> (0 R, 1 G, 2 B) of the pixel in row <paramref name="y"/>, column <paramref name="x"/>.</summary>
        public byte this[int y, int x, int c] => Pixels[(y * Width + x) * 3 + c];

        // ---------------------------------------------------------------- loading

        /// <summary>
        /// Decodes a PNG, JPEG, GIF, BMP or WebP file into RGB the way PIL's
        /// <c>Image.open(path).convert("RGB")</c> does: grey is replicated to R=G=B, alpha is dropped (not
        /// composited), palettes are looked up, only the first frame of an animation is kept, EXIF
        /// orientation is ignored. 16-bit PNG samples follow PIL too: colour and grey+alpha keep the high
        /// byte; 16-bit grey without alpha (PIL mode "I") is clipped to 255, as PIL's I → RGB does.
        /// Any problem — missing, empty, truncated, undecodable, unsupported format, more than
        /// <paramref name="maxPixels"/> pixels — is an <see cref="InputError"/> naming <paramref name="path"/>.
        /// </summary>
        public static RgbImage Load(string path) => Load(path, DefaultMaxPixels);

        /// <inheritdoc cref="Load(string)"/>
        public static RgbImage Load(string path, long maxPixels)
        {
            byte[] bytes = ReadFile(path);
            try
            {
                // Header only: the size check must happen before any pixel memory is allocated.
                var info = Image.Identify(bytes, out IImageFormat format);
                if (info == null || format == null)
                    throw new InputError(path, "not a recognised image format (PNG, JPEG, GIF, BMP or WebP expected)");
                if (info.Width <= 0 || info.Height <= 0)
                    throw new InputError(path, $"image has zero size ({info.Width}x{info.Height})");
                if ((long)info.Width * info.Height > maxPixels)
                    throw new InputError(path,
                        $"image is {info.Width}x{info.Height} = {(long)info.Width * info.Height} pixels, more than the {maxPixels} allowed");

                // ImageSharp fills missing data with zeros instead of failing, so check completeness first.
                string truncated = format switch
                {
                    PngFormat => Completeness.Png(bytes),
                    JpegFormat => Completeness.Jpeg(bytes),
                    GifFormat => Completeness.Gif(bytes),
                    BmpFormat => Completeness.Bmp(bytes),
                    WebpFormat => Completeness.Webp(bytes),
                    _ => throw new InputError(path, $"{format.Name} images are not supported (use PNG, JPEG, GIF, BMP or WebP)"),
                };
                if (truncated != null) throw new InputError(path, $"damaged {format.Name} file: {truncated}");

                var png = format is PngFormat ? info.Metadata.GetPngMetadata() : null;
                if (png?.BitDepth == PngBitDepth.Bit16)
                {
                    using var wide = Image.Load<Rgba64>(bytes);
                    return FromRgba64(wide, clipToByte: png.ColorType == PngColorType.Grayscale);
                }
                using var img = Image.Load<Rgba32>(bytes);
                return FromImage(img);
            }
            catch (InputError) { throw; }
            catch (Exception e) when (e is ImageFormatException or NotSupportedException or InvalidMemoryOperationException
                                        or InvalidDataException or EndOfStreamException or IndexOutOfRangeException
                                        or ArgumentException or InvalidOperationException or OverflowException)
            {
                // ImageFormatException covers UnknownImageFormatException and InvalidImageContentException.
                throw new InputError(path, $"cannot decode image: {e.Message.Trim()}", e);
            }
        }

        static byte[] ReadFile(string path)
        {
            if (string.IsNullOrEmpty(path)) throw new InputError(path ?? "", "no image path given");
            try
            {
                var fi = new FileInfo(path);
                if (!fi.Exists) throw new InputError(path, "image file not found");
                if (fi.Length == 0) throw new InputError(path, "image file is empty");
                if (fi.Length > MaxFileBytes)
                    throw new InputError(path, $"image file is {fi.Length} bytes, more than the {MaxFileBytes} allowed");
                return File.ReadAllBytes(path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
            {
                throw new InputError(path, $"cannot read image file: {e.Message}", e);
            }
        }

        /// <summary>RGB of an ImageSharp image (first frame); alpha is dropped, not composited, as in PIL's convert("RGB").</summary>
        public static RgbImage FromImage(Image image)
        {
            if (image == null) throw new ArgumentNullException(nameof(image));
            if (image is Image<Rgba32> rgba) return FromRgba32(rgba);
            using var converted = image.CloneAs<Rgba32>();
            return FromRgba32(converted);
        }

        static RgbImage FromRgba32(Image<Rgba32> img)
        {
            int w = img.Width, h = img.Height;
            var px = new byte[3 * w * h];
            img.ProcessPixelRows(rows =>
            {
                for (int y = 0; y < h; y++)
                {
                    var row = rows.GetRowSpan(y);
                    for (int x = 0, o = y * w * 3; x < w; x++, o += 3)
                    {
                        px[o] = row[x].R;
                        px[o + 1] = row[x].G;
                        px[o + 2] = row[x].B;
                    }
                }
            });
            return Wrap(w, h, px);
        }

        /// <summary>16-bit samples → 8 bits as PIL does: the high byte, or (plain 16-bit grey) min(v, 255).</summary>
        static RgbImage FromRgba64(Image<Rgba64> img, bool clipToByte)
        {
            int w = img.Width, h = img.Height;
            var px = new byte[3 * w * h];
            byte To8(ushort v) => clipToByte ? (byte)Math.Min((int)v, 255) : (byte)(v >> 8);
            img.ProcessPixelRows(rows =>
            {
                for (int y = 0; y < h; y++)
                {
                    var row = rows.GetRowSpan(y);
                    for (int x = 0, o = y * w * 3; x < w; x++, o += 3)
                    {
                        px[o] = To8(row[x].R);
                        px[o + 1] = To8(row[x].G);
                        px[o + 2] = To8(row[x].B);
                    }
                }
            });
            return Wrap(w, h, px);
        }

        // ---------------------------------------------------------------- export

        /// <summary>A new ImageSharp image with these pixels (the caller disposes it).</summary>
        public Image<Rgb24> ToImage() => Image.LoadPixelData<Rgb24>(Pixels, Width, Height);

        /// <summary>Writes the image as an 8-bit RGB PNG; I/O failures are an <see cref="InputError"/> naming the path.</summary>
        public void Save(string path)
        {
            try
            {
                using var img = ToImage();
                img.SaveAsPng(path, new PngEncoder { ColorType = PngColorType.Rgb, BitDepth = PngBitDepth.Bit8 });
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
            {
                throw new InputError(path, $"cannot write PNG: {e.Message}", e);
            }
        }

        // ---------------------------------------------------------------- completeness checks

        /// <summary>
        /// Walks each format's container structure to its end marker. ImageSharp decodes a cut-off file
        /// without complaint (missing pixels become zeros); PIL refuses it ("image file is truncated"),
        /// and so do we. Each check returns null when the file is complete, else the problem in words.
        /// </summary>
        static class Completeness
        {
            const string Cut = "the file ends too early (truncated)";

            static int BE16(byte[] b, long p) => (b[p] << 8) | b[p + 1];
            static long BE32(byte[] b, long p) => ((long)b[p] << 24) | ((long)b[p + 1] << 16) | ((long)b[p + 2] << 8) | b[p + 3];
            static int LE16(byte[] b, long p) => b[p] | (b[p + 1] << 8);
            static long LE32(byte[] b, long p) => b[p] | ((long)b[p + 1] << 8) | ((long)b[p + 2] << 16) | ((long)b[p + 3] << 24);

            /// <summary>PNG: 8-byte signature, then chunks [length:4][type:4][data][crc:4] up to IEND.</summary>
            public static string Png(byte[] b)
            {
                long pos = 8;
                while (pos + 8 <= b.Length)
                {
                    long end = pos + 12 + BE32(b, pos);
                    if (end > b.Length) return Cut;
                    if (b[pos + 4] == 'I' && b[pos + 5] == 'E' && b[pos + 6] == 'N' && b[pos + 7] == 'D') return null;
                    pos = end;
                }
                return Cut + ": no IEND chunk";
            }

            /// <summary>JPEG: SOI, marker segments [FF xx][length:2][...], entropy-coded data after each SOS, EOI.</summary>
            public static string Jpeg(byte[] b)
            {
                long pos = 2; // after SOI (FF D8), which Identify already matched
                while (true)
                {
                    while (pos < b.Length && b[pos] != 0xFF) pos++;    // tolerate junk between segments, as libjpeg does
                    while (pos < b.Length && b[pos] == 0xFF) pos++;    // fill bytes
                    if (pos >= b.Length) return Cut + ": no end-of-image marker";
                    int marker = b[pos++];
                    if (marker == 0xD9) return null;                                   // EOI
                    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue; // TEM / RSTn: no length
                    if (pos + 2 > b.Length) return Cut;
                    pos += BE16(b, pos);
                    if (pos > b.Length) return Cut;
                    if (marker != 0xDA) continue;
                    // After SOS: scan data; 0xFF is stuffed as FF 00, RSTn may appear; any other FF xx ends it.
                    while (pos + 1 < b.Length && !(b[pos] == 0xFF && b[pos + 1] != 0x00 && b[pos + 1] != 0xFF
                                                   && (b[pos + 1] < 0xD0 || b[pos + 1] > 0xD7)))
                        pos++;
                }
            }

            /// <summary>GIF: header, colour table, blocks up to the end of the first frame's image data.</summary>
            public static string Gif(byte[] b)
            {
                if (b.Length < 13) return Cut;
                long pos = 13 + ColourTableBytes(b[10]);
                while (pos < b.Length)
                {
                    switch (b[pos])
                    {
                        case 0x21: // extension: introducer, label, data sub-blocks
                            pos = SkipSubBlocks(b, pos + 2);
                            break;
                        case 0x2C: // image descriptor (10 bytes), local colour table, LZW code size, data sub-blocks
                            if (pos + 10 > b.Length) return Cut;
                            pos = SkipSubBlocks(b, pos + 10 + ColourTableBytes(b[pos + 9]) + 1);
                            return pos <= b.Length ? null : Cut; // the first frame is all PIL's convert("RGB") uses
                        case 0x3B:
                            return "the file holds no image";
                        default:
                            return $"unexpected block 0x{b[pos]:X2} at byte {pos}";
                    }
                }
                return Cut;

                static long ColourTableBytes(byte flags) => (flags & 0x80) != 0 ? 3L << ((flags & 7) + 1) : 0;
                static long SkipSubBlocks(byte[] b, long p)
                {
                    while (p < b.Length && b[p] != 0) p += 1 + b[p];
                    return p + 1; // past the zero-length terminator; beyond b.Length when it is missing
                }
            }

            /// <summary>BMP: pixel array at bfOffBits, rows padded to 4 bytes; RLE data must reach its end-of-bitmap code.</summary>
            public static string Bmp(byte[] b)
            {
                if (b.Length < 26) return Cut;
                long offBits = LE32(b, 10), dibSize = LE32(b, 14);
                long width, height;
                int bpp, compression;
                if (dibSize == 12) // OS/2 BITMAPCOREHEADER
                {
                    width = LE16(b, 18); height = LE16(b, 20); bpp = LE16(b, 24); compression = 0;
                }
                else
                {
                    if (b.Length < 34) return Cut;
                    width = (int)LE32(b, 18); height = Math.Abs((long)(int)LE32(b, 22)); bpp = LE16(b, 28); compression = (int)LE32(b, 30);
                }
                if (compression is 1 or 2) return Rle(b, offBits, fourBit: compression == 2);
                if (compression is not (0 or 3 or 6)) return null; // JPEG/PNG-in-BMP: left to the decoder
                long rowBytes = (bpp * width + 31) / 32 * 4;
                return offBits + rowBytes * height <= b.Length ? null : Cut;
            }

            static string Rle(byte[] b, long pos, bool fourBit)
            {
                while (pos + 1 < b.Length)
                {
                    int count = b[pos], code = b[pos + 1];
                    pos += 2;
                    if (count > 0) continue;      // encoded run
                    if (code == 1) return null;   // end of bitmap
                    if (code == 0) continue;      // end of line
                    if (code == 2) { pos += 2; continue; } // delta
                    long bytes = fourBit ? (code + 1) / 2 : code; // absolute run, padded to 2 bytes
                    pos += (bytes + 1) & ~1L;
                }
                return Cut + ": no RLE end-of-bitmap code";
            }

            /// <summary>WebP: a RIFF container whose header states the total size.</summary>
            public static string Webp(byte[] b) =>
                b.Length >= 12 && 8 + LE32(b, 4) <= b.Length ? null : Cut;
        }
    }
}
