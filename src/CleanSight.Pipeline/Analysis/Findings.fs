/// What one evaluated backdoored model shows, as frames and report sections — shared by `demo` (each
/// attack of the tiny world) and `evaluate` (a model of your own): attention stealing by layer (chart
/// 1), where triggered inputs leave the clean reference by layer and head (2), one triggered input up
/// close (3), detection (4), attack success and utility per defense (5).
module CleanSight.Pipeline.Analysis.Findings

open System
open System.IO
open Deedle
open Plotly.NET
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense

/// One backdoored model's evaluation and what was observed on it.
type Evaluated =
    { /// the attack's name (the demo) or the evaluation folder's (evaluate)
      Name: string
      Calibration: Calibration.Calibration
      Records: Evaluation.Record[]
      Metrics: (string * Summary.DefenseMetrics)[]
      Attention: AttentionStealing.Row list
      Deviation: HeadDeviation.Cell list
      Views: SampleView.View list
      Distances: Detection.Distances }

/// Each input observed at every layer (one prefill each); `step k` after the k-th.
let observe (session: LlavaSession) (step: int -> unit) (inputs: (Dataset.Item * RgbImage)[]) =
    inputs |> Array.mapi (fun i (item, image) ->
        let o = AttentionStealing.observe session image item.Question
        step (i + 1)
        o)

/// The triggered inputs shown up close (at most `count`): flagged first, then those the backdoor wins
/// without a defense, then by distance. `observed.[i]` belongs to `inputs.[i]`.
let sampleViews (count: int) (calibration: Calibration.Calibration) (records: Evaluation.Record[]) (name: string)
                (inputs: (Dataset.Item * RgbImage)[]) (observed: AttentionStealing.Observed[]) =
    let poisoned defense =
        records |> Array.filter (fun r -> r.Split = "poisoned" && r.Defense = defense) |> Array.map (fun r -> r.Id, r) |> dict
    let cs, none = poisoned (Defenses.name Defenses.CleanSight), poisoned (Defenses.name Defenses.NoDefense)
    let lastLayer = Array.max calibration.Settings.Layers
    let score i =
        let r = cs.[(fst inputs.[i]).Id]
        let hit = match none.TryGetValue r.Id with | true, n -> n.AsrHit | _ -> false
        (if r.Flagged then 1 else 0), (if hit then 1 else 0), defaultArg r.Distance -infinity
    [ for i in [ 0 .. inputs.Length - 1 ] |> List.filter (fun i -> cs.ContainsKey (fst inputs.[i]).Id) |> List.sortByDescending score |> List.truncate count ->
          let item, image = inputs.[i]
          let o = observed.[i]
          let row = o.Rows |> Array.find (fun r -> r.Layer = lastLayer)
          let omega = Detector.pruned calibration.Settings.Tau o.First o.Last row |> Set.ofArray
          let r = cs.[item.Id]
          ({ Attack = name; Id = item.Id; Question = item.Question; Expected = item.Answers; Image = image; Layer = lastLayer
             Attention = SampleView.tokenAttention row o.First o.Last
             Tau = Detector.tauValue calibration.Settings.Tau row.Keys
             AboveTau = [| for p in o.First .. o.Last -> omega.Contains p |]
             Distance = r.Distance; Threshold = (Calibration.detection calibration item.Task).Threshold; Flagged = r.Flagged
             Answers =
               [ for d in Defenses.all do
                     match records |> Array.tryFind (fun x -> x.Split = "poisoned" && x.Id = item.Id && x.Defense = Defenses.name d) with
                     | Some x -> yield ({ Defense = x.Defense; Output = x.Output; AsrHit = x.AsrHit }: SampleView.Answer)
                     | None -> () ] }: SampleView.View) ]

/// CleanSight's distance of every evaluated input, with the threshold of its task's reference.
let distances (name: string) (calibration: Calibration.Calibration) (records: Evaluation.Record[]) : Detection.Distances =
    let scored split =
        records |> Array.filter (fun r -> r.Defense = Defenses.name Defenses.CleanSight && r.Split = split) |> Array.choose (fun r ->
            r.Distance |> Option.map (fun d ->
                let task = Dataset.tryParseTask r.Task |> Option.get // written from a Dataset.Task
                ({ Id = r.Id; Task = r.Task; Distance = d; Threshold = (Calibration.detection calibration task).Threshold }: Detection.Scored)))
    { Attack = name; Clean = scored "clean"; Triggered = scored "poisoned" }

