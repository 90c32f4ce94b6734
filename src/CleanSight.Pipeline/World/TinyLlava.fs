/// The tiny LLaVA of the embedded world: its config, parameter initialisation, and writing it as a
/// llava-hf checkpoint folder that the same Core code loads as any real checkpoint.
module CleanSight.Pipeline.World.TinyLlava

open System.IO
open System.Text.Json.Nodes
open TorchSharp
open CleanSight.Core.Checkpoints
open CleanSight.Core.Model

/// Sizes of the tiny model (immutable; override with `{ TinyLlava.defaults with … }`).
type Sizes =
    { ImageSize: int; PatchSize: int
      VisionHidden: int; VisionLayers: int; VisionHeads: int; VisionMlp: int
      TextHidden: int; TextLayers: int; TextHeads: int; TextKvHeads: int; TextMlp: int
      /// SentencePiece pieces of the tokenizer; <image> and <pad> follow, the vocabulary is padded to a multiple of 32
      TokenizerPieces: int }

let defaults =
    { ImageSize = 48; PatchSize = 8
      VisionHidden = 64; VisionLayers = 4; VisionHeads = 4; VisionMlp = 128
      TextHidden = 128; TextLayers = 8; TextHeads = 4; TextKvHeads = 4; TextMlp = 344
      TokenizerPieces = 1090 } // = WorldTokenizer.pieceCount () (a test keeps them equal)

let imageTokenId (s: Sizes) = s.TokenizerPieces
let padTokenId (s: Sizes) = s.TokenizerPieces + 1
let vocabSize (s: Sizes) = (s.TokenizerPieces + 2 + 31) / 32 * 32

let private obj (fields: (string * JsonNode) list) =
    JsonObject(fields |> Seq.map (fun (k, v) -> System.Collections.Generic.KeyValuePair(k, v)))

/// config.json in the llava-hf format. LLaVA reads the last vision layer here (-1): our ViT is
/// pretrained through it (llava-1.5 uses -2 of a CLIP trained through its last layer).
let configJson (s: Sizes) =
    let patches = (s.ImageSize / s.PatchSize) * (s.ImageSize / s.PatchSize)
    obj
        [ "architectures", JsonArray(JsonValue.Create "LlavaForConditionalGeneration") :> JsonNode
          "model_type", JsonValue.Create "llava"
          "image_token_index", JsonValue.Create(imageTokenId s)
          "pad_token_id", JsonValue.Create(padTokenId s)
          "projector_hidden_act", JsonValue.Create "gelu"
          "vision_feature_layer", JsonValue.Create -1
          "vision_feature_select_strategy", JsonValue.Create "default"
          "image_seq_length", JsonValue.Create patches
          "tie_word_embeddings", JsonValue.Create false
          "text_config",
          obj
              [ "model_type", JsonValue.Create "llama" :> JsonNode
                "hidden_size", JsonValue.Create s.TextHidden
                "intermediate_size", JsonValue.Create s.TextMlp
                "num_hidden_layers", JsonValue.Create s.TextLayers
                "num_attention_heads", JsonValue.Create s.TextHeads
                "num_key_value_heads", JsonValue.Create s.TextKvHeads
                "vocab_size", JsonValue.Create(vocabSize s)
                "rms_norm_eps", JsonValue.Create 1e-5
                "rope_theta", JsonValue.Create 10000.0
                "max_position_embeddings", JsonValue.Create 256
                "hidden_act", JsonValue.Create "silu"
                "bos_token_id", JsonValue.Create 1
                "eos_token_id", JsonValue.Create 2
                "pad_token_id", JsonValue.Create(padTokenId s)
                "tie_word_embeddings", JsonValue.Create false ]
          "vision_config",
          obj
              [ "model_type", JsonValue.Create "clip_vision_model" :> JsonNode
                "hidden_size", JsonValue.Create s.VisionHidden
                "intermediate_size", JsonValue.Create s.VisionMlp
                "num_hidden_layers", JsonValue.Create s.VisionLayers
                "num_attention_heads", JsonValue.Create s.VisionHeads
                "image_size", JsonValue.Create s.ImageSize
                "patch_size", JsonValue.Create s.PatchSize
                "hidden_act", JsonValue.Create "quick_gelu"
                "layer_norm_eps", JsonValue.Create 1e-5
                "num_channels", JsonValue.Create 3 ] ]

