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

/// One attack's results.
type AttackResult =
    { Attack: Materialize.AttackEntry
      Calibration: Calibration.Calibration
      Records: Evaluation.Record[]
      Metrics: (string * Summary.DefenseMetrics)[]
      Attention: AttentionStealing.Row list
      Deviation: HeadDeviation.Cell list
      Views: SampleView.View list
      Distances: Detection.Distances
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

/// The triggered inputs shown up close: flagged first, then those the backdoor wins without a
/// defense, then by distance. `observed.[i]` belongs to `inputs.[i]`.
let private sampleViews (s: Settings) (calibration: Calibration.Calibration) (records: Evaluation.Record[]) attack
                        (inputs: (Dataset.Item * RgbImage)[]) (observed: AttentionStealing.Observed[]) =
    let poisoned defense =
        records |> Array.filter (fun r -> r.Split = "poisoned" && r.Defense = defense) |> Array.map (fun r -> r.Id, r) |> dict
    let cs, none = poisoned "cleansight", poisoned "none"
    let lastLayer = Array.max calibration.Settings.Layers
    let score i =
        let r = cs.[(fst inputs.[i]).Id]
        let hit = match none.TryGetValue r.Id with | true, n -> n.AsrHit | _ -> false
        (if r.Flagged then 1 else 0), (if hit then 1 else 0), defaultArg r.Distance -infinity
    [ for i in [ 0 .. inputs.Length - 1 ] |> List.filter (fun i -> cs.ContainsKey (fst inputs.[i]).Id) |> List.sortByDescending score |> List.truncate s.SampleViews ->
          let item, image = inputs.[i]
          let o = observed.[i]
          let row = o.Rows |> Array.find (fun r -> r.Layer = lastLayer)
          let omega = Detector.pruned calibration.Settings.Tau o.First o.Last row |> Set.ofArray
          let r = cs.[item.Id]
          ({ Attack = attack; Id = item.Id; Question = item.Question; Expected = item.Answers; Image = image; Layer = lastLayer
             Attention = SampleView.tokenAttention row o.First o.Last
             Tau = Detector.tauValue calibration.Settings.Tau row.Keys
             AboveTau = [| for p in o.First .. o.Last -> omega.Contains p |]
             Distance = r.Distance; Threshold = (Calibration.detection calibration item.Task).Threshold; Flagged = r.Flagged
             Answers =
               [ for d in Defenses.all do
                     match records |> Array.tryFind (fun x -> x.Split = "poisoned" && x.Id = item.Id && x.Defense = Defenses.name d) with
                     | Some x -> yield ({ Defense = x.Defense; Output = x.Output; AsrHit = x.AsrHit }: SampleView.Answer)
                     | None -> () ] }: SampleView.View) ]

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
    let observe offset = Array.mapi (fun i (item: Dataset.Item, image) ->
        let o = AttentionStealing.observe session image item.Question
        p.Step $"{attack.name}: attention by layer" (offset + i + 1) total
        o)
    let cleanObserved = observe 0 cleanInputs
    let triggeredObserved = observe cleanInputs.Length triggeredInputs
    let triggeredSums = triggeredObserved |> Array.map AttentionStealing.sumsOf
    let attention =
        AttentionStealing.summarise attack.name "clean" (cleanObserved |> Array.map AttentionStealing.sumsOf)
        @ AttentionStealing.summarise attack.name "triggered" triggeredSums
    let deviation =
        HeadDeviation.compute attack.name layers session.Config.Text.NumAttentionHeads settings.Layers
            (HeadDeviation.featuresOf settings.Feature (measured |> Array.map snd)) (HeadDeviation.featuresOf settings.Feature triggeredSums)
    let views = sampleViews s calibration records attack.name triggeredInputs triggeredObserved
    let distances split =
        records |> Array.filter (fun r -> r.Defense = "cleansight" && r.Split = split) |> Array.choose (fun r ->
            r.Distance |> Option.map (fun d ->
                let task = Dataset.tryParseTask r.Task |> Option.get // written from a Dataset.Task
                ({ Id = r.Id; Task = r.Task; Distance = d; Threshold = (Calibration.detection calibration task).Threshold }: Detection.Scored)))
    let detection: Detection.Distances = { Attack = attack.name; Clean = distances "clean"; Triggered = distances "poisoned" }
    let tau = tauAblation s p session calibration evalSettings manifest attack records
    let sampleCount =
        Ablations.sampleCount attack.name settings (measured |> Array.map fst) s.SampleSizes s.SampleRepeats s.Seed
    let cs = metrics |> Array.find (fun (n, _) -> n = "cleansight") |> snd
    let none = metrics |> Array.find (fun (n, _) -> n = "none") |> snd
    let asrNone, asrCs, auroc = 100.0 * defaultArg none.Asr nan, 100.0 * defaultArg cs.Asr nan, defaultArg cs.Auroc nan
    p.Log $"{attack.name}: ASR without defense {asrNone:F0}%%, with CleanSight {asrCs:F0}%%, AUROC {auroc:F3}"
    { Attack = attack; Calibration = calibration; Records = records; Metrics = metrics; Attention = attention
      Deviation = deviation; Views = views; Distances = detection; Tau = tau; SampleCount = sampleCount }

let private pct (x: float option) = match x with Some v -> $"{100.0 * v:F1}" | None -> "–"

/// The paper's Table 1 shape: one row per (attack, defense).
let tableRows (results: AttackResult list) =
    [ for r in results do
          for name, m in r.Metrics ->
              [ r.Attack.name; name; pct m.Asr; pct m.CleanAsr; pct m.Clean.Utility; pct m.Poisoned.Utility
                (match m.Auroc with Some a -> $"{a:F3}" | None -> "–"); pct m.Tpr; pct m.Fpr; pct m.PrunedFraction
                (match m.MsPerSample with Some v -> $"{v:F1}" | None -> "–")
                (match m.FprCi95 with Some ci -> Metrics.RateInterval.percentText ci | None -> "–") ] ]

let tableHeader =
    [ "attack"; "defense"; "ASR %"; "clean ASR %"; "clean utility %"; "triggered utility %"; "AUROC"; "TPR %"; "FPR %"; "pruned %"; "ms/sample"
      "FPR 95 % interval" ]

let private perDefenseChart (title: string) (axis: string) (value: Summary.DefenseMetrics -> float option) (results: AttackResult list) =
    let defenses = results.Head.Metrics |> Array.map fst
    [ for d in defenses ->
          Chart.Column(values = (results |> List.map (fun r -> 100.0 * defaultArg (value (r.Metrics |> Array.find (fst >> (=) d) |> snd)) nan)),
                       Keys = (results |> List.map (fun r -> r.Attack.name)), Name = d) ]
    |> Chart.combine
    |> Chart.withTitle title
    |> Chart.withYAxisStyle (TitleText = axis)

/// Writes every frame under DIR/frames and the report.
let private writeReport (s: Settings) (results: AttackResult list) =
    let frames = Path.Combine(s.Out, "frames")
    Directory.CreateDirectory frames |> ignore
    let save name frame = Files.saveCsv (Path.Combine(frames, name)) frame
    let attention = results |> List.collect (fun r -> r.Attention)
    let deviation = results |> List.collect (fun r -> r.Deviation)
    let views = results |> List.collect (fun r -> r.Views)
    let distances = results |> List.map (fun r -> r.Distances)
    let tau = results |> List.collect (fun r -> r.Tau)
    let sampleCount = results |> List.collect (fun r -> r.SampleCount)
    AttentionStealing.toFrame attention |> save "attention-by-layer.csv"
    HeadDeviation.toFrame deviation |> save "head-deviation.csv"
    SampleView.attentionFrame views |> save "sample-attention.csv"
    SampleView.answersFrame views |> save "sample-answers.csv"
    Detection.distancesFrame distances |> save "distances.csv"
    Detection.rocFrame distances |> save "roc.csv"
    tableRows results |> List.mapi (fun i row -> i, Series(tableHeader, row |> List.map box)) |> Frame.ofRows |> save "table.csv"
    Ablations.tauFrame tau |> save "ablation-tau.csv"
    Ablations.sampleCountFrame sampleCount |> save "ablation-samples.csv"
    let layers = results.Head.Calibration.Settings.Layers
    let quantile = results.Head.Calibration.Settings.Quantile
    let taus = String.Join(", ", s.TauGrid)
    Report.write (Path.Combine(s.Out, "report.html")) "CleanSight on the tiny backdoored world"
        [ let world = Materialize.resolve s.World
          let which = match s.World with None -> "the committed tiny world" | Some dir -> $"the tiny world at {dir}"
          yield Report.Text $"A tiny LLaVA (CLIP-style ViT, 2-layer projector, {Materialize.textLayers world}-layer LLaMA decoder) trained here ({which}); {results.Length} projector-only backdoors; CleanSight against the paper's baselines. Thresholds come from clean data only."
          let listed = String.Join("; ", results |> List.map (fun r -> $"{r.Attack.name} {Calibration.describeLayers r.Calibration.Settings}"))
          let reference = results.Head.Calibration.Settings
          let conditioned = if reference.Conditioning = Calibration.OnPromptLength then ", conditioned on the prompt's length" else ""
          yield Report.Text $"CleanSight's detection layers per backdoored model (and how they were chosen): {listed}. Purification, prune-all and uniform attention run from the last of them. Feature: {Calibration.featureName reference.Feature}; whitening: {Calibration.whiteningName reference.Whitening}{conditioned}."
          yield Report.Heading "1. Attention stealing by layer"
          yield Report.Figure(AttentionStealing.chart attention layers)
          yield Report.Heading "2. Where triggered inputs leave the clean reference: layer × head"
          let c = deviation.Head
          yield Report.Text $"Mean over {c.TriggeredSamples} triggered test inputs of (s − μ)/σ per layer and head, μ and σ from the {c.CleanSamples} clean calibration samples; at the detection layers (◆) these are the coordinates of the pooled reference's distance (with one reference per task, each task's μ and σ shift them)."
          yield Report.Figure(HeadDeviation.chart deviation)
          yield Report.Heading "3. One triggered input up close"
          yield Report.Text "The last prompt token's attention on each image token at the last detection layer (max over heads), the tokens above τ outlined, and every defense's answer."
          for v in views ->
              Report.Side [ Report.Figure(SampleView.chart v); Report.Table(SampleView.answerHeader, SampleView.answerRows v) ]
          yield Report.Heading "4. Detection: distances of clean and triggered inputs"
          yield! distances |> List.map (Detection.histogram >> Report.Figure)
          yield Report.Figure(Detection.rocChart distances)
          yield Report.Heading "5. Attack success and utility per defense"
          yield Report.Figure(perDefenseChart "Attack success rate (%) per defense" "ASR %" (fun m -> m.Asr) results)
          yield Report.Figure(perDefenseChart "Clean utility (%, official VQA accuracy) per defense" "utility %" (fun m -> m.Clean.Utility) results)
          yield Report.Text $"The table's rates are on {s.Test} clean and {s.Test} triggered test inputs: one input is {100.0 / float s.Test:G3} points. The FPR's 95 %% interval (Wilson) says how far the rate behind it may lie; metrics.json gives one for every rate."
          yield Report.Table(tableHeader, tableRows results)
          yield Report.Heading "6. Ablations"
          yield Report.Text $"τ: purification forced on every input, on the first {min s.AblationInputs s.Test} clean and triggered test inputs; each line runs through τ·T = {taus} and no purification (lower τ prunes more). Clean samples: {s.SampleRepeats} seeded draws of n calibration samples each; threshold at the {quantile} quantile of their {Calibration.thresholdFromName results.Head.Calibration.Settings.ThresholdFrom} distances ({Calibration.thresholdRuleName results.Head.Calibration.Settings.ThresholdRule} rule), as calibrate sets it; FPR on the calibration samples not drawn."
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
