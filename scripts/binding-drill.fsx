// Can the committed base learn to find the object a question names? Continues its joint stage (projector +
// decoder, ViT frozen) and follows the swap test of base-probe.fsx part 5 (150 two-object scenes, "What color
// is the circle?" against "… the square?": answered differently, both right) every 500 steps.
//   dotnet fsi scripts/binding-drill.fsx [drill|mixed] [--steps N] [--lr PEAK] [--text-every N] [--from MODEL_DIR] [--out DIR]
//   drill (default): only colour and shape questions about scenes of two or three objects (3000 steps, 1.5e-3);
//          with --text-every N every N-th step is general text instead (as the base's stage (4) keeps it)
//   mixed: the base's own stage-(4) data, general text every 6th step (or --text-every N), plus every colour, shape, position
//          and size question about its scenes of two or three objects once more (1500 steps, 1.5e-3)
// --from: the checkpoint to continue (default world/base; e.g. a drilled one, to mix after the drill).
// Then the held-out VQA accuracy (300 questions); --out receives the continued checkpoint (probe it with
// `dotnet fsi scripts/base-probe.fsx DIR`). ~0.7 s a step here.
// ci-args: drill --steps 20 --text-every 6
// ci-args: mixed --steps 12
#load "load.fsx"

open System
open System.IO
open TorchSharp
open CleanSight.Core.Inference
open CleanSight.Pipeline.World

let args = fsi.CommandLineArgs |> Array.skip 1 |> List.ofArray
let mixed, options =
    match args with
    | "mixed" :: rest -> true, rest
    | "drill" :: rest -> false, rest
    | rest -> false, rest
let rec parse (acc: Map<string, string>) =
    function
    | [] -> acc
    | (("--steps" | "--lr" | "--text-every" | "--from" | "--out") as flag) :: value :: rest -> parse (acc.Add(flag, value)) rest
    | other :: _ -> failwithf "binding-drill.fsx: '%s' is not understood (drill|mixed, --steps N, --lr PEAK, --text-every N, --from DIR, --out DIR)" other
let option = parse Map.empty options
let steps = option.TryFind "--steps" |> Option.map int |> Option.defaultValue (if mixed then 1500 else 3000)
let peakLr = option.TryFind "--lr" |> Option.map (fun s -> Double.Parse(s, Globalization.CultureInfo.InvariantCulture)) |> Option.defaultValue 1.5e-3
let outDir = option.TryFind "--out"

let baseDir = Path.Combine(__SOURCE_DIRECTORY__, "..", "world", "base")
let fromDir = option.TryFind "--from" |> Option.defaultValue baseDir
let session = LlavaSession.Load fromDir
let model, tok, cfg = session.Model, session.Tokenizer, session.Model.Config
let recipe = BaseModel.defaults
let sizes = recipe.Sizes
let pre = BaseModel.preprocessor sizes

// the swap test of base-probe.fsx part 5
let probeSeed = 777
let pairs =
    [| 0 .. 3000 |] |> Array.map (Scenes.generate probeSeed)
    |> Array.filter (fun s -> s.Objects.Length = 2 && s.Objects.[0].Shape <> s.Objects.[1].Shape && s.Objects.[0].Colour <> s.Objects.[1].Colour)
    |> Array.truncate 150
    |> Array.map (fun s -> s, Scenes.render sizes.ImageSize s) // rendered once, asked every 500 steps
let swapTest (label: string) =
    use _ = torch.no_grad ()
    let answers =
        pairs |> Array.map (fun (s, image) ->
            let say (t: Scenes.Thing) = (BaseModel.greedyAnswer model tok pre 8 image $"What color is the {Scenes.shapeName t.Shape}?").Trim()
            let a, b = s.Objects.[0], s.Objects.[1]
            let sa, sb = say a, say b
            sa <> sb, sa = Scenes.colourName a.Colour && sb = Scenes.colourName b.Colour)
    printfn "%s swap test: answered differently %d / %d, both right %d" label
        (answers |> Array.filter fst |> Array.length) pairs.Length (answers |> Array.filter snd |> Array.length)
swapTest "before:"

let pixels = BaseModel.scenePixels sizes BaseModel.Splits.baseTrain (Array.init recipe.TrainScenes id)
/// Every question of `kinds` about the training scenes of two or three objects, as training examples.
let referenceQuestions (kinds: Scenes.Kind list) =
    [| for i in 0 .. recipe.TrainScenes - 1 do
         let scene = Scenes.generate BaseModel.Splits.baseTrain i
         if scene.Objects.Length >= 2 then
             for qa in Scenes.vqaItems BaseModel.Splits.baseTrain i scene do
                 if List.contains qa.Kind kinds then yield BaseModel.questionExample tok cfg pixels.[i] qa.Question qa.Answer |]
let collate = Training.collate (TinyLlava.padTokenId sizes) sizes.ImageSize torch.CPU
let warmup = if mixed then 50 else 20
let schedule: Training.Schedule = { Steps = steps; PeakLr = peakLr; WarmupSteps = warmup; WeightDecay = 0.01; BatchSize = 48; Seed = 5L }
// every n-th step general text (0 = none): mixed keeps the base's own rate unless told otherwise
let textEvery = option.TryFind "--text-every" |> Option.map int |> Option.defaultValue (if mixed then recipe.TextEvery else 0)
/// Batches of `examples`, every `textEvery`-th step one of the base's general sentences instead.
let withText (examples: Training.Example[]) =
    let nextExample = BaseModel.batches 5 48 examples
    if textEvery > 0 then
        let text = GeneralText.corpusOf recipe.GeneralText (int recipe.Seed) recipe.TextSentences |> Array.map (fun s -> Training.text (tok.Encode(s, true)))
        printfn "every %d-th step one of %d general sentences" textEvery text.Length
        let nextText = BaseModel.batches 6 48 text
        fun step -> collate (if step % textEvery = textEvery - 1 then nextText step else nextExample step)
    else nextExample >> collate
let batchAt =
    if mixed then
        let extra = referenceQuestions [ Scenes.ColourOf; Scenes.ShapeOf; Scenes.PositionOf; Scenes.SizeOf ]
        let images = Array.append (BaseModel.imageExamples tok cfg recipe pixels) extra
        printfn "mixed: %d image examples (%d of them the extra reference questions)" images.Length extra.Length
        withText images
    else
        let examples = referenceQuestions [ Scenes.ColourOf; Scenes.ShapeOf ]
        printfn "drill: %d colour and shape questions about scenes of two or three objects" examples.Length
        withText examples
let parameters = Training.trainableParameters model (fun n -> not (n.StartsWith "vision_tower."))
Training.train schedule parameters batchAt (Training.lmLoss model) (fun step loss _ ->
    if step % 100 = 0 then printfn "step %5d  loss %.4f" step loss
    if step % 500 = 499 || step = steps - 1 then swapTest $"step {step + 1}:") |> ignore
for p in model.parameters () do p.requires_grad <- false

let accuracy, byKind = BaseModel.heldOutAccuracy model tok 300
printfn "held-out VQA %.1f %% (%s)" (100.0 * accuracy) (String.Join(", ", byKind |> Array.map (fun (k, a) -> sprintf "%A %.0f" k (100.0 * a))))
match outDir with
| Some dir ->
    TinyLlava.save dir fromDir sizes [] model
    printfn "wrote %s" dir
| None -> ()
