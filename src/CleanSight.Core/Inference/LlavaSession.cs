using System;
using System.IO;
using System.Linq;
using CleanSight.Core.Checkpoints;
using CleanSight.Core.Model;
using CleanSight.Core.Text;
using CleanSight.Core.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Inference
{
    /// <summary>Where and in what precision a model runs: run parameters, not config.</summary>
    public sealed record RunOptions(string Device = "cpu", ScalarType Dtype = ScalarType.Float32)
    {
        public static readonly RunOptions Default = new();
        public Device TorchDevice => torch.device(Device);

        public static ScalarType ParseDtype(string s) => s.ToLowerInvariant() switch
        {
            "f32" or "float32" or "fp32" => ScalarType.Float32,
            "bf16" or "bfloat16" => ScalarType.BFloat16,
            "f16" or "float16" or "fp16" => ScalarType.Float16,
            _ => throw new ArgumentException($"unknown dtype '{s}' (expected f32, bf16 or f16)"),
        };

        /// <summary>The command-line name of a compute dtype (f32, bf16, f16), as ParseDtype reads it.</summary>
        public static string DtypeName(ScalarType t) => t switch
        {
            ScalarType.Float32 => "f32",
            ScalarType.BFloat16 => "bf16",
            ScalarType.Float16 => "f16",
            _ => t.ToString(),
        };

        /// <summary>A device name checked against this machine's libtorch: ArgumentException (one line) for a
        /// malformed name or a CUDA device it cannot reach (the CPU package has no CUDA). Returns the name.</summary>
        public static string CheckDevice(string s)
        {
            Device device;
            try { device = torch.device(s); }
            catch (Exception e) when (e is ArgumentException || e is FormatException)
            {
                throw new ArgumentException($"unknown device '{s}' (expected cpu, cuda or cuda:N)");
            }
            catch (InvalidOperationException) // the device type exists but its backend does not load here
            {
                throw new ArgumentException(s.StartsWith("cuda", StringComparison.OrdinalIgnoreCase)
                    ? $"device '{s}': this libtorch has no CUDA (only the CPU build is installed, or no GPU is visible)"
                    : $"device '{s}': not available on this machine (cpu and cuda are supported)");
            }
            if (device.type == DeviceType.CUDA)
            {
                var count = torch.cuda.device_count();
                if (device.index >= count)
                    throw new ArgumentException($"device '{s}': {count} CUDA device(s) visible, numbered from 0");
            }
            else if (device.type != DeviceType.CPU)
                throw new ArgumentException($"device '{s}': only cpu and cuda are supported");
            return s;
        }
    }

    /// <summary>
    /// A loaded llava-hf checkpoint folder: model, tokenizer, image processor and prompt template,
    /// everything one sample needs on its way from (image, question) to an answer.
    /// </summary>
    public sealed class LlavaSession : IDisposable
    {
        public string Directory { get; }
        public LlavaConfig Config { get; }
        public LlavaForConditionalGeneration Model { get; }
        public LlavaTokenizer Tokenizer { get; }
        public ClipPreprocessorConfig Preprocessor { get; }
        public string Template { get; }
        public RunOptions Options { get; }

        LlavaSession(string dir, LlavaConfig config, LlavaForConditionalGeneration model, LlavaTokenizer tokenizer,
            ClipPreprocessorConfig preprocessor, string template, RunOptions options)
        {
            Directory = dir; Config = config; Model = model; Tokenizer = tokenizer;
            Preprocessor = preprocessor; Template = template; Options = options;
        }

        /// <summary>
        /// Loads a checkpoint folder (safetensors only), optionally overlaying a projector adapter
        /// (a safetensors file of multi_modal_projector.* tensors; one whose metadata names another
        /// base, <see cref="BaseFingerprint"/>, is refused). Bad files raise InputError.
        /// </summary>
        public static LlavaSession Load(string dir, RunOptions options = null, string adapter = null,
            string template = LlavaPrompt.DefaultTemplate, Action<int, int> progress = null)
        {
            options ??= RunOptions.Default;
            if (!System.IO.Directory.Exists(dir)) throw new InputError(dir, "checkpoint folder not found");
            var config = LlavaConfig.Load(Path.Combine(dir, "config.json"));
            var tokenizer = LlavaTokenizer.Load(dir, config.ImageTokenIndex);
            var preprocessorPath = Path.Combine(dir, "preprocessor_config.json");
            var preprocessor = ClipPreprocessorConfig.Load(preprocessorPath);
            if (preprocessor.CropHeight != config.Vision.ImageSize || preprocessor.CropWidth != config.Vision.ImageSize)
                throw new InputError(preprocessorPath,
                    $"crop size {preprocessor.CropHeight}x{preprocessor.CropWidth} differs from the vision tower's image size {config.Vision.ImageSize}");
            var files = CheckpointFiles.Open(dir);
            // an adapter that names the base it was trained on is refused on any other, before loading
            var adapterFiles = adapter == null ? null : CheckpointFiles.OpenFile(adapter);
            var problem = adapterFiles == null ? null : BaseFingerprint.AdapterProblem(adapterFiles.Shards[0], files);
            if (problem != null) throw new InputError(adapterFiles.Root, problem);
            var model = new LlavaForConditionalGeneration(config, options.Dtype, options.TorchDevice);
            WeightLoader.Load(model, files, progress: progress);
            if (adapterFiles != null)
                WeightLoader.Load(model, adapterFiles, onlyPrefix: "multi_modal_projector.");
            model.eval();
            return new LlavaSession(dir, config, model, tokenizer, preprocessor, template, options);
        }

        /// <summary>The templated prompt's ids, image tokens expanded.</summary>
        public LlavaPrompt Prompt(string question) =>
            LlavaPrompt.Build(Tokenizer, question, Config.ImageSeqLength, Config.ImageTokenIndex, Template);

        /// <summary>
        /// Null when a prompt of <paramref name="promptLength"/> ids (image tokens included) and
        /// <paramref name="maxNewTokens"/> generated ones fit the decoder's context
        /// (text_config.max_position_embeddings); otherwise the problem, in one line. Positions past the
        /// context were never trained, and attention memory grows with the square of the length.
        /// </summary>
        public string ContextProblem(int promptLength, int maxNewTokens)
        {
            long needed = (long)promptLength + Math.Max(0, maxNewTokens);
            int context = Config.Text.MaxPositionEmbeddings;
            return needed <= context
                ? null
                : $"prompt is {promptLength} tokens ({Config.ImageSeqLength} of them the image) and up to {maxNewTokens} more are generated: "
                  + $"{needed} positions, more than the model's context of {context} (max_position_embeddings)";
        }

        /// <summary>Preprocessed pixels [3, H, W] (fp32, CPU; the model moves them).</summary>
        public Tensor Pixels(RgbImage image)
        {
            var chw = ClipImageProcessor.Preprocess(image, Preprocessor);
            return tensor(chw, new long[] { 3, Preprocessor.CropHeight, Preprocessor.CropWidth });
        }

        public Generation Generate(RgbImage image, string question, int maxNewTokens, IAttentionPolicy policy = null,
            ExclusionMode mode = ExclusionMode.Drop)
        {
            using var scope = NewDisposeScope();
            var ids = Prompt(question).InputIds.Select(i => (long)i).ToArray();
            return Generator.Greedy(Model, ids, Pixels(image), maxNewTokens, policy, mode);
        }

        /// <summary>Answer text: special tokens skipped, surrounding whitespace trimmed.</summary>
        public string Decode(long[] ids) => Tokenizer.Decode(ids.Select(i => (int)i)).Trim();

        public void Dispose() => Model.Dispose();
    }
}