/// Chart 1's rows and chart 2's cells from the inputs observed at every layer. `reference`: the
/// per-input (visual, prompt) sums [input][layer][head] that chart 2's μ and σ come from.
let observedFigures (name: string) (calibration: Calibration.Calibration) (heads: int) (reference: (float * float)[][][])
                    (clean: AttentionStealing.Observed[]) (triggered: AttentionStealing.Observed[]) =
    let cleanSums, triggeredSums = Array.map AttentionStealing.sumsOf clean, Array.map AttentionStealing.sumsOf triggered
    let attention = AttentionStealing.summarise name "clean" cleanSums @ AttentionStealing.summarise name "triggered" triggeredSums
    let layers = [| 0 .. triggeredSums.[0].Length - 1 |]
    let feature = calibration.Settings.Feature
    let deviation =
        HeadDeviation.compute name layers heads calibration.Settings.Layers
            (HeadDeviation.featuresOf feature reference) (HeadDeviation.featuresOf feature triggeredSums)
    attention, deviation

/// The models of an evaluation, for the table and chart 5.
let models (results: Evaluated list) : DefenseTable.Model list = results |> List.map (fun r -> { Name = r.Name; Metrics = r.Metrics })

/// Writes the frames of charts 1–5 under `dir` (each atomically).
let saveFrames (dir: string) (results: Evaluated list) =
    Directory.CreateDirectory dir |> ignore
    let save name frame = Files.saveCsv (Path.Combine(dir, name)) frame
    let views = results |> List.collect (fun r -> r.Views)
    let distances = results |> List.map (fun r -> r.Distances)
    AttentionStealing.toFrame (results |> List.collect (fun r -> r.Attention)) |> save "attention-by-layer.csv"
    HeadDeviation.toFrame (results |> List.collect (fun r -> r.Deviation)) |> save "head-deviation.csv"
    SampleView.attentionFrame views |> save "sample-attention.csv"
    SampleView.answersFrame views |> save "sample-answers.csv"
    Detection.distancesFrame distances |> save "distances.csv"
    Detection.rocFrame distances |> save "roc.csv"
    DefenseTable.frame (models results) |> save "table.csv"

/// The report's charts 1–5. `reference` names chart 2's clean inputs ("clean calibration samples").
/// Charts 1–3 are left out when nothing was observed at every layer, 3–4 when CleanSight was not evaluated.
let sections (reference: string) (results: Evaluated list) : Report.Section list =
    let attention = results |> List.collect (fun r -> r.Attention)
    let deviation = results |> List.collect (fun r -> r.Deviation)
    let views = results |> List.collect (fun r -> r.Views)
    let distances = results |> List.map (fun r -> r.Distances) |> List.filter (fun d -> d.Clean.Length + d.Triggered.Length > 0)
    [ if not attention.IsEmpty then
          yield Report.Heading "1. Attention stealing by layer"
          yield Report.Figure(AttentionStealing.chart attention results.Head.Calibration.Settings.Layers)
      if not deviation.IsEmpty then
          yield Report.Heading "2. Where triggered inputs leave the clean reference: layer × head"
          let c = deviation.Head
          yield Report.Text $"Mean over {c.TriggeredSamples} triggered test inputs of (s − μ)/σ per layer and head, μ and σ from {c.CleanSamples} {reference}; at the detection layers (◆) these are the coordinates of the pooled reference's distance (with one reference per task, each task's μ and σ shift them)."
          yield Report.Figure(HeadDeviation.chart deviation)
      if not views.IsEmpty then
          yield Report.Heading "3. One triggered input up close"
          yield Report.Text "The last prompt token's attention on each image token at the last detection layer (max over heads), the tokens above τ outlined, and every defense's answer."
          for v in views ->
              Report.Side [ Report.Figure(SampleView.chart v); Report.Table(SampleView.answerHeader, SampleView.answerRows v) ]
      if not distances.IsEmpty then
          yield Report.Heading "4. Detection: distances of clean and triggered inputs"
          yield! distances |> List.map (Detection.histogram >> Report.Figure)
          yield Report.Figure(Detection.rocChart distances)
      yield Report.Heading "5. Attack success and utility per defense"
      yield! DefenseTable.sections (models results) ]

/// The calibration in one sentence: layers (and how chosen), feature, whitening, conditioning, rule.
let describeCalibration (c: Calibration.Calibration) =
    let s = c.Settings
    let conditioned = if s.Conditioning = Calibration.OnPromptLength then ", conditioned on the prompt's length" else ""
    $"detection layers {Calibration.describeLayers s}; feature {Calibration.featureName s.Feature}; whitening {Calibration.whiteningName s.Whitening}{conditioned}; threshold by the {Calibration.thresholdRuleName s.ThresholdRule} rule at the {s.Quantile} quantile of {c.Samples} clean samples"