let config (s: Sizes) = LlavaConfig.Parse(configJson s).Validate()

/// preprocessor_config.json: CLIP normalisation at the tiny image size (no resize for generated scenes).
let preprocessorJson (s: Sizes) =
    $"""{{
  "image_processor_type": "CLIPImageProcessor",
  "do_resize": true, "size": {{ "shortest_edge": {s.ImageSize} }}, "resample": 3,
  "do_center_crop": true, "crop_size": {{ "height": {s.ImageSize}, "width": {s.ImageSize} }},
  "do_rescale": true, "rescale_factor": 0.00392156862745098,
  "do_normalize": true,
  "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
  "do_convert_rgb": true
}}"""

/// GPT-style initialisation, seeded: N(0, 0.02) weights, zero biases, unit norms.
let initialize (seed: int64) (model: torch.nn.Module) =
    use _ = torch.no_grad ()
    let gen = new torch.Generator(uint64 seed)
    use one = (1.0).ToScalar() // held for the native calls (see Core's TensorArithmetic)
    for struct (name, p) in model.named_parameters () do
        let leaf = name.Split('.') |> Array.last
        let isNorm = name.Contains "norm" || name.Contains "layrnorm"
        if isNorm && leaf = "weight" then p.fill_(one) |> ignore
        elif leaf = "bias" then p.zero_() |> ignore
        else p.normal_(0.0, 0.02, gen) |> ignore

/// The tokenizer files of a checkpoint folder.
let tokenizerFiles = [ "tokenizer.model"; "tokenizer_config.json"; "special_tokens_map.json" ]

/// Writes a llava-hf checkpoint folder: config, single-file safetensors (F32, with `metadata` in its
/// header — train-base records its recipe there), preprocessor, and the tokenizer copied from
/// `tokenizerDir` (the tiny world's: `WorldTokenizer`, whose <image> and <pad> are added tokens right
/// after its pieces).
let save (dir: string) (tokenizerDir: string) (s: Sizes) (metadata: (string * string) list) (model: LlavaForConditionalGeneration) =
    Directory.CreateDirectory dir |> ignore
    CleanSight.Pipeline.Files.writeAtomic (Path.Combine(dir, "config.json")) (fun st ->
        use w = new System.Text.Json.Utf8JsonWriter(st, System.Text.Json.JsonWriterOptions(Indented = true))
        (configJson s).WriteTo w)
    CleanSight.Pipeline.Files.writeAtomic (Path.Combine(dir, "preprocessor_config.json")) (fun st ->
        let bytes = System.Text.Encoding.UTF8.GetBytes(preprocessorJson s)
        st.Write(bytes, 0, bytes.Length))
    for f in tokenizerFiles do
        File.Copy(Path.Combine(tokenizerDir, f), Path.Combine(dir, f), true)
    let tensors = [ for struct (n, p) in model.named_parameters () -> struct (n, p.detach ()) ]
    SafetensorsFile.Write(Path.Combine(dir, "model.safetensors"), tensors, dict metadata)

/// Writes a projector adapter: multi_modal_projector.* tensors only.
let saveAdapter (path: string) (model: LlavaForConditionalGeneration) (metadata: (string * string) list) =
    let tensors =
        [ for struct (n, p) in model.named_parameters () do
              if n.StartsWith "multi_modal_projector." then yield struct (n, p.detach ()) ]
    SafetensorsFile.Write(path, tensors, dict metadata)
