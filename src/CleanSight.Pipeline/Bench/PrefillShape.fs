/// The prefill both implementations time: a LLaVA with LLaVA-7B's decoder widths (hidden 4096,
/// 32 heads, MLP 11008) and a few layers, one image of `ImageTokens` tokens inside a short prompt,
/// batch 1. The vision tower is a tiny stand-in (1 layer, width 32: ≈ 0.1 % of the work); the
/// projector has the real 4096×4096 second layer. Also the FLOPs that prefill does.
module CleanSight.Pipeline.Bench.PrefillShape

open System.Text.Json.Nodes
open CleanSight.Core.Checkpoints
open CleanSight.Pipeline.World

type Shape =
    { Hidden: int; Heads: int; KvHeads: int; Mlp: int; Layers: int
      /// vocabulary (small: only the last row goes through lm_head)
      Vocab: int
      /// a square number: the tiny vision tower sees a √N × √N patch grid
      ImageTokens: int
      /// prompt tokens before the image (BOS included) and after it
      PromptBefore: int
      PromptAfter: int
      VisionHidden: int }

/// LLaVA-1.5-7B's decoder widths with `layers` layers; "USER: <image>\n{~35 tokens} ASSISTANT:".
let llava7bWidth (layers: int) (imageTokens: int) (promptAfter: int) =
    { Hidden = 4096; Heads = 32; KvHeads = 32; Mlp = 11008; Layers = layers; Vocab = 1024
      ImageTokens = imageTokens; PromptBefore = 5; PromptAfter = promptAfter; VisionHidden = 32 }

let tokens (s: Shape) = s.PromptBefore + s.ImageTokens + s.PromptAfter

let private side (s: Shape) =
    let k = int (round (sqrt (float s.ImageTokens)))
    if k * k <> s.ImageTokens then invalidArg "ImageTokens" $"image tokens must be a square number, got {s.ImageTokens}"
    k

/// The sizes in the tiny world's config helper (patch 2 px: an image of 2·√N px).
let sizes (s: Shape) : TinyLlava.Sizes =
    { ImageSize = 2 * side s; PatchSize = 2
      VisionHidden = s.VisionHidden; VisionLayers = 1; VisionHeads = 2; VisionMlp = 2 * s.VisionHidden
      TextHidden = s.Hidden; TextLayers = s.Layers; TextHeads = s.Heads; TextKvHeads = s.KvHeads; TextMlp = s.Mlp
      TokenizerPieces = s.Vocab - 32 }

/// config.json of the shape (the tiny world's, with room for the positions).
let configJson (s: Shape) =
    let json = TinyLlava.configJson (sizes s)
    json.["text_config"].["max_position_embeddings"] <- JsonValue.Create 4096
    json

let config (s: Shape) = LlavaConfig.Parse(configJson s).Validate()

/// BOS, prompt ids, the image tokens, prompt ids (deterministic, all below the image token).
let ids (s: Shape) : int64[] =
    let image = int64 (TinyLlava.imageTokenId (sizes s))
    let text n offset = Array.init n (fun i -> int64 (3 + (offset + 7 * i) % (s.Vocab - 64)))
    Array.concat [ [| 1L |]; text (s.PromptBefore - 1) 0; Array.create s.ImageTokens image; text s.PromptAfter 11 ]

/// Multiply-adds × 2 of the prefill: the decoder's linear layers on every token, causal attention
/// (QKᵀ and AV over the T(T+1)/2 allowed pairs), the projector on the image tokens, lm_head on the
/// last token. Not counted: the tiny vision tower, norms, RoPE, softmax, activations.
let flops (s: Shape) =
    let t, d, hd = float (tokens s), float s.Hidden, float s.Hidden
    let kv = float s.KvHeads * (hd / float s.Heads)
    let linears = 2.0 * t * (d * hd + 2.0 * d * kv + hd * d + 3.0 * d * float s.Mlp)
    let attention = 2.0 * t * (t + 1.0) * hd
    let projector = 2.0 * float s.ImageTokens * (float s.VisionHidden * d + d * d)
    let head = 2.0 * d * float s.Vocab
    float s.Layers * (linears + attention) + projector + head

let toJson (s: Shape) =
    JsonObject(
        [ "hidden", s.Hidden; "heads", s.Heads; "kv_heads", s.KvHeads; "mlp", s.Mlp; "layers", s.Layers
          "vocab", s.Vocab; "image_tokens", s.ImageTokens; "prompt_before", s.PromptBefore
          "prompt_after", s.PromptAfter; "vision_hidden", s.VisionHidden; "tokens", tokens s ]
        |> Seq.map (fun (k, v) -> System.Collections.Generic.KeyValuePair<string, JsonNode>(k, JsonValue.Create v)))