/// A report's first line: the model, its adapter, and the calibration file in one sentence.
let describeRun (model: string) (adapter: string option) (calibrationPath: string) (calibration: Calibration.Calibration) =
    let adapter = match adapter with Some a -> $" with the adapter {a}" | None -> ""
    $"Model {model}{adapter}; calibration {calibrationPath}: {describeCalibration calibration}."

/// Detection AUROC had CleanSight looked at one layer ℓ alone (a row per layer), and at the
/// calibrated layers (one more row unless that is a single layer). Inputs observed at every layer come
/// as (task, per-input (visual, prompt) sums [layer][head]); one reference per task, as calibrate makes
/// them: fitted on the task's `reference` inputs (tasks with fewer than 2, or without clean or
/// triggered inputs, are left out), its `clean` inputs the negatives, its `triggered` ones the
/// positives; the calibration's feature and whitening (`s`), unconditioned. A diagnostic: it needs the
/// triggered inputs, which a defender does not have.
let aurocByLayerAgainst (name: string) (s: Calibration.Settings) (reference: (string * (float * float)[][])[])
                        (clean: (string * (float * float)[][])[]) (triggered: (string * (float * float)[][])[]) =
    let ofTask task (xs: (string * (float * float)[][])[]) = xs |> Array.filter (fst >> (=) task) |> Array.map snd
    let tasks =
        reference |> Array.groupBy fst |> Array.filter (fun (_, xs) -> xs.Length >= 2)
        |> Array.choose (fun (task, xs) ->
            let negatives, positives = ofTask task clean, ofTask task triggered
            if negatives.Length = 0 || positives.Length = 0 then None else Some(Array.map snd xs, negatives, positives))
    let row (ls: int[]) : LayerSelection.SweepRow =
        let distances (reference: (float * float)[][][]) (xs: (float * float)[][][]) =
            let r = Whitening.fit s.Whitening (reference |> Array.map (AttentionStealing.featuresAt s.Feature ls))
            xs |> Array.map (AttentionStealing.featuresAt s.Feature ls >> Whitening.distance r)
        let negatives = tasks |> Array.collect (fun (reference, negatives, _) -> distances reference negatives)
        let positives = tasks |> Array.collect (fun (reference, _, positives) -> distances reference positives)
        { Attack = name; Trigger = "real"; Layers = ls; Auroc = Metrics.DetectionMetrics.auroc negatives positives }
    if tasks.Length = 0 then []
    else
        let layers = (snd triggered.[0]).Length
        [ for l in 0 .. layers - 1 -> row [| l |]
          if s.Layers.Length > 1 then yield row s.Layers ]

/// Chart 6 of `evaluate`, where no calibration sample is at hand: `aurocByLayerAgainst` with each
/// task's even-numbered clean inputs as its reference and the odd-numbered ones as the negatives
/// (tasks with fewer than 4 clean inputs are left out).
let aurocByLayer (name: string) (s: Calibration.Settings)
                 (clean: (string * (float * float)[][])[]) (triggered: (string * (float * float)[][])[]) =
    let halves =
        clean |> Array.groupBy fst |> Array.filter (fun (_, xs) -> xs.Length >= 4)
        |> Array.map (fun (_, xs) -> xs |> Array.indexed |> Array.partition (fun (i, _) -> i % 2 = 0))
    let part pick = halves |> Array.collect (fun h -> pick h |> Array.map snd)
    aurocByLayerAgainst name s (part fst) (part snd) triggered

/// AUROC by single layer per model, each model's calibrated layers as a dashed level, chance dotted.
let aurocChart (rows: LayerSelection.SweepRow list) (detectionLayers: int[]) =
    let last = rows |> List.filter (fun r -> r.Layers.Length = 1) |> List.map (fun r -> r.Layers.[0]) |> List.max
    let level name (y: float) dash =
        Chart.Line([ 0; last ], [ y; y ], Name = name, LineDash = dash)
    [ for model, rs in rows |> List.groupBy (fun r -> r.Attack) do
          let single = rs |> List.filter (fun r -> r.Layers.Length = 1) |> List.sortBy (fun r -> r.Layers.[0])
          yield Chart.Line(single |> List.map (fun r -> r.Layers.[0]), single |> List.map (fun r -> r.Auroc), Name = $"{model}: this layer alone", ShowMarkers = true)
          match rs |> List.tryFind (fun r -> r.Layers.Length > 1) with
          | Some r -> yield level $"""{model}: the calibrated layers {String.Join(",", r.Layers)}""" r.Auroc StyleParam.DrawingStyle.Dash
          | None -> ()
      yield Chart.Line([ 0; last ], [ 0.5; 0.5 ], Name = "chance", LineDash = StyleParam.DrawingStyle.Dot, LineColor = Color.fromString "grey")
      for l in detectionLayers ->
          Chart.Line([ l; l ], [ 0.0; 1.0 ], Name = "detection layer", ShowLegend = false, LineDash = StyleParam.DrawingStyle.Dot, LineColor = Color.fromString "grey") ]
    |> Chart.combine
    |> Chart.withTitle "Detection AUROC by layer (clean test inputs vs their triggered versions)"
    |> Chart.withXAxisStyle (TitleText = "layer")
    |> Chart.withYAxisStyle (TitleText = "AUROC", MinMax = (0.0, 1.0))
    |> Chart.withSize (1000, 480)

