/// `cleansight demo`: the whole story on the embedded tiny world — data, calibration, every
/// attack × defense, attention stealing by layer and head, per-sample views, detection curves and
/// two cheap ablations — as a self-contained report with its frames.
module CleanSight.Pipeline.Demo

open System
open System.Diagnostics
open System.Globalization
open System.IO
open System.Security.Cryptography
open System.Text
open System.Text.Json
open Deedle
open Plotly.NET
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.World

type Settings =
    { Out: string
      /// clean calibration samples per attack
      Calibration: int
      /// clean and triggered test samples per attack
      Test: int
      /// test inputs (each clean and triggered) observed at every layer: charts 1–3
      AttentionInputs: int
      /// τ ablation: τ·T of forced purification (the calibrated τ is reused from prune-all)
      TauGrid: float list
      /// τ ablation: test inputs per split
      AblationInputs: int
      /// clean-sample-count ablation: reference sizes, and seeded draws per size
      SampleSizes: int list
      SampleRepeats: int
      /// triggered inputs shown up close per attack (chart 3)
      SampleViews: int
      /// CleanSight's detection layers (purification and the uniform baseline from the last);
      /// None: the paper's relative depth for the world's decoder (`Detector.defaultLayers`)
      Layers: int[] option
      /// each model's detection layers by the clean-fusion rule (`Calibration.fusionLayers`, `--layers
      /// fusion`) instead of `Layers`
      LayersByFusion: bool
      /// one clean reference for every task (`Calibration.Pooled`); false: one per task
      PooledReference: bool
      /// each clean reference conditioned on the prompt's length (`Calibration.OnPromptLength`,
      /// `--conditioning prompt-length`); false: unconditioned, as the paper
      PromptLengthReference: bool
      /// CleanSight's feature and whitening by their `calibrate` names (`Calibration.featureName`,
      /// `whiteningName`: plain strings for System.Text.Json, as above); default the paper's ratio, diagonal
      Feature: string
      Whitening: string
      /// how γ is read off the clean distances, by its `calibrate` name (`Calibration.thresholdRuleName`):
      /// default the paper's quantile
      ThresholdRule: string
      /// the world's folder (base/ and adapters/), a full path; None: the committed world
      World: string option
      Seed: int }

let defaults out =
    { Out = out; Calibration = Materialize.defaultCalibration; Test = 100; AttentionInputs = 50; TauGrid = [ 0.2; 0.6; 1.5; 4.0 ]; AblationInputs = 20
      SampleSizes = [ 10; 25; 50; 100 ]; SampleRepeats = 20; SampleViews = 1; Layers = None; LayersByFusion = false; PooledReference = false; PromptLengthReference = false
      Feature = Calibration.featureName Whitening.Ratio; Whitening = Calibration.whiteningName Whitening.Diagonal
      ThresholdRule = Calibration.thresholdRuleName Whitening.Interpolated; World = None; Seed = 0 }

/// The `--layers` request the settings hold (as two plain fields: settings.json and the config hash
/// are written by System.Text.Json, which does not serialise F# unions).
let layerRequest (s: Settings) =
    if s.LayersByFusion then Calibration.ByCleanFusion
    else s.Layers |> Option.map Calibration.NamedLayers |> Option.defaultValue Calibration.AtRelativeDepth

/// `s` asking for `request`.
let withLayerRequest (request: Calibration.LayerRequest) (s: Settings) =
    match request with
    | Calibration.AtRelativeDepth -> { s with Layers = None; LayersByFusion = false }
    | Calibration.NamedLayers layers -> { s with Layers = Some layers; LayersByFusion = false }
    | Calibration.ByCleanFusion -> { s with Layers = None; LayersByFusion = true }

/// SHA-256 of the settings as JSON, all but the output folder (it changes no result).
let configHash (s: Settings) =
    let json = JsonSerializer.Serialize({ s with Out = "" })
    Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes json)).ToLowerInvariant()

/// Claims the output folder for these settings: writes `settings.json` (config hash and settings) on
/// the first run; a re-run with the same settings resumes, one with other settings is refused —
/// finished samples of other settings must not be mixed into this run's numbers.
let claimOutput (s: Settings) =
    let hash = configHash s
    match Files.claim (Path.Combine(s.Out, "settings.json")) "a demo settings file" [ "config_hash", box hash ] [ "config", box { s with Out = "" } ] with
    | [] -> ()
    | _ -> raise (CleanSight.Core.InputError(s.Out, $"holds a demo run with other settings (config hash now {hash.Substring(0, 12)}…, see settings.json); use another --out or delete the folder"))

