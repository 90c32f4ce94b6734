// Where a base model's VQA accuracy goes (`dotnet fsi scripts/base-probe.fsx [MODEL_DIR=world/base]`, ~1 min):
// 1. held-out accuracy by question kind × number of objects in the scene — with one object no
//    reference has to be resolved, so a miss there is a perception miss, not a binding miss;
// 2. linear probes (standardised features, 900 one-object scenes to fit, 300 to test) of the object's
//    shape and colour from the ViT's features and from the projector's output, each averaged over the
//    patches the object covers: what the decoder *could* read;
// 3. the colour answers for lone objects ("What color is the object …?"), truth × answer;
// 4. "is there …?" questions by what they name (a shape, a colour, both), truth × answer: whether the
//    decoder matches the question's words against the image at all;
// 5. two-object scenes asked the colour of each object by its shape: whether the answer follows the
//    word that names the object, and how far the colour logits move when that word changes;
// 6. where the last prompt token's attention on the image goes: on a lone object, and with two objects
//    on the one the question names (by shape, colour or position) against the other.
#load "load.fsx"

open System
open System.IO
open TorchSharp
open CleanSight.Core.Inference
open CleanSight.Pipeline.World

let modelDir = Load.modelDirArg ()
let session = LlavaSession.Load modelDir
let size = session.Model.Config.Vision.ImageSize
let patch = session.Model.Config.Vision.PatchSize
let pre = BaseModel.preprocessor { TinyLlava.defaults with ImageSize = size }
let answer (scene: Scenes.Scene) question = BaseModel.greedyAnswer session.Model session.Tokenizer pre 8 (Scenes.render size scene) question

// 1. accuracy by kind × objects (the official VQA accuracy, as train-base reports it)
printfn "held-out accuracy by question kind and objects in the scene (600 clean-test questions):"
let scored =
    BaseModel.heldOutQuestions 600
    |> Array.map (fun (scene, qa) ->
        let truth = CleanSight.Pipeline.Metrics.VqaMetrics.normalize qa.Answer
        qa.Kind, scene.Objects.Length, CleanSight.Pipeline.Metrics.VqaMetrics.accuracy (Array.create 10 truth) (answer scene qa.Question))
for kind, rows in scored |> Array.groupBy (fun (k, _, _) -> k) do
    let cells =
        [ for n in 1 .. 3 ->
            let xs = rows |> Array.filter (fun (_, c, _) -> c = n)
            sprintf "%d object%s %3.0f %% (n=%2d)" n (if n = 1 then " " else "s") (100.0 * Array.averageBy (fun (_, _, a) -> a) xs) xs.Length ]
    printfn "  %-10s %s" (sprintf "%A" kind) (String.concat "   " cells)

// 2. linear probes on one-object scenes of a split no stage trains on
let probeSeed = 777
let lone = [| 0 .. 8000 |] |> Array.filter (fun i -> (Scenes.generate probeSeed i).Objects.Length = 1) |> Array.truncate 1200
let things = lone |> Array.map (fun i -> (Scenes.generate probeSeed i).Objects.Head)
let cover =
    lone |> Array.collect (fun i -> Scenes.patchOwners size patch (Scenes.generate probeSeed i) |> Array.map (fun o -> if o.IsSome then 1.0f else 0.0f))
let tokens = int64 ((size / patch) * (size / patch))
let mask = torch.tensor(cover).reshape(int64 lone.Length, tokens, 1L)
let pixels = torch.tensor(Array.concat (BaseModel.scenePixels { TinyLlava.defaults with ImageSize = size } probeSeed lone)).reshape(int64 lone.Length, 3L, int64 size, int64 size)
let vit, projected = (use _ = torch.no_grad () in session.Model.VisionFeatures pixels, session.Model.ImageFeatures pixels)
let objectMean (f: torch.Tensor) = (f * mask).sum(1L) / (mask.sum(1L) + torch.tensor 1e-6f) // every lone object covers ≥ 1 patch
let probe (features: torch.Tensor) (labels: int64[]) (classes: int) =
    torch.manual_seed 0L |> ignore
    let x = (features - features.mean([| 0L |], keepdim = true)) / (features.std([| 0L |], keepdim = true) + torch.tensor 1e-6f)
    let y = torch.tensor labels
    let fit = 900L
    let head = torch.nn.Linear(x.shape.[1], int64 classes)
    let optimizer = torch.optim.Adam(head.parameters (), 0.01)
    for _ in 1 .. 300 do
        optimizer.zero_grad ()
        (torch.nn.functional.cross_entropy(head.forward (x.narrow(0, 0L, fit)), y.narrow(0, 0L, fit))).backward ()
        optimizer.step () |> ignore
    use _ = torch.no_grad ()
    let rest = x.shape.[0] - fit
    (head.forward(x.narrow(0, fit, rest)).argmax(1L).eq(y.narrow(0, fit, rest))).to_type(torch.float32).mean().item<float32> ()
