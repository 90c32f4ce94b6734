/// `cleansight demo`: the whole story on the embedded tiny world — data, calibration, every
/// attack × defense, attention stealing by layer — as a self-contained report with its frames.
module CleanSight.Pipeline.Demo

open System
open System.Diagnostics
open System.IO
open Deedle
open Plotly.NET
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.World

type Settings = { Out: string; Calibration: int; Test: int; AttentionInputs: int; Seed: int }

let defaults out = { Out = out; Calibration = 200; Test = 100; AttentionInputs = 20; Seed = 0 }

/// One attack's results.
type AttackResult =
    { Attack: Materialize.AttackEntry
      Calibration: Calibration.Calibration
      Records: Evaluation.Record[]
      Metrics: (string * Summary.DefenseMetrics)[]
      Attention: AttentionStealing.Row list }

let private gitCommit (start: string) =
    let rec up (d: DirectoryInfo) =
        if isNull d then None
        elif Directory.Exists(Path.Combine(d.FullName, ".git")) then Some(Path.Combine(d.FullName, ".git"))
        else up d.Parent
    match up (DirectoryInfo start) with
    | None -> "unknown"
    | Some git ->
        let head = File.ReadAllText(Path.Combine(git, "HEAD")).Trim()
        if head.StartsWith "ref: " then
            let refPath = Path.Combine(git, head.Substring 5)
            if File.Exists refPath then File.ReadAllText(refPath).Trim() else head
        else head

let private runAttack (s: Settings) (log: string -> unit) (manifest: Materialize.Manifest) (attack: Materialize.AttackEntry) =
    use session = LlavaSession.Load(manifest.model, adapter = attack.adapter)
    let settings = Calibration.defaultSettings session.Config.Text.NumHiddenLayers
    let calItems = Dataset.read manifest.calibration |> Array.truncate s.Calibration
    let samples = calItems |> Array.map (fun it -> RgbImage.Load(Dataset.imagePath manifest.calibration it), it.Question)
    let calibration = Calibration.calibrate session { settings with Seed = s.Seed } samples (fun _ _ -> ())
    Calibration.save (Path.Combine(s.Out, "calibration", attack.name + ".json")) calibration
    log $"{attack.name}: calibrated on {calibration.Samples} clean samples, threshold {calibration.Threshold:F3}"
    let evalSettings: Evaluation.Settings =
        { Defenses = Defenses.all; Target = attack.target; MaxNewTokens = 32; Limit = Some s.Test; Seed = s.Seed }
    let folder = Path.Combine(s.Out, "eval", attack.name)
    let records = Evaluation.run session calibration evalSettings manifest.clean_test attack.poisoned_test (Path.Combine(folder, "samples.csv")) (fun _ _ -> ())
    let metrics = Summary.ofRecords records
    Summary.write (Path.Combine(folder, "metrics.json")) metrics
    let trigger = (Attacks.all attack.target |> List.find (fun a -> a.Name = attack.name)).Trigger
    let inputs =
        Dataset.read manifest.clean_test |> Array.truncate s.AttentionInputs
        |> Array.map (fun it -> RgbImage.Load(Dataset.imagePath manifest.clean_test it), it.Question)
    let measure f = inputs |> Array.map (fun (image, q) -> AttentionStealing.sums session (f image) q)
    let attention =
        AttentionStealing.summarise attack.name "clean" (measure id)
        @ AttentionStealing.summarise attack.name "triggered" (measure (Triggers.apply trigger))
    let cs = metrics |> Array.find (fun (n, _) -> n = "cleansight") |> snd
    let none = metrics |> Array.find (fun (n, _) -> n = "none") |> snd
    let asrNone, asrCs, auroc = 100.0 * defaultArg none.Asr nan, 100.0 * defaultArg cs.Asr nan, defaultArg cs.Auroc nan
    log $"{attack.name}: ASR without defense {asrNone:F0}%%, with CleanSight {asrCs:F0}%%, AUROC {auroc:F3}"
    { Attack = attack; Calibration = calibration; Records = records; Metrics = metrics; Attention = attention }

let private pct (x: float option) = match x with Some v -> $"{100.0 * v:F1}" | None -> "–"

/// The paper's Table 1 shape: one row per (attack, defense).
let tableRows (results: AttackResult list) =
    [ for r in results do
          for name, m in r.Metrics ->
              [ r.Attack.name; name; pct m.Asr; pct m.CleanAsr; pct m.Clean.Utility; pct m.Poisoned.Utility
                (match m.Auroc with Some a -> $"{a:F3}" | None -> "–"); pct m.Tpr; pct m.Fpr; pct m.PrunedFraction
                (match m.MsPerSample with Some v -> $"{v:F1}" | None -> "–") ] ]

let tableHeader =
    [ "attack"; "defense"; "ASR %"; "clean ASR %"; "clean utility %"; "triggered utility %"; "AUROC"; "TPR %"; "FPR %"; "pruned %"; "ms/sample" ]