let private references (s: Settings) = if s.PooledReference then Calibration.Pooled else Calibration.PerTask

/// Refuses, before the output folder is claimed, a conformal threshold that the calibration split's
/// references are too small for.
let checkThresholdRule (s: Settings) =
    Calibration.plannedReferences (references s) (Materialize.calibrationTasks s.Calibration)
    |> Calibration.conformalShortfall (Calibration.parseThresholdRule s.ThresholdRule) Calibration.defaultQuantile
    |> Option.iter (fun problem -> raise (CleanSight.Core.InputError("--threshold-rule", problem)))

/// One attack's results: its evaluation and figures (`Findings`), and the two ablations.
type AttackResult =
    { Attack: Materialize.AttackEntry
      Findings: Findings.Evaluated
      /// chart 6: detection AUROC by layer (`Findings.aurocByLayerAgainst`, the calibration samples as reference)
      ByLayer: LayerSelection.SweepRow list
      Tau: Ablations.TauRow list
      SampleCount: Ablations.SampleCountRow list }

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

/// The τ ablation: prune-all at each τ of the grid on the first `AblationInputs` test inputs (resumable
/// like the evaluation), plus the undefended model on the same inputs.
let private tauAblation (s: Settings) (p: Progress.Reporter) (session: LlavaSession) (calibration: Calibration.Calibration)
                        (evalSettings: Evaluation.Settings) (manifest: Materialize.Manifest) (attack: Materialize.AttackEntry)
                        (records: Evaluation.Record[]) =
    let n = min s.AblationInputs s.Test
    let ids jsonl = Dataset.read jsonl |> Array.truncate n |> Array.map (fun it -> it.Id) |> Set.ofArray
    let cleanIds, triggeredIds = ids manifest.clean_test, ids attack.poisoned_test
    let subset defense =
        records |> Array.filter (fun r ->
            r.Defense = defense && (if r.Split = "clean" then cleanIds.Contains r.Id else triggeredIds.Contains r.Id))
    let forced (r: float) =
        let tau = Detector.RelativeToUniform r
        if tau = calibration.Settings.Tau then subset (Defenses.name Defenses.PruneAll)
        else
            let c = { calibration with Settings = { calibration.Settings with Tau = tau } }
            let csv = Path.Combine(s.Out, "eval", attack.name, "tau", r.ToString("R", CultureInfo.InvariantCulture), "samples.csv")
            Evaluation.run session c { evalSettings with Defenses = [ Defenses.PruneAll ]; Limit = Some n }
                manifest.clean_test attack.poisoned_test csv (Progress.counter p $"{attack.name}: τ = {r:G3}/T")
    Ablations.tauRow attack.name None (Summary.ofDefense (subset (Defenses.name Defenses.NoDefense)))
    :: [ for r in s.TauGrid -> Ablations.tauRow attack.name (Some r) (Summary.ofDefense (forced r)) ]

