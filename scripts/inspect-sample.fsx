// Inspect one sample: the prompt ids, the answer, and the last prompt token's visual-to-prompt
// attention ratio per layer and head.
//   dotnet fsi scripts/inspect-sample.fsx [MODEL_DIR] [IMAGE] [QUESTION]
#load "load.fsx"

open System.IO
open CleanSight.Core.Inference
open CleanSight.Core.Vision

let argv = fsi.CommandLineArgs |> Array.skip 1
let fixture = Path.Combine(__SOURCE_DIRECTORY__, "..", "tests", "fixtures", "tiny-llava-hf")
let modelDir = argv |> Array.tryItem 0 |> Option.defaultValue fixture
let imagePath = argv |> Array.tryItem 1 |> Option.defaultValue (Path.Combine(fixture, "probe_56.png"))
let question = argv |> Array.tryItem 2 |> Option.defaultValue "What is in the picture?"

let session = LlavaSession.Load modelDir
let image = RgbImage.Load imagePath
let ids = session.Prompt(question).InputIds |> Array.map int64
let struct (first, last) = AttentionRatio.ImageSpan(ids, int64 session.Config.ImageTokenIndex)
printfn "prompt: %d tokens, image tokens at %d..%d" ids.Length first last

let policy = RecordingPolicy [ 0 .. session.Config.Text.NumHiddenLayers - 1 ]
let generation = Generator.Greedy(session.Model, ids, session.Pixels image, 16, policy)
printfn "answer: %s" (session.Decode generation.OutputIds)
for row in policy.Rows do
    let ratios = AttentionRatio.VisualToPrompt(row, first, last)
    printfn "layer %2d  visual/prompt per head: %s" row.Layer (ratios |> Array.map (sprintf "%9.3g") |> String.concat " ")
