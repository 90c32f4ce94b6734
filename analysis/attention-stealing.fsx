// Attention stealing by layer on the tiny world: for each attack, the last prompt token's
// visual/prompt attention ratio per layer, clean vs triggered inputs (same images).
//   dotnet fsi analysis/attention-stealing.fsx [OUT_DIR] [N_INPUTS]
// Writes OUT_DIR/attention-stealing.csv (the frame) and OUT_DIR/attention-stealing.html (the chart).
// On the world found above the current folder (world/base, world/adapters), of any decoder depth.
#load "../scripts/load.fsx"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/Deedle.dll"

open System.IO
open Deedle
open CleanSight.Core.Inference
open CleanSight.Pipeline.World
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Defense

let argv = fsi.CommandLineArgs |> Array.skip 1
let out = argv |> Array.tryItem 0 |> Option.defaultValue (Path.Combine(__SOURCE_DIRECTORY__, "out"))
let n = argv |> Array.tryItem 1 |> Option.map int |> Option.defaultValue 40
Directory.CreateDirectory out |> ignore
TorchSharp.torch.set_num_threads 2

let world = Materialize.locate ()
let size = TinyLlava.defaults.ImageSize
let inputs =
    [| for i in 0 .. n - 1 do
           let scene = Scenes.generate BaseModel.Splits.cleanTest i
           let qa = Scenes.vqaItems BaseModel.Splits.cleanTest i scene |> List.head
           Scenes.render size scene, qa.Question |]

let rows =
    [ for attack in Attacks.all Attacks.defaultTarget do
          let adapter = Path.Combine(world, "adapters", attack.Name + ".safetensors")
          if File.Exists adapter then
              use session = LlavaSession.Load(Path.Combine(world, "base"), adapter = adapter)
              let measure f = inputs |> Array.map (fun (image, q) -> AttentionStealing.sums session (f image) q)
              yield! AttentionStealing.summarise attack.Name "clean" (measure id)
              yield! AttentionStealing.summarise attack.Name "triggered" (measure (Triggers.apply attack.Trigger))
              printfn "%s: measured %d inputs" attack.Name n ]

AttentionStealing.save out rows (Detector.defaultLayers (Materialize.textLayers world))
(AttentionStealing.toFrame rows).Print()