let private runAttack (s: Settings) (p: Progress.Reporter) (manifest: Materialize.Manifest) (attack: Materialize.AttackEntry) =
    use session = LlavaSession.Load(manifest.model, adapter = attack.adapter)
    let layers = [| 0 .. session.Config.Text.NumHiddenLayers - 1 |]
    let d = Calibration.defaultSettings layers.Length
    let calItems = Dataset.read manifest.calibration |> Array.truncate s.Calibration
    let samples = calItems |> Array.map (fun it -> RgbImage.Load(Dataset.imagePath manifest.calibration it), it.Question, it.Task)
    let detectionLayers, layerRule = Calibration.resolveLayers session samples (Progress.counter p $"{attack.name}: fusion") (layerRequest s)
    let settings =
        { d with Layers = detectionLayers; LayerRule = layerRule; Seed = s.Seed
                 References = references s; ThresholdRule = Calibration.parseThresholdRule s.ThresholdRule
                 Conditioning = if s.PromptLengthReference then Calibration.OnPromptLength else Calibration.Unconditioned
                 Feature = Calibration.parseFeature s.Feature; Whitening = Calibration.parseWhitening s.Whitening }
    // calibration, recording every layer in the same prefills (the clean reference of chart 2)
    let calibration, measured =
        Calibration.calibrateRecording session settings layers samples (Progress.counter p $"{attack.name}: calibrate")
    Calibration.save (Path.Combine(s.Out, "calibration", attack.name + ".json")) calibration
    let perTask = [ for KeyValue(t, r) in calibration.Tasks -> $"; {Dataset.taskName t}: {r.Samples} samples, threshold {r.Threshold:F3}" ]
    p.Log (sprintf "%s: calibrated at layers %s on %d clean samples, threshold %.3f%s" attack.name (Calibration.describeLayers settings)
               calibration.Samples calibration.Threshold (String.concat "" perTask))
    let evalSettings: Evaluation.Settings =
        { Defenses = Defenses.all; Target = attack.target; MaxNewTokens = 32; Limit = Some s.Test; Seed = s.Seed }
    let folder = Path.Combine(s.Out, "eval", attack.name)
    let records =
        Evaluation.run session calibration evalSettings manifest.clean_test attack.poisoned_test (Path.Combine(folder, "samples.csv"))
            (Progress.counter p $"{attack.name}: evaluate")
    let metrics = Summary.ofRecords records
    Summary.write (Path.Combine(folder, "metrics.json")) metrics
    // every layer of the first test inputs, clean and triggered: one prefill each (charts 1–3)
    let load jsonl = Dataset.read jsonl |> Array.truncate s.AttentionInputs |> Array.map (fun it -> it, RgbImage.Load(Dataset.imagePath jsonl it))
    let cleanInputs, triggeredInputs = load manifest.clean_test, load attack.poisoned_test
    let total = cleanInputs.Length + triggeredInputs.Length
    let step offset k = p.Step $"{attack.name}: attention by layer" (offset + k) total
    let cleanObserved = Findings.observe session (step 0) cleanInputs
    let triggeredObserved = Findings.observe session (step cleanInputs.Length) triggeredInputs
    // chart 2's μ and σ: the clean calibration samples, recorded at every layer in the calibration's prefills
    let attention, deviation =
        Findings.observedFigures attack.name calibration session.Config.Text.NumAttentionHeads (measured |> Array.map snd)
            cleanObserved triggeredObserved
    // chart 6: each layer's AUROC, the clean calibration samples (recorded at every layer) as each task's reference
    let tasksOf (items: Dataset.Item[]) = items |> Array.map (fun it -> Dataset.taskName it.Task)
    let withTasks items (sums: (float * float)[][][]) = Array.zip (tasksOf items) sums
    let byLayer =
        Findings.aurocByLayerAgainst attack.name settings (withTasks calItems (measured |> Array.map snd))
            (withTasks (Array.map fst cleanInputs) (Array.map AttentionStealing.sumsOf cleanObserved))
            (withTasks (Array.map fst triggeredInputs) (Array.map AttentionStealing.sumsOf triggeredObserved))
    let findings: Findings.Evaluated =
        { Name = attack.name; Calibration = calibration; Records = records; Metrics = metrics
          Attention = attention; Deviation = deviation
          Views = Findings.sampleViews s.SampleViews calibration records attack.name triggeredInputs triggeredObserved
          Distances = Findings.distances attack.name calibration records }
    let tau = tauAblation s p session calibration evalSettings manifest attack records
    let sampleCount =
        Ablations.sampleCount attack.name settings (measured |> Array.map fst) s.SampleSizes s.SampleRepeats s.Seed
    let cs = metrics |> Array.find (fun (n, _) -> n = "cleansight") |> snd
    let none = metrics |> Array.find (fun (n, _) -> n = "none") |> snd
    let asrNone, asrCs, auroc = 100.0 * defaultArg none.Asr nan, 100.0 * defaultArg cs.Asr nan, defaultArg cs.Auroc nan
    p.Log $"{attack.name}: ASR without defense {asrNone:F0}%%, with CleanSight {asrCs:F0}%%, AUROC {auroc:F3}"
    { Attack = attack; Findings = findings; ByLayer = byLayer; Tau = tau; SampleCount = sampleCount }

