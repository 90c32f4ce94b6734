// Attention stealing by layer on the tiny world: for each attack, the last prompt token's
// visual/prompt attention ratio per layer, clean vs triggered inputs (same images); and where that
// token's attention goes per layer (BOS, text before the image, image, text after it), for the base
// model and each backdoored one.
//   dotnet fsi analysis/attention-stealing.fsx [OUT_DIR] [N_INPUTS]
// Writes OUT_DIR/attention-stealing.csv (the frame), OUT_DIR/attention-stealing.html (the chart) and
// OUT_DIR/attention-partition.csv.
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

let observeAll (session: LlavaSession) f = inputs |> Array.map (fun (image, q) -> AttentionStealing.observe session (f image) q)
let meanPartitionOf (observed: AttentionStealing.Observed[]) = observed |> Array.map AttentionStealing.partitionOf |> AttentionStealing.meanPartition

let basePartition =
    use session = LlavaSession.Load(Path.Combine(world, "base"))
    "base", "clean", meanPartitionOf (observeAll session id)

let measured =
    [ for attack in Attacks.all Attacks.defaultTarget do
          let adapter = Path.Combine(world, "adapters", attack.Name + ".safetensors")
          if File.Exists adapter then
              use session = LlavaSession.Load(Path.Combine(world, "base"), adapter = adapter)
              let clean, triggered = observeAll session id, observeAll session (Triggers.apply attack.Trigger)
              printfn "%s: measured %d inputs" attack.Name n
              yield attack.Name, clean, triggered ]

let rows =
    [ for name, clean, triggered in measured do
          yield! AttentionStealing.summarise name "clean" (clean |> Array.map AttentionStealing.sumsOf)
          yield! AttentionStealing.summarise name "triggered" (triggered |> Array.map AttentionStealing.sumsOf) ]

AttentionStealing.save out rows (Detector.defaultLayers (Materialize.textLayers world))
(AttentionStealing.toFrame rows).Print()

let partition =
    basePartition :: [ for name, clean, triggered in measured do
                           yield name, "clean", meanPartitionOf clean
                           yield name, "triggered", meanPartitionOf triggered ]
    |> AttentionStealing.partitionFrame
partition |> CleanSight.Pipeline.Files.saveCsv (Path.Combine(out, "attention-partition.csv"))
partition.Print()
