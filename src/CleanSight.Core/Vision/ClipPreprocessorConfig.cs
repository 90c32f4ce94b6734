using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace CleanSight.Core.Vision
{
    /// <summary>
    /// A llava-hf <c>preprocessor_config.json</c> (HF CLIPImageProcessor). Absent or null fields take
    /// CLIPImageProcessor's defaults. Resizing is either to a shortest edge (<see cref="ShortestEdge"/>,
    /// the long edge keeps the aspect ratio) or to an exact <see cref="ResizeHeight"/> × <see cref="ResizeWidth"/>.
    /// </summary>
    public sealed record ClipPreprocessorConfig(
        bool DoResize = true,
        int? ShortestEdge = 224,
        int? ResizeHeight = null,
        int? ResizeWidth = null,
        PilFilter Resample = PilFilter.Bicubic,
        bool DoCenterCrop = true,
        int CropHeight = 224,
        int CropWidth = 224,
        bool DoRescale = true,
        double RescaleFactor = 1.0 / 255,
        bool DoNormalize = true,
        IReadOnlyList<double> ImageMean = null,
        IReadOnlyList<double> ImageStd = null,
        bool DoConvertRgb = true)
    {
        /// <summary>OpenAI CLIP's per-channel (R, G, B) mean and std, HF's defaults.</summary>
        public static readonly IReadOnlyList<double> ClipMean = new[] { 0.48145466, 0.4578275, 0.40821073 };
        public static readonly IReadOnlyList<double> ClipStd = new[] { 0.26862954, 0.26130258, 0.27577711 };

        public IReadOnlyList<double> ImageMean { get; init; } = ImageMean ?? ClipMean;
        public IReadOnlyList<double> ImageStd { get; init; } = ImageStd ?? ClipStd;

        /// <summary>Reads and validates a preprocessor_config.json; any problem is an <see cref="InputError"/> naming the file.</summary>
        public static ClipPreprocessorConfig Load(string path)
        {
            if (!File.Exists(path)) throw new InputError(path, "preprocessor_config.json not found");
            string json;
            try { json = File.ReadAllText(path); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            { throw new InputError(path, $"cannot read file: {e.Message}", e); }
            return Parse(json, path);
        }

        /// <summary>Parses preprocessor_config.json text; <paramref name="source"/> names it in errors.</summary>
        public static ClipPreprocessorConfig Parse(string json, string source)
        {
            JsonObject root;
            try
            {
                root = JsonNode.Parse(json) as JsonObject
                       ?? throw new InputError(source, "preprocessor config is not a JSON object");
            }
            catch (JsonException e) { throw new InputError(source, $"invalid JSON: {e.Message}", e); }

            var r = new Reader(root, source);
            bool doResize = r.Bool("do_resize", true);

            // size: {"shortest_edge": s} or {"height": h, "width": w}; a bare int means shortest edge
            // (HF get_size_dict with default_to_square=False); [h, w] means exact size.
            int? shortest = null, height = null, width = null;
            switch (r.Node("size"))
            {
                case null: shortest = 224; break;
                case JsonObject s when s.ContainsKey("shortest_edge"):
                    shortest = new Reader(s, source, "size.").Int("shortest_edge", 0); break;
                case JsonObject s when s.ContainsKey("height") && s.ContainsKey("width"):
                    var sr = new Reader(s, source, "size.");
                    height = sr.Int("height", 0); width = sr.Int("width", 0); break;
                case JsonArray a when a.Count == 2:
                    var pair = r.Ints("size", 2); height = pair[0]; width = pair[1]; break;
                case JsonValue: shortest = r.Int("size", 0); break;
                default: throw new InputError(source, "field 'size' must hold 'shortest_edge' or 'height' and 'width'");
            }

            // crop_size: {"height": h, "width": w}; a bare int means a square (default_to_square=True).
            int cropH = 224, cropW = 224;
            switch (r.Node("crop_size"))
            {
                case null: break;
                case JsonObject c:
                    var cr = new Reader(c, source, "crop_size.");
                    cropH = cr.Int("height", -1); cropW = cr.Int("width", -1);
                    if (cropH < 0 || cropW < 0) throw new InputError(source, "field 'crop_size' must hold 'height' and 'width'");
                    break;
                case JsonArray: var p = r.Ints("crop_size", 2); cropH = p[0]; cropW = p[1]; break;
                default: cropH = cropW = r.Int("crop_size", 0); break;
            }

            // PIL codes: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming. Only used when resizing.
            int resample = r.Int("resample", (int)PilFilter.Bicubic);
            bool supported = resample is (int)PilFilter.Bicubic or (int)PilFilter.Bilinear;
            if (doResize && !supported)
                throw new InputError(source, $"resample={resample} is not supported (only 3 = bicubic and 2 = bilinear)");

            var cfg = new ClipPreprocessorConfig(
                DoResize: doResize,
                ShortestEdge: shortest,
                ResizeHeight: height,
                ResizeWidth: width,
                Resample: supported ? (PilFilter)resample : PilFilter.Bicubic,
                DoCenterCrop: r.Bool("do_center_crop", true),
                CropHeight: cropH,
                CropWidth: cropW,
                DoRescale: r.Bool("do_rescale", true),
                RescaleFactor: r.Double("rescale_factor", 1.0 / 255),
                DoNormalize: r.Bool("do_normalize", true),
                ImageMean: r.Channels("image_mean", ClipMean),
                ImageStd: r.Channels("image_std", ClipStd),
                DoConvertRgb: r.Bool("do_convert_rgb", true));
            var problem = cfg.Problem();
            if (problem != null) throw new InputError(source, problem);
            return cfg;
        }

        /// <summary>The first invariant this config breaks, in words, or null when it is usable.</summary>
        public string Problem()
        {
            if (DoResize && ShortestEdge is int s && s <= 0) return $"size.shortest_edge ({s}) must be positive";
            if (DoResize && ShortestEdge == null && !(ResizeHeight > 0 && ResizeWidth > 0))
                return $"size {ResizeHeight}x{ResizeWidth} must be positive";
            if (DoCenterCrop && (CropHeight <= 0 || CropWidth <= 0)) return $"crop_size {CropHeight}x{CropWidth} must be positive";
            if (ImageMean.Count != 3 || ImageStd.Count != 3) return "image_mean and image_std must have 3 values (R, G, B)";
            if (DoNormalize && ImageStd.Any(v => v == 0 || !double.IsFinite(v))) return "image_std values must be finite and non-zero";
            return null;
        }

        /// <summary>JSON field readers: absent or null → default; wrong type → InputError naming the field.</summary>
        sealed class Reader
        {
            readonly JsonObject _o;
            readonly string _source, _prefix;

            public Reader(JsonObject o, string source, string prefix = "") { _o = o; _source = source; _prefix = prefix; }

            public JsonNode Node(string name) => _o.TryGetPropertyValue(name, out var n) ? n : null;

            T Get<T>(string name, T dflt, string what) => Node(name) is JsonNode n ? Element<T>(n, name, what) : dflt;

            public bool Bool(string name, bool dflt) => Get(name, dflt, "true or false");
            public int Int(string name, int dflt) => Get(name, dflt, "an integer");
            public double Double(string name, double dflt) => Get(name, dflt, "a number");

            /// <summary>A list of exactly <paramref name="count"/> integers.</summary>
            public int[] Ints(string name, int count)
            {
                if (Node(name) is not JsonArray a || a.Count != count)
                    throw new InputError(_source, $"field '{_prefix}{name}' must be a list of {count} integers");
                return a.Select((x, i) => Element<int>(x, $"{name}[{i}]", "an integer")).ToArray();
            }

            /// <summary>A per-channel value: a list of numbers, or one number used for every channel (as HF allows).</summary>
            public IReadOnlyList<double> Channels(string name, IReadOnlyList<double> dflt)
            {
                var n = Node(name);
                if (n == null) return dflt;
                if (n is JsonArray a) return a.Select((x, i) => Element<double>(x, $"{name}[{i}]", "a number")).ToArray();
                double v = Double(name, 0);
                return new[] { v, v, v };
            }

            T Element<T>(JsonNode x, string name, string what)
            {
                try { return x != null ? x.GetValue<T>() : throw new InvalidOperationException(); }
                catch (Exception e) when (e is InvalidOperationException or FormatException)
                { throw new InputError(_source, $"field '{_prefix}{name}' must be {what}, got {x?.ToJsonString() ?? "null"}"); }
            }
        }
    }
}