/// Writes every frame under DIR/frames and the report.
let private writeReport (s: Settings) (results: AttackResult list) =
    let frames = Path.Combine(s.Out, "frames")
    let findings = results |> List.map (fun r -> r.Findings)
    Findings.saveFrames frames findings
    let tau = results |> List.collect (fun r -> r.Tau)
    let sampleCount = results |> List.collect (fun r -> r.SampleCount)
    Ablations.tauFrame tau |> Files.saveCsv (Path.Combine(frames, "ablation-tau.csv"))
    Ablations.sampleCountFrame sampleCount |> Files.saveCsv (Path.Combine(frames, "ablation-samples.csv"))
    let byLayer = results |> List.collect (fun r -> r.ByLayer)
    LayerSelection.sweepFrame byLayer |> Files.saveCsv (Path.Combine(frames, "auroc-by-layer.csv"))
    let reference = findings.Head.Calibration.Settings
    let taus = String.Join(", ", s.TauGrid)
    Report.write (Path.Combine(s.Out, "report.html")) "CleanSight on the tiny backdoored world"
        [ let world = Materialize.resolve s.World
          let which = match s.World with None -> "the committed tiny world" | Some dir -> $"the tiny world at {dir}"
          yield Report.Text $"A tiny LLaVA (CLIP-style ViT, 2-layer projector, {Materialize.textLayers world}-layer LLaMA decoder) trained here ({which}); {results.Length} projector-only backdoors; CleanSight against the paper's baselines. Thresholds come from clean data only."
          let listed = String.Join("; ", findings |> List.map (fun r -> $"{r.Name} {Calibration.describeLayers r.Calibration.Settings}"))
          let conditioned = if reference.Conditioning = Calibration.OnPromptLength then ", conditioned on the prompt's length" else ""
          yield Report.Text $"CleanSight's detection layers per backdoored model (and how they were chosen): {listed}. Purification, prune-all and uniform attention run from the last of them. Feature: {Calibration.featureName reference.Feature}; whitening: {Calibration.whiteningName reference.Whitening}{conditioned}."
          yield! Findings.sections "the clean calibration samples" findings
          if not byLayer.IsEmpty then
              yield Report.Heading "6. Which layer sees the trigger"
              yield Report.Text $"Detection AUROC had CleanSight looked at one layer alone, and at each model's calibrated layers: per task, the reference fitted on the clean calibration samples, the first {s.AttentionInputs} clean test inputs against their triggered versions; {Calibration.featureName reference.Feature} feature, {Calibration.whiteningName reference.Whitening} whitening, no prompt-length conditioning. A diagnostic: it uses the triggers, which a defender does not have; the detection layers are not chosen by it."
              yield Report.Figure(Findings.aurocChart byLayer reference.Layers)
          yield Report.Heading "7. Ablations"
          yield Report.Text $"τ: purification forced on every input, on the first {min s.AblationInputs s.Test} clean and triggered test inputs; each line runs through τ·T = {taus} and no purification (lower τ prunes more). Clean samples: {s.SampleRepeats} seeded draws of n calibration samples each; threshold at the {reference.Quantile} quantile of their {Calibration.thresholdFromName reference.ThresholdFrom} distances ({Calibration.thresholdRuleName reference.ThresholdRule} rule), as calibrate sets it; FPR on the calibration samples not drawn."
          yield Report.Figure(Ablations.tauChart tau)
          yield Report.Figure(Ablations.sampleCountChart sampleCount) ]

let run (s: Settings) (p: Progress.Reporter) =
    let total = Stopwatch.StartNew()
    let durations = Collections.Generic.List<string * float>()
    let timed name f =
        let c = Stopwatch.StartNew()
        let x = f ()
        durations.Add(name, c.Elapsed.TotalSeconds)
        x
    let world = Materialize.resolve s.World
    if Attacks.all Attacks.defaultTarget |> List.forall (fun a -> not (File.Exists(Materialize.adapterPath world a.Name))) then
        raise (CleanSight.Core.InputError(Path.Combine(world, "adapters"), "holds no attack adapter (attack --name NAME --out DIR/adapters/NAME.safetensors makes one)"))
    checkThresholdRule s
    claimOutput s
    let manifest = timed "data" (fun () -> Materialize.run world (Path.Combine(s.Out, "data")) s.Calibration s.Test p.Log)
    let attacks = manifest.attacks
    let results =
        [ for i, attack in Array.indexed attacks do
              if File.Exists attack.adapter then yield timed attack.name (fun () -> runAttack s p manifest attack)
              else p.Log $"{attack.name}: no adapter at {attack.adapter}; skipped (attack --name {attack.name} --out {attack.adapter} makes it)"
              p.Step "attacks" (i + 1) attacks.Length ]
    p.Log "writing the frames and report.html"
    timed "report" (fun () -> writeReport s results)
    durations.Add("total", total.Elapsed.TotalSeconds)
    Files.writeJson (Path.Combine(s.Out, "manifest.json"))
        (dict [ "seed", box s.Seed
                "git_commit", box (gitCommit Environment.CurrentDirectory)
                "torchsharp", box (typeof<TorchSharp.torch>.Assembly.GetName().Version.ToString())
                "plotly_net", box (typeof<GenericChart>.Assembly.GetName().Version.ToString())
                "deedle", box (typeof<Frame<int, string>>.Assembly.GetName().Version.ToString())
                "cleansight", box (typeof<Settings>.Assembly.GetName().Version.ToString())
                "config_hash", box (configHash s)
                "config", box s
                "calibration_samples", box s.Calibration
                "test_samples", box s.Test
                "durations_s", box (dict (durations |> Seq.map (fun (k, v) -> k, Math.Round(v, 1)))) ])
    results
