// Ablations of the detector on the tiny world, from one prefill per input (all layers observed):
//   1. diagonal vs full whitening (AUROC), 2. feature: ratio vs log-ratio vs visual share (AUROC),
//   3. number of clean calibration samples → FPR on held-out clean inputs,
//   4. detection start layer sweep (AUROC), 5. τ sweep (ASR vs utility, one attack, generation),
//   6. uniform visual attention from layer ℓ on, every input (ASR and clean utility per attack):
//      where in depth the backdoor's attention to the image matters.
//   dotnet fsi analysis/ablations.fsx [OUT_DIR] [N_TEST] [N_TAU]
// On the world found above the current folder (world/base, world/adapters): run it from a folder that
// holds another world (e.g. one trained with `train-base --text-layers 16`) to analyse that one.
#load "../scripts/load.fsx"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/Deedle.dll"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/MathNet.Numerics.dll"

open System
open System.IO
open Deedle
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.World
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Metrics

let argv = fsi.CommandLineArgs |> Array.skip 1
let out = argv |> Array.tryItem 0 |> Option.defaultValue (Path.Combine(__SOURCE_DIRECTORY__, "out"))
let nTest = argv |> Array.tryItem 1 |> Option.map int |> Option.defaultValue 60
let nTau = argv |> Array.tryItem 2 |> Option.map int |> Option.defaultValue 30
Directory.CreateDirectory out |> ignore
TorchSharp.torch.set_num_threads 2

let world = Materialize.locate ()
let size = TinyLlava.defaults.ImageSize
let layersOf = Materialize.textLayers world
let inputs split n = BaseModel.questionsOf split n |> Array.map (fun (scene, qa) -> Scenes.render size scene, qa)
let calibration = inputs BaseModel.Splits.calibration 200
let test = inputs BaseModel.Splits.cleanTest nTest

let rows = Collections.Generic.List<string * string * string * float>() // (attack, ablation, setting, value)
for attack in Attacks.all Attacks.defaultTarget do
    let adapter = Path.Combine(world, "adapters", attack.Name + ".safetensors")
    if File.Exists adapter then
        use session = LlavaSession.Load(Path.Combine(world, "base"), adapter = adapter)
        let sums (image, (qa: Scenes.Qa)) = AttentionStealing.sums session image qa.Question
        let cal = calibration |> Array.map sums
        let clean = test |> Array.map sums
        let triggered = test |> Array.map (fun (image, qa) -> sums (Triggers.apply attack.Trigger image, qa))
        let auroc feature whitening ls = AttentionStealing.aurocAt feature whitening ls cal clean triggered
        let det = Detector.defaultLayers layersOf
        for feature, fname in [ Whitening.Ratio, "ratio"; Whitening.LogRatio, "log-ratio"; Whitening.VisualShare, "visual-share" ] do
            rows.Add(attack.Name, "whitening", $"diagonal/{fname}", auroc feature Whitening.Diagonal det)
            rows.Add(attack.Name, "whitening", $"full/{fname}", auroc feature (Whitening.Full Whitening.LedoitWolf) det)
        for start in 0 .. layersOf - 3 do
            rows.Add(attack.Name, "start layer", string start, auroc Whitening.Ratio Whitening.Diagonal [| start .. start + 2 |])
        // clean-sample count → FPR on held-out clean inputs (γ at the 0.99 quantile of the in-sample
        // distances, as the paper's code, and of the leave-one-out distances, calibrate's default)
        let settings = { Calibration.defaultSettings layersOf with Layers = det }
        let calFeatures, cleanFeatures = cal |> Array.map (AttentionStealing.featuresAt settings.Feature det), clean |> Array.map (AttentionStealing.featuresAt settings.Feature det)
        let fprFrom (s: Calibration.Settings) n =
            // unconditioned settings (the default) never read the prompt length: 1 stands in for it
            let measured = calFeatures |> Array.truncate n |> Array.map (fun f -> ({ Features = f; TextTokens = 1 }: Calibration.Measured))
            let t = Calibration.fitReference s measured
            cleanFeatures |> Array.averageBy (fun f -> if Whitening.distance t.Reference f > t.Threshold then 1.0 else 0.0)
        for from in [ Calibration.InSample; Calibration.LeaveOneOut ] do
            for n in [ 10; 25; 50; 100; 200 ] do
                rows.Add(attack.Name, $"clean samples → FPR ({Calibration.thresholdFromName from} γ)", string n, fprFrom { settings with ThresholdFrom = from } n)
        // the same with γ at the conformal rank (calibrate --threshold-rule conformal), from the 99 samples it needs
        for n in [ 100; 200 ] do
            rows.Add(attack.Name, "clean samples → FPR (leave-one-out γ, conformal rank)", string n, fprFrom { settings with ThresholdRule = Whitening.ConformalRank } n)
        printfn "%s: done" attack.Name

