// The held-out checks `train-base` and `attack` end with, for any model (and adapter): official VQA
// accuracy on 300 clean-test questions, overall and per kind, and caption CIDEr-D per caption request
// on 100 clean-test images.
//   dotnet fsi scripts/held-out.fsx [MODEL_DIR=world/base] [ADAPTER]
#load "load.fsx"

open System.IO
open CleanSight.Core.Inference
open CleanSight.Pipeline.World

let argv = fsi.CommandLineArgs |> Array.skip 1
let modelDir = argv |> Array.tryItem 0 |> Option.defaultValue (Path.Combine(__SOURCE_DIRECTORY__, "..", "world", "base"))
let session =
    match argv |> Array.tryItem 1 with
    | Some adapter -> LlavaSession.Load(modelDir, adapter = adapter)
    | None -> LlavaSession.Load modelDir
let overall, byKind = BaseModel.heldOutAccuracy session.Model session.Tokenizer 300
printfn "VQA accuracy %.1f%% (%s)" (100.0 * overall) (byKind |> Array.map (fun (k, a) -> sprintf "%A %.0f%%" k (100.0 * a)) |> String.concat ", ")
for prompt, cider in BaseModel.heldOutCaptions session.Model session.Tokenizer 100 do
    printfn "caption CIDEr-D %.2f  \"%s\"" cider prompt