let shapes = things |> Array.map (fun t -> int64 (Scenes.shapeClass t.Shape - 1))
let colours = things |> Array.map (fun t -> int64 (Scenes.colourClass t.Colour - 1))
printfn "linear probes, one-object scenes (held-out share right): ViT features shape %.3f colour %.3f; projector output shape %.3f colour %.3f"
    (probe (objectMean vit) shapes 5) (probe (objectMean vit) colours 6) (probe (objectMean projected) shapes 5) (probe (objectMean projected) colours 6)

// 3. lone objects' colour answers
let confusion = Array2D.zeroCreate 6 7
for scene in lone |> Array.truncate 150 |> Array.map (Scenes.generate probeSeed) do
    let t = scene.Objects.Head
    let said = Array.IndexOf(Scenes.colourNames, (answer scene $"What color is the object {Scenes.positionPhrase t}?").Trim())
    let row, col = Scenes.colourClass t.Colour - 1, (if said < 0 then 6 else said)
    confusion.[row, col] <- confusion.[row, col] + 1
printfn "colour answers for 150 lone objects (rows: truth; columns: %s, other):" (String.Join(", ", Scenes.colourNames))
for r in 0 .. 5 do
    printfn "  %-7s %s" Scenes.colourNames.[r] (String.concat " " [ for c in 0 .. 6 -> sprintf "%3d" confusion.[r, c] ])

// 4. existence questions: the answer needs the question's words matched against every image token
let exists = BaseModel.heldOutQuestions 1500 |> Array.filter (fun (_, qa) -> qa.Kind = Scenes.Exists)
let named (q: string) =
    let colour = Scenes.colourNames |> Array.exists (fun c -> q.Contains(c + " "))
    let shape = Scenes.shapeNames |> Array.exists (fun s -> q.Contains s)
    match colour, shape with
    | true, true -> "colour and shape"
    | true, false -> "colour"
    | _ -> "shape"
let existsRows = exists |> Array.map (fun (scene, qa) -> named qa.Question, qa.Answer, (answer scene qa.Question).Trim())
printfn "\"is there ...?\" on %d held-out questions (right / asked; truth yes → said yes, truth no → said no):" exists.Length
for kind, rows in existsRows |> Array.groupBy (fun (k, _, _) -> k) do
    let count truth said = rows |> Array.filter (fun (_, t, a) -> t = truth && a = said) |> Array.length
    let right = rows |> Array.filter (fun (_, t, a) -> t = a) |> Array.length
    printfn "  %-16s %3d / %3d right (yes → yes %d, yes → no %d; no → no %d, no → yes %d)"
        kind right rows.Length (count "yes" "yes") (count "yes" "no") (count "no" "no") (count "no" "yes")

// 5. the reference word: "What color is the circle?" against "What color is the square?" on one image
let pairs =
    [| 0 .. 3000 |] |> Array.map (Scenes.generate probeSeed)
    |> Array.filter (fun s -> s.Objects.Length = 2 && s.Objects.[0].Shape <> s.Objects.[1].Shape && s.Objects.[0].Colour <> s.Objects.[1].Colour)
    |> Array.truncate 150
let colourIds = Scenes.colourNames |> Array.map (fun c -> session.Tokenizer.Encode(c, false).[0])
let colourQuestion (t: Scenes.Thing) = $"What color is the {Scenes.shapeName t.Shape}?"
/// The answer and its first token's colour logits, from one generation.
let answerAndLogits (scene: Scenes.Scene) question =
    let g = session.Generate(Scenes.render size scene, question, 8)
    (session.Decode g.OutputIds).Trim(), colourIds |> Array.map (fun i -> g.FirstTokenLogits.[i])
