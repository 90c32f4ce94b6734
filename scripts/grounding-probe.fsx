// How text-like a base's image tokens are (`dotnet fsi scripts/grounding-probe.fsx [MODEL_DIR=world/base]`, ~20 s):
// on 200 clean-test scenes, the grounding loss (`World/Grounding.fs`: each image token's squared
// distance to the summed input embeddings of the words naming its patch, relative to their norm), and
// for the patches an object covers, how often the word of each attribute (colour, shape, size) whose
// embedding is nearest in direction to the token (cosine, among that attribute's words) is the object's.
// A base trained with `train-base --grounding W` should read as text here; one trained without, at chance.
// Then the decoder alone on 200 held-out reading-comprehension passages (`GeneralText.passage`: a scene
// described in words, a question, greedy answer): whether it finds a named thing in a text context at
// all — what `--general-text with-passages` teaches before any image.
#load "load.fsx"

open System
open TorchSharp
open CleanSight.Core.Inference
open CleanSight.Pipeline.World

let modelDir = Load.modelDirArg ()
let session = LlavaSession.Load modelDir
let model, tok = session.Model, session.Tokenizer
let size, patch = model.Config.Vision.ImageSize, model.Config.Vision.PatchSize
let sizes = { TinyLlava.defaults with ImageSize = size; PatchSize = patch }
let scenes = Array.init 200 (Scenes.generate BaseModel.Splits.cleanTest)
let pixels = BaseModel.scenePixels sizes BaseModel.Splits.cleanTest (Array.init scenes.Length id)
let pad = int64 model.Config.Text.VocabSize
let pieces = scenes |> Array.map (Grounding.patchWords size patch >> Grounding.pieceIds tok pad)
let n = int64 scenes.Length

let px = torch.tensor(Array.concat pixels).reshape(n, 3L, int64 size, int64 size)
let features = torch.no_grad () |> fun g -> use _ = g in model.ImageFeatures px                    // [B, N, D]
let loss = torch.no_grad () |> fun g -> use _ = g in Grounding.loss model.ImageFeatures model px (torch.tensor(Array.concat pieces).reshape(n, -1L))
printfn "grounding loss on %d clean-test scenes: %.3f (1 = no better than zero tokens)" scenes.Length (loss.item<float32> ())

let embedding = model.LanguageModel.EmbeddingMatrix.detach ()
let wordId (w: string) = match tok.Encode(w, false) with [| id |] -> int64 id | ids -> failwith $"'{w}' takes {ids.Length} pieces"
let nearest (words: string[]) (token: torch.Tensor) =
    let e = embedding.index_select(0L, torch.tensor(words |> Array.map wordId))                     // [K, D]
    let cos = torch.nn.functional.cosine_similarity(e, token.unsqueeze(0L).expand_as e, dim = 1L)   // [K]
    words.[int (cos.argmax().item<int64> ())]
let sizesWords = [| "small"; "large" |]
let mutable counts = Map.empty
for b in 0 .. scenes.Length - 1 do
    let owners = Scenes.patchOwners size patch scenes.[b]
    for k in 0 .. owners.Length - 1 do
        match owners.[k] with
        | Some t ->
            let token = features.[int64 b, int64 k]
            for attribute, words, truth in
                [ "colour", Scenes.colourNames, Scenes.colourName t.Colour
                  "shape", Scenes.shapeNames, Scenes.shapeName t.Shape
                  "size", sizesWords, Scenes.sizeName t.Size ] do
                let right, total = counts |> Map.tryFind attribute |> Option.defaultValue (0, 0)
                counts <- counts |> Map.add attribute ((if nearest words token = truth then right + 1 else right), total + 1)
        | None -> ()
for KeyValue(attribute, (right, total)) in counts do
    printfn "object patches whose nearest %s word is the object's: %d / %d (%.0f %%)" attribute right total (100.0 * float right / float total)

// the decoder alone on passages it never saw (indices past any corpus train-base draws)
let passages = Array.init 200 (fun i -> GeneralText.passage 7 (1_000_000 + i))
let greedyText (prompt: string) =
    use _ = torch.no_grad ()
    let mutable ids = tok.Encode(prompt, true) |> Array.map int64
    let out = ResizeArray<int>()
    let mutable fin = false
    while not fin && out.Count < 6 do
        let logits = model.LanguageModel.Forward(model.LanguageModel.Embed(torch.tensor(ids).unsqueeze 0L))
        let next = int (logits.[0L, -1L].argmax().item<int64> ())
        if next = tok.EosId then fin <- true
        else
            out.Add next
            ids <- Array.append ids [| int64 next |]
    tok.Decode(out.ToArray(), true)
let right =
    passages |> Array.filter (fun p ->
        let cut = p.LastIndexOf "? "                      // "… question? answer." (answers may be two words: "top left")
        let prompt, answer = p.[.. cut], p.[cut + 2 .. p.Length - 2]
        (greedyText prompt).Trim().TrimEnd('.').StartsWith answer)
printfn "held-out passages answered right by the decoder alone (text only): %d / %d" right.Length passages.Length