/// `evaluate`'s pictures of one model: the first `inputs` clean and triggered test inputs observed at
/// every layer (charts 1–3; chart 2's μ and σ from the observed clean inputs, as no calibration sample
/// is at hand) and chart 6 (`aurocByLayer`), then DIR/frames/*.csv and DIR/report.html, `intro` at its
/// top. `step k n` reports progress. With fewer than 2 clean or no triggered inputs observed, charts
/// 1–3 are left out; chart 6 needs a task with 4 clean inputs observed.
let writeEvaluation (session: LlavaSession) (calibration: Calibration.Calibration) (records: Evaluation.Record[])
                    (metrics: (string * Summary.DefenseMetrics)[]) (name: string) (clean: string) (poisoned: string)
                    (inputs: int) (intro: string list) (dir: string) (step: int -> int -> unit) =
    let load jsonl = Dataset.read jsonl |> Array.truncate inputs |> Array.map (fun it -> it, RgbImage.Load(Dataset.imagePath jsonl it))
    let cleanInputs, triggeredInputs = load clean, load poisoned
    let total = cleanInputs.Length + triggeredInputs.Length
    let cleanObserved = observe session (fun k -> step k total) cleanInputs
    let triggeredObserved = observe session (fun k -> step (cleanInputs.Length + k) total) triggeredInputs
    let cleanSums, triggeredSums = Array.map AttentionStealing.sumsOf cleanObserved, Array.map AttentionStealing.sumsOf triggeredObserved
    let attention, deviation, views =
        if cleanObserved.Length < 2 || triggeredObserved.Length = 0 then [], [], []
        else
            let attention, deviation =
                observedFigures name calibration session.Config.Text.NumAttentionHeads cleanSums cleanObserved triggeredObserved
            attention, deviation, sampleViews 1 calibration records name triggeredInputs triggeredObserved
    let tasksOf (inputs: (Dataset.Item * RgbImage)[]) = inputs |> Array.map (fun (it, _) -> Dataset.taskName it.Task)
    let byLayer = aurocByLayer name calibration.Settings (Array.zip (tasksOf cleanInputs) cleanSums) (Array.zip (tasksOf triggeredInputs) triggeredSums)
    let evaluated =
        { Name = name; Calibration = calibration; Records = records; Metrics = metrics; Attention = attention
          Deviation = deviation; Views = views; Distances = distances name calibration records }
    saveFrames (Path.Combine(dir, "frames")) [ evaluated ]
    LayerSelection.sweepFrame byLayer |> Files.saveCsv (Path.Combine(dir, "frames", "auroc-by-layer.csv"))
    Report.write (Path.Combine(dir, "report.html")) $"CleanSight evaluation: {name}"
        [ for line in intro -> Report.Text line
          if attention.IsEmpty then
              yield Report.Text $"Charts 1–3 need at least 2 clean and 1 triggered input observed at every layer; {cleanObserved.Length} and {triggeredObserved.Length} were (--attention-inputs)."
          yield! sections $"clean test inputs (the first {cleanObserved.Length} observed at every layer)" [ evaluated ]
          if not byLayer.IsEmpty then
              yield Report.Heading "6. Which layer sees the trigger"
              yield Report.Text $"Detection AUROC had CleanSight looked at one layer alone, and at the calibrated layers: of each task with at least 4 observed clean test inputs, a reference fitted on half of them, the other half against the task's observed triggered inputs; the calibration's feature and whitening, no prompt-length conditioning. A diagnostic: it uses triggered inputs, which a defender does not have — choosing --layers by it tunes the defense to this trigger."
              yield Report.Figure(aurocChart byLayer calibration.Settings.Layers) ]