let swaps =
    pairs |> Array.map (fun s ->
        let a, b = s.Objects.[0], s.Objects.[1]
        let (sa, la), (sb, lb) = answerAndLogits s (colourQuestion a), answerAndLogits s (colourQuestion b)
        sa <> sb, (sa = Scenes.colourName a.Colour) && (sb = Scenes.colourName b.Colour),
        Array.map2 (fun x y -> abs (x - y)) la lb |> Array.max, Array.max la - Array.min la)
let median (xs: float32[]) = (Array.sort xs).[xs.Length / 2]
printfn "the object named by its shape, %d two-object scenes (two shapes, two colours): the two questions answered differently %d, both right %d;"
    pairs.Length (swaps |> Array.filter (fun (d, _, _, _) -> d) |> Array.length) (swaps |> Array.filter (fun (_, r, _, _) -> r) |> Array.length)
printfn "  colour logits move by %.3f (median largest change) when the word changes; they spread over %.3f (median)"
    (median (swaps |> Array.map (fun (_, _, m, _) -> m))) (median (swaps |> Array.map (fun (_, _, _, w) -> w)))

// 6. where the last prompt token looks: of each head's attention on the image, the share on the object the
//    question names and the share on the other object (two-object scenes as in 5), against a lone object's
let heads = session.Config.Text.NumAttentionHeads
let layerCount = session.Config.Text.NumHiddenLayers
/// Per layer and head, the mean share of the image attention on the named object and on the others, each
/// object of each scene named in turn (so that neither the first nor the last in reading order is favoured).
let objectShares (scenes: Scenes.Scene[]) (question: Scenes.Thing -> string) =
    let named, other = Array2D.zeroCreate<float> layerCount heads, Array2D.zeroCreate<float> layerCount heads
    let asked = scenes |> Array.sumBy (fun s -> s.Objects.Length) |> float
    for scene, t in [ for s in scenes do for t in s.Objects -> s, t ] do
        let owners = Scenes.patchOwners size patch scene
        let o = CleanSight.Pipeline.Analysis.AttentionStealing.observe session (Scenes.render size scene) (question t)
        for l in 0 .. layerCount - 1 do
            let row = o.Rows.[l]
            for h in 0 .. heads - 1 do
                let mutable image, onNamed, onOther = 0.0, 0.0, 0.0
                for j in 0 .. row.Keys - 1 do
                    let p = row.KeyPositions.[j]
                    if p >= o.First && p <= o.Last then
                        let a = float row.[h, j]
                        image <- image + a
                        match owners.[int (p - o.First)] with
                        | Some owner when owner = t -> onNamed <- onNamed + a
                        | Some _ -> onOther <- onOther + a
                        | None -> ()
                named.[l, h] <- named.[l, h] + onNamed / image / asked
                other.[l, h] <- other.[l, h] + onOther / image / asked
    named, other
let loneScenes = lone |> Array.truncate 100 |> Array.map (Scenes.generate probeSeed)
let coverShare (scenes: Scenes.Scene[]) =
    scenes |> Array.averageBy (fun s -> Scenes.patchOwners size patch s |> Array.filter (fun o -> o = Some s.Objects.Head) |> Array.length |> float) |> fun n -> n / float tokens // lone: Head is the object
let loneNamed, _ = objectShares loneScenes (fun t -> $"What color is the object {Scenes.positionPhrase t}?")
let twoScenes = pairs |> Array.truncate 100
let byShape = objectShares twoScenes (fun t -> $"What color is the {Scenes.shapeName t.Shape}?")
let byColour = objectShares twoScenes (fun t -> $"What shape is the {Scenes.colourName t.Colour} object?")
let byPosition = objectShares twoScenes (fun t -> $"What color is the object {Scenes.positionPhrase t}?")
printfn "where the last prompt token looks: per layer, the head that looks most at a lone object (it covers %.2f of the patches),"
    (coverShare loneScenes)
printfn "  its image attention on that object; on %d two-object scenes, each object named in turn, on the named object / the other one:" twoScenes.Length
for l in 0 .. layerCount - 1 do
    let h = [| 0 .. heads - 1 |] |> Array.maxBy (fun h -> loneNamed.[l, h])
    let pair (named: float[,], other: float[,]) = sprintf "%.2f / %.2f" named.[l, h] other.[l, h]
    printfn "  layer %d head %d  lone %.2f   by shape %s   by colour %s   by position %s" l h loneNamed.[l, h] (pair byShape) (pair byColour) (pair byPosition)
