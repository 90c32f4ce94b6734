using System;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace CleanSight.Core.Checkpoints
{
    /// <summary>How the vision features are taken from the chosen CLIP layer.</summary>
    public enum VisionFeatureSelectStrategy
    {
        /// <summary>drop the CLS position (llava-1.5)</summary>
        Default,
        /// <summary>keep every position, CLS included</summary>
        Full,
    }

    /// <summary>text_config of a llava-hf config.json (HF LlamaConfig; absent fields take its defaults).</summary>
    public sealed record LlamaConfig(
        int HiddenSize = 4096,
        int IntermediateSize = 11008,
        int NumHiddenLayers = 32,
        int NumAttentionHeads = 32,
        int NumKeyValueHeads = 32,
        int HeadDim = 128,
        int VocabSize = 32000,
        double RmsNormEps = 1e-6,
        double RopeTheta = 10000.0,
        int MaxPositionEmbeddings = 2048,
        bool AttentionBias = false,
        bool MlpBias = false,
        bool TieWordEmbeddings = false,
        int BosTokenId = 1,
        int[] EosTokenIds = null)
    {
        public int[] EosTokenIds { get; init; } = EosTokenIds ?? new[] { 2 };
    }

    /// <summary>vision_config of a llava-hf config.json (HF CLIPVisionConfig defaults).</summary>
    public sealed record ClipVisionConfig(
        int HiddenSize = 768,
        int IntermediateSize = 3072,
        int NumHiddenLayers = 12,
        int NumAttentionHeads = 12,
        int NumChannels = 3,
        int ImageSize = 224,
        int PatchSize = 32,
        double LayerNormEps = 1e-5)
    {
        public int PatchesPerSide => ImageSize / PatchSize;
        public int NumPatches => PatchesPerSide * PatchesPerSide;
        /// <summary>patches + CLS</summary>
        public int NumPositions => NumPatches + 1;
        public int HeadDim => HiddenSize / NumAttentionHeads;
    }

    /// <summary>
    /// A llava-hf config.json, validated once. Defaults are HF's LlavaConfig defaults; a config that
    /// omits vision_config gets llava-1.5's CLIP ViT-L/14-336, one that omits text_config gets LlamaConfig().
    /// </summary>
    public sealed record LlavaConfig(
        LlamaConfig Text,
        ClipVisionConfig Vision,
        int ImageTokenIndex = 32000,
        int[] VisionFeatureLayers = null,
        VisionFeatureSelectStrategy SelectStrategy = VisionFeatureSelectStrategy.Default,
        int ImageSeqLength = 576,
        bool MultimodalProjectorBias = true,
        string ProjectorHiddenAct = "gelu",
        int? PadTokenId = null)
    {
        /// <summary>Padding id for batches: pad_token_id, else the first EOS id.</summary>
        public int PadTokenOrDefault => PadTokenId ?? Text.EosTokenIds[0];

        public int[] VisionFeatureLayers { get; init; } = VisionFeatureLayers ?? new[] { -2 };

        /// <summary>Image features per image after the select strategy.</summary>
        public int ImageFeatureTokens => SelectStrategy == VisionFeatureSelectStrategy.Default ? Vision.NumPatches : Vision.NumPositions;

        public static readonly ClipVisionConfig Llava15Vision = new(
            HiddenSize: 1024, IntermediateSize: 4096, NumHiddenLayers: 24, NumAttentionHeads: 16, ImageSize: 336, PatchSize: 14);

        public static LlavaConfig Load(string path)
        {
            if (!File.Exists(path)) throw new InputError(path, "config.json not found");
            JsonObject root;
            try
            {
                root = JsonNode.Parse(File.ReadAllBytes(path)) as JsonObject
                       ?? throw new InputError(path, "config.json is not a JSON object");
            }
            catch (JsonException e) { throw new InputError(path, $"invalid JSON: {e.Message}", e); }
            try { return Parse(root).Validate(); }
            catch (ConfigError e) { throw new InputError(path, e.Message, e); }
        }

        public static LlavaConfig Parse(JsonObject root)
        {
            var modelType = Str(root, "model_type", "llava");
            if (modelType != "llava")
                throw new ConfigError($"model_type '{modelType}' is not supported (expected 'llava')");
            var textNode = root["text_config"] as JsonObject;
            var visionNode = root["vision_config"] as JsonObject;
            if (textNode != null && Str(textNode, "model_type", "llama") is var tt && tt is not ("llama" or "vicuna"))
                throw new ConfigError($"text_config.model_type '{tt}' is not supported (expected 'llama')");
            if (textNode?["rope_scaling"] is JsonObject rs && Str(rs, "rope_type", Str(rs, "type", "default")) != "default")
                throw new ConfigError("text_config.rope_scaling is not supported");

            var t = textNode ?? new JsonObject();
            int hidden = Int(t, "hidden_size", 4096), heads = Int(t, "num_attention_heads", 32);
            var text = new LlamaConfig(
                HiddenSize: hidden,
                IntermediateSize: Int(t, "intermediate_size", 11008),
                NumHiddenLayers: Int(t, "num_hidden_layers", 32),
                NumAttentionHeads: heads,
                NumKeyValueHeads: Int(t, "num_key_value_heads", heads),
                HeadDim: Int(t, "head_dim", heads > 0 ? hidden / heads : 0),
                VocabSize: Int(t, "vocab_size", 32000),
                RmsNormEps: Dbl(t, "rms_norm_eps", 1e-6),
                RopeTheta: Dbl(t, "rope_theta", 10000.0),
                MaxPositionEmbeddings: Int(t, "max_position_embeddings", 2048),
                AttentionBias: Bool(t, "attention_bias", false),
                MlpBias: Bool(t, "mlp_bias", false),
                TieWordEmbeddings: Bool(t, "tie_word_embeddings", Bool(root, "tie_word_embeddings", false)),
                BosTokenId: Int(t, "bos_token_id", 1),
                EosTokenIds: IntOrList(t, "eos_token_id", new[] { 2 }));
            var actT = Str(t, "hidden_act", "silu");
            if (actT != "silu") throw new ConfigError($"text_config.hidden_act '{actT}' is not supported (expected 'silu')");

            ClipVisionConfig vision;
            if (visionNode == null) vision = Llava15Vision;
            else
            {
                var v = visionNode;
                vision = new ClipVisionConfig(
                    HiddenSize: Int(v, "hidden_size", 768),
                    IntermediateSize: Int(v, "intermediate_size", 3072),
                    NumHiddenLayers: Int(v, "num_hidden_layers", 12),
                    NumAttentionHeads: Int(v, "num_attention_heads", 12),
                    NumChannels: Int(v, "num_channels", 3),
                    ImageSize: Int(v, "image_size", 224),
                    PatchSize: Int(v, "patch_size", 32),
                    LayerNormEps: Dbl(v, "layer_norm_eps", 1e-5));
                var actV = Str(v, "hidden_act", "quick_gelu");
                if (actV != "quick_gelu") throw new ConfigError($"vision_config.hidden_act '{actV}' is not supported (expected 'quick_gelu')");
            }

            var strategy = Str(root, "vision_feature_select_strategy", "default") switch
            {
                "default" => VisionFeatureSelectStrategy.Default,
                "full" => VisionFeatureSelectStrategy.Full,
                var s => throw new ConfigError($"vision_feature_select_strategy '{s}' is not supported (expected 'default' or 'full')"),
            };
            var act = Str(root, "projector_hidden_act", "gelu");
            if (act != "gelu") throw new ConfigError($"projector_hidden_act '{act}' is not supported (expected 'gelu')");
            var cfg = new LlavaConfig(
                Text: text,
                Vision: vision,
                ImageTokenIndex: Int(root, "image_token_index", Int(root, "image_token_id", 32000)),
                VisionFeatureLayers: IntOrList(root, "vision_feature_layer", new[] { -2 }),
                SelectStrategy: strategy,
                ImageSeqLength: 0,
                MultimodalProjectorBias: Bool(root, "multimodal_projector_bias", true),
                ProjectorHiddenAct: act,
                PadTokenId: Field(root, "pad_token_id") is null ? (Field(t, "pad_token_id") is null ? null : Int(t, "pad_token_id", 0)) : Int(root, "pad_token_id", 0));
            return cfg with { ImageSeqLength = Int(root, "image_seq_length", cfg.ImageFeatureTokens) };
        }

        /// <summary>Checks the invariants the model relies on; throws with the numbers.</summary>
        public LlavaConfig Validate()
        {
            void Require(bool ok, string what) { if (!ok) throw new ConfigError(what); }
            var t = Text; var v = Vision;
            Require(t.HiddenSize > 0 && t.NumHiddenLayers > 0 && t.NumAttentionHeads > 0 && t.VocabSize > 0 && t.IntermediateSize > 0,
                "text_config sizes must be positive");
            Require(t.NumKeyValueHeads > 0 && t.NumAttentionHeads % t.NumKeyValueHeads == 0,
                $"text_config.num_attention_heads ({t.NumAttentionHeads}) must be a multiple of num_key_value_heads ({t.NumKeyValueHeads})");
            Require(t.HeadDim > 0 && t.HeadDim % 2 == 0, $"text_config head_dim ({t.HeadDim}) must be positive and even (RoPE)");
            Require(v.HiddenSize > 0 && v.NumHiddenLayers > 0 && v.NumAttentionHeads > 0 && v.IntermediateSize > 0 && v.PatchSize > 0,
                "vision_config sizes must be positive");
            Require(v.HiddenSize % v.NumAttentionHeads == 0,
                $"vision_config.hidden_size ({v.HiddenSize}) must be a multiple of num_attention_heads ({v.NumAttentionHeads})");
            Require(v.ImageSize % v.PatchSize == 0, $"vision_config.image_size ({v.ImageSize}) must be a multiple of patch_size ({v.PatchSize})");
            Require(VisionFeatureLayers.Length > 0, "vision_feature_layer must name at least one layer");
            foreach (var l in VisionFeatureLayers)
                Require(l >= -(v.NumHiddenLayers + 1) && l <= v.NumHiddenLayers,
                    $"vision_feature_layer {l} is out of range for {v.NumHiddenLayers} vision layers");
            Require(ImageTokenIndex >= 0 && ImageTokenIndex < t.VocabSize,
                $"image_token_index {ImageTokenIndex} is outside the vocabulary ({t.VocabSize})");
            Require(ImageSeqLength == ImageFeatureTokens,
                $"image_seq_length ({ImageSeqLength}) differs from the image features the vision tower gives ({ImageFeatureTokens})");
            return this;
        }

        /// <summary>Vision hidden-state indices (into [embeddings, layer1..layerN]) the features come from.</summary>
        public int[] VisionHiddenStateIndices =>
            VisionFeatureLayers.Select(l => l < 0 ? Vision.NumHiddenLayers + 1 + l : l).ToArray();

        // ---- JSON field readers: absent → HF default; wrong type → ConfigError naming the field ----
        static JsonNode Field(JsonObject o, string name) => o.TryGetPropertyValue(name, out var n) ? n : null;

        static int Int(JsonObject o, string name, int dflt)
        {
            var n = Field(o, name);
            if (n == null) return dflt;
            try { return n.GetValue<int>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            { throw new ConfigError($"field '{name}' must be an integer, got {n.ToJsonString()}"); }
        }

        static double Dbl(JsonObject o, string name, double dflt)
        {
            var n = Field(o, name);
            if (n == null) return dflt;
            try { return n.GetValue<double>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            { throw new ConfigError($"field '{name}' must be a number, got {n.ToJsonString()}"); }
        }

        static bool Bool(JsonObject o, string name, bool dflt)
        {
            var n = Field(o, name);
            if (n == null) return dflt;
            try { return n.GetValue<bool>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            { throw new ConfigError($"field '{name}' must be true or false, got {n.ToJsonString()}"); }
        }

        static string Str(JsonObject o, string name, string dflt)
        {
            var n = Field(o, name);
            if (n == null) return dflt;
            try { return n.GetValue<string>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            { throw new ConfigError($"field '{name}' must be a string, got {n.ToJsonString()}"); }
        }

        static int[] IntOrList(JsonObject o, string name, int[] dflt)
        {
            var n = Field(o, name);
            if (n == null) return dflt;
            if (n is JsonArray a) return a.Select((x, i) => Int(new JsonObject { [name] = x?.DeepClone() }, name, 0)).ToArray();
            return new[] { Int(o, name, 0) };
        }
    }

    /// <summary>A config value the model cannot run with (wrapped into an InputError with the file name).</summary>
    public sealed class ConfigError : Exception
    {
        public ConfigError(string message) : base(message) { }
    }
}
