/// Grounded alignment, a recipe option of the base (off by default). CLIP's image features come
/// aligned with text by its contrastive training, and LLaVA's projector maps them into its LLM's
/// word-embedding space, so an image token of a red circle already looks like the words "red circle"
/// to the decoder. Our ViT learned patch labels, not text. With grounding on, while the projector
/// trains (stages 3 and 4), each image token is also pulled toward the sum of the decoder's input
/// embeddings of the words naming what its patch shows: the covering object's colour, shape, size and
/// grid cell ("red circle large top left"), or the background's pattern and the patch's cell
/// ("striped bottom"). A question word can then find its object among the image tokens by matching
/// embeddings — the binding our decoders did not learn from answers alone. (Measured: the tokens
/// come to read as words, the binding does not follow; docs/tiny-world.md, "Text-like image tokens …".)
module CleanSight.Pipeline.World.Grounding

open TorchSharp
open CleanSight.Core.Model
open CleanSight.Core.Text

/// The words naming each patch of `scene`, row-major over the patch grid, patches owned as
/// `Scenes.patchOwners` assigns them (as the ViT's labels).
let patchWords (size: int) (patch: int) (scene: Scenes.Scene) : string list[] =
    let cells = VisionPretraining.patchCells (size / patch)
    let words (phrase: string) = phrase.Split ' ' |> List.ofArray
    Scenes.patchOwners size patch scene
    |> Array.mapi (fun k owner ->
        match owner with
        | Some t -> [ Scenes.colourName t.Colour; Scenes.shapeName t.Shape; Scenes.sizeName t.Size ] @ words (Scenes.positionName t)
        | None -> Scenes.backgroundName scene.Background :: words Scenes.positionNames.[cells.[k]])

/// Pieces a patch's words may take at most (`pieceIds` pads to it).
let width = 8

/// The tokenizer pieces of each patch's words, padded with `pad` to `width`: [N·width], row-major.
let pieceIds (tok: LlavaTokenizer) (pad: int64) (words: string list[]) : int64[] =
    words
    |> Array.collect (fun ws ->
        let ids = ws |> List.toArray |> Array.collect (fun w -> tok.Encode(w, false)) |> Array.map int64
        if ids.Length > width then invalidArg (nameof words) $"{ws} take {ids.Length} pieces, more than {width}"
        Array.append ids (Array.create (width - ids.Length) pad))

/// The grounding loss of images [B, 3, H, W] with their patch pieces [B, N·width] (`pieceIds`, padded
/// with the vocabulary size): the squared distance of every image token (`imageFeatures`) to the sum
/// of its pieces' input embeddings, relative to the targets' own squared norm. The targets are the
/// decoder's current embeddings, held constant (only the projector is pulled).
let loss (imageFeatures: torch.Tensor -> torch.Tensor) (model: LlavaForConditionalGeneration) (pixels: torch.Tensor) (pieces: torch.Tensor) =
    let features = imageFeatures pixels                                         // [B, N, D]
    let b, n, d = features.shape.[0], features.shape.[1], features.shape.[2]
    let target =
        use _ = torch.no_grad ()
        let e = model.LanguageModel.EmbeddingMatrix                             // [V, D]
        let padded = torch.cat([| e; torch.zeros([| 1L; d |], dtype = e.dtype, device = e.device) |], 0L) // [V+1, D]
        padded.index_select(0L, pieces.reshape(-1L)).reshape(b, n, int64 width, d).sum(2L) // [B, N, D]
    let error = features - target
    (error * error).sum() / (target * target).sum()