let private asrChart (results: AttackResult list) =
    let defenses = results.Head.Metrics |> Array.map fst
    [ for d in defenses ->
          Chart.Column(values = (results |> List.map (fun r -> 100.0 * defaultArg (r.Metrics |> Array.find (fst >> (=) d) |> snd).Asr nan)),
                       Keys = (results |> List.map (fun r -> r.Attack.name)), Name = d) ]
    |> Chart.combine
    |> Chart.withTitle "Attack success rate (%) per defense"
    |> Chart.withYAxisStyle (TitleText = "ASR %")

let private utilityChart (results: AttackResult list) =
    let defenses = results.Head.Metrics |> Array.map fst
    [ for d in defenses ->
          Chart.Column(values = (results |> List.map (fun r -> 100.0 * defaultArg (r.Metrics |> Array.find (fst >> (=) d) |> snd).Clean.Utility nan)),
                       Keys = (results |> List.map (fun r -> r.Attack.name)), Name = d) ]
    |> Chart.combine
    |> Chart.withTitle "Clean utility (%, official VQA accuracy) per defense"
    |> Chart.withYAxisStyle (TitleText = "utility %")

let private distanceChart (r: AttackResult) =
    let d split = r.Records |> Array.filter (fun x -> x.Defense = "cleansight" && x.Split = split) |> Array.choose (fun x -> x.Distance)
    [ Chart.Histogram(d "clean", Name = "clean", Opacity = 0.6)
      Chart.Histogram(d "poisoned", Name = "triggered", Opacity = 0.6)
      Chart.Line([ r.Calibration.Threshold; r.Calibration.Threshold ], [ 0.0; float (d "clean").Length ], Name = "threshold γ") ]
    |> Chart.combine
    |> Chart.withTitle $"{r.Attack.name}: distance to the clean reference"
    |> Chart.withXAxisStyle (TitleText = "distance d")

let run (s: Settings) (log: string -> unit) =
    let total = Stopwatch.StartNew()
    let durations = Collections.Generic.List<string * float>()
    let timed name f =
        let c = Stopwatch.StartNew()
        let x = f ()
        durations.Add(name, c.Elapsed.TotalSeconds)
        x
    let world = Materialize.locate ()
    let manifest = timed "data" (fun () -> Materialize.run world (Path.Combine(s.Out, "data")) s.Calibration s.Test log)
    let results =
        [ for attack in manifest.attacks do
              if File.Exists attack.adapter then yield timed attack.name (fun () -> runAttack s log manifest attack)
              else log $"{attack.name}: no adapter at {attack.adapter}; skipped (build target Attack-{attack.name} makes it)" ]
    if results.IsEmpty then raise (CleanSight.Core.InputError(Path.Combine(world, "adapters"), "no attack adapters found"))
    // frames
    let frames = Path.Combine(s.Out, "frames")
    Directory.CreateDirectory frames |> ignore
    let attention = results |> List.collect (fun r -> r.Attention)
    (AttentionStealing.toFrame attention).SaveCsv(Path.Combine(frames, "attention-by-layer.csv"))
    let table =
        tableRows results
        |> List.mapi (fun i row -> i, Series(tableHeader, row |> List.map box))
        |> Frame.ofRows
    table.SaveCsv(Path.Combine(frames, "table.csv"))
    let layers = results.Head.Calibration.Settings.Layers
    Report.write (Path.Combine(s.Out, "report.html")) "CleanSight on the tiny backdoored world"
        [ yield Report.Text "A tiny LLaVA (CLIP-style ViT, 2-layer projector, 8-layer LLaMA decoder) trained here; six projector-only backdoors; CleanSight against the paper's baselines. Thresholds come from clean data only."
          yield Report.Heading "1. Attention stealing by layer"
          yield Report.Figure(AttentionStealing.chart attention layers)
          yield Report.Heading "2. Attack success and utility per defense"
          yield Report.Figure(asrChart results)
          yield Report.Figure(utilityChart results)
          yield Report.Table(tableHeader, tableRows results)
          yield Report.Heading "3. Detection: distances of clean and triggered inputs"
          yield! results |> List.map (distanceChart >> Report.Figure) ]
    durations.Add("total", total.Elapsed.TotalSeconds)
    Files.writeJson (Path.Combine(s.Out, "manifest.json"))
        (dict [ "seed", box s.Seed
                "git_commit", box (gitCommit Environment.CurrentDirectory)
                "torchsharp", box (typeof<TorchSharp.torch>.Assembly.GetName().Version.ToString())
                "cleansight", box (typeof<Settings>.Assembly.GetName().Version.ToString())
                "calibration_samples", box s.Calibration
                "test_samples", box s.Test
                "durations_s", box (dict (durations |> Seq.map (fun (k, v) -> k, Math.Round(v, 1)))) ])
    results