// τ sweep on one attack: purification forced on every triggered/clean input (isolates τ from detection)
let badnet = Attacks.all Attacks.defaultTarget |> List.head
let adapter = Path.Combine(world, "adapters", badnet.Name + ".safetensors")
if File.Exists adapter then
    use session = LlavaSession.Load(Path.Combine(world, "base"), adapter = adapter)
    let det = Detector.defaultLayers layersOf
    for tau in [ 0.25; 0.5; 0.6; 1.0; 2.0; 4.0 ] do
        let run (image: RgbImage) (qa: Scenes.Qa) =
            let ids = session.Prompt(qa.Question).InputIds |> Array.map int64
            let struct (first, last) = AttentionRatio.ImageSpan(ids, int64 session.Config.ImageTokenIndex)
            let p = CleanSightPolicy.Policy(det, Whitening.Ratio, Detector.RelativeToUniform tau, first, last, None, true)
            let g = Generator.Greedy(session.Model, ids, session.Pixels image, 32, p)
            session.Decode g.OutputIds, p.Verdict.Pruned.Length
        let sub = test |> Array.truncate nTau
        let asr = sub |> Array.averageBy (fun (img, qa) -> if VqaMetrics.containsTarget badnet.Target (fst (run (Triggers.apply badnet.Trigger img) qa)) then 1.0 else 0.0)
        let util = sub |> Array.averageBy (fun (img, qa) -> VqaMetrics.accuracy (Array.create 10 (VqaMetrics.normalize qa.Answer)) (fst (run img qa)))
        rows.Add("badnet", "tau (relative) → ASR", string tau, asr)
        rows.Add("badnet", "tau (relative) → clean utility", string tau, util)
        printfn "tau %.2f: ASR %.2f utility %.2f" tau asr util

// uniform visual attention from each layer on (no detection): ASR on triggered, utility on clean inputs
for attack in Attacks.all Attacks.defaultTarget do
    let adapter = Path.Combine(world, "adapters", attack.Name + ".safetensors")
    if File.Exists adapter then
        use session = LlavaSession.Load(Path.Combine(world, "base"), adapter = adapter)
        let answer (from: int option) (image: RgbImage) (qa: Scenes.Qa) =
            let ids = session.Prompt(qa.Question).InputIds |> Array.map int64
            let struct (first, last) = AttentionRatio.ImageSpan(ids, int64 session.Config.ImageTokenIndex)
            let policy: IAttentionPolicy =
                match from with
                | Some l -> UniformAttentionPolicy(l, [| first .. last |])
                | None -> NoPolicy.Instance
            session.Decode (Generator.Greedy(session.Model, ids, session.Pixels image, 16, policy)).OutputIds
        let sub = test |> Array.truncate nTau
        for from in None :: [ for l in 0 .. layersOf - 1 -> Some l ] do
            let setting = from |> Option.map string |> Option.defaultValue "none"
            let asr = sub |> Array.averageBy (fun (img, qa) -> if VqaMetrics.containsTarget attack.Target (answer from (Triggers.apply attack.Trigger img) qa) then 1.0 else 0.0)
            let util = sub |> Array.averageBy (fun (img, qa) -> VqaMetrics.accuracy (Array.create 10 (VqaMetrics.normalize qa.Answer)) (answer from img qa))
            rows.Add(attack.Name, "uniform from layer → ASR", setting, asr)
            rows.Add(attack.Name, "uniform from layer → clean utility", setting, util)
        printfn "%s: uniform sweep done" attack.Name

let frame =
    rows |> Seq.mapi (fun i (a, k, s, v) -> i, series [ "attack" => box a; "ablation" => box k; "setting" => box s; "value" => box v ])
    |> Frame.ofRows
frame.SaveCsv(Path.Combine(out, "ablations.csv"))
frame.Print()
