// Where should CleanSight look, chosen without attacked data? On the tiny world:
//   1. clean fusion: per layer, how far the next-token distribution of the last prompt token moves
//      (KL) when the image tokens are excluded from that layer on, and each layer's share of it —
//      for the base model and every backdoored one (the defender holds the backdoored one);
//   2. the method notes' sweep: detection AUROC per layer (and per 3-layer block) of clean inputs
//      against the same inputs with a made-up trigger (seeded noise patch, noise blend) — and, for
//      reporting only, against the attack's real trigger.
//   dotnet fsi analysis/layer-selection.fsx [OUT_DIR] [N_FUSION] [N_TEST]
// Writes OUT_DIR/layer-selection-fusion.csv, -sweep.csv and layer-selection.html.
// On the world found above the current folder (world/base, world/adapters), of any decoder depth.
#load "../scripts/load.fsx"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/Deedle.dll"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/MathNet.Numerics.dll"

open System.IO
open CleanSight.Core.Inference
open CleanSight.Pipeline.World
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Defense

let argv = fsi.CommandLineArgs |> Array.skip 1
let out = argv |> Array.tryItem 0 |> Option.defaultValue (Path.Combine(__SOURCE_DIRECTORY__, "out"))
let nFusion = argv |> Array.tryItem 1 |> Option.map int |> Option.defaultValue 40
let nTest = argv |> Array.tryItem 2 |> Option.map int |> Option.defaultValue 60
TorchSharp.torch.set_num_threads 2

let world = Materialize.locate ()
let size = TinyLlava.defaults.ImageSize
let layers = Materialize.textLayers world
let inputs split n = BaseModel.questionsOf split n |> Array.map (fun (scene, qa) -> Scenes.render size scene, qa.Question)
// 200 clean calibration inputs: the reference of the real-trigger AUROC; the first 140 are the
// reference of the synthetic sweep, whose clean and made-up-trigger inputs are the last 60.
let calibration = inputs BaseModel.Splits.calibration 200
let heldOut = calibration.[140 ..]
let test = inputs BaseModel.Splits.cleanTest nTest
let blocks = [ for l in 0 .. layers - 1 -> [| l |] ] @ [ for l in 0 .. layers - 3 -> [| l .. l + 2 |] ]

let models =
    ("base", None)
    :: [ for attack in Attacks.all Attacks.defaultTarget do
             let adapter = Path.Combine(world, "adapters", attack.Name + ".safetensors")
             if File.Exists adapter then yield attack.Name, Some(attack, adapter) ]

let fusion, sweep =
    let results =
        [ for name, attack in models ->
              use session = LlavaSession.Load(Path.Combine(world, "base"), adapter = (attack |> Option.map snd |> Option.toObj))
              let fusion = LayerSelection.fusionRows name (calibration |> Array.truncate nFusion |> Array.map (fun (image, q) -> Fusion.knockout session image q))
              let sweep =
                  match attack with
                  | None -> []
                  | Some (attack, _) ->
                      let sums (image, q) = AttentionStealing.sums session image q
                      let auroc reference clean triggered ls = AttentionStealing.aurocAt Whitening.Ratio Whitening.Diagonal ls reference clean triggered
                      let cal = calibration |> Array.map sums
                      let fit, held = cal.[.. 139], cal.[140 ..]
                      let clean = test |> Array.map sums
                      let real = test |> Array.map (fun (image, q) -> sums (Triggers.apply attack.Trigger image, q))
                      let made kind = heldOut |> Array.mapi (fun i (image, q) -> sums (LayerSelection.synthetic kind 0 i image, q))
                      let patch, blend = made LayerSelection.NoisePatch, made LayerSelection.NoiseBlend
                      [ for ls in blocks do
                            yield ({ Attack = attack.Name; Trigger = "real"; Layers = ls; Auroc = auroc cal clean real ls }: LayerSelection.SweepRow)
                            yield { Attack = attack.Name; Trigger = LayerSelection.syntheticName LayerSelection.NoisePatch; Layers = ls; Auroc = auroc fit held patch ls }
                            yield { Attack = attack.Name; Trigger = LayerSelection.syntheticName LayerSelection.NoiseBlend; Layers = ls; Auroc = auroc fit held blend ls } ]
              let shares = fusion |> List.map (fun r -> sprintf "%.3f" r.LayerShare) |> String.concat " "
              printfn "%s: clean fusion share by layer %s" name shares
              fusion, sweep ]
    results |> List.collect fst, results |> List.collect snd

LayerSelection.save out fusion sweep (Detector.defaultLayers layers)
for attack in sweep |> List.map (fun r -> r.Attack) |> List.distinct do
    let line trigger =
        sweep |> List.filter (fun r -> r.Attack = attack && r.Trigger = trigger && r.Layers.Length = 1)
        |> List.map (fun r -> sprintf "%.2f" r.Auroc) |> String.concat " "
    printfn "%s AUROC by layer: real %s | noise patch %s | noise blend %s" attack (line "real") (line "noise-patch") (line "noise-blend")
