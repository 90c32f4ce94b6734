/// Chart 4: how well the distance d separates clean from triggered inputs — per attack, the
/// histograms of d with the thresholds γ (one per task when each task has its own reference), and the
/// ROC curves of all attacks (d > threshold).
module CleanSight.Pipeline.Analysis.Detection

open Deedle
open Plotly.NET
open CleanSight.Pipeline.Metrics

/// One input's distance d and the threshold γ it was compared with (its task's).
type Scored = { Id: string; Task: string; Distance: float; Threshold: float }

/// One attack's distances: clean (negatives) and triggered (positives) test inputs.
type Distances = { Attack: string; Clean: Scored[]; Triggered: Scored[] }

/// Column names of the frames, in one place.
module Columns =
    let attack = "attack"
    let split = "split"
    let id = "id"
    let task = "task"
    let distance = "distance"
    let threshold = "threshold"
    let flagged = "flagged"
    let fpr = "fpr"
    let tpr = "tpr"
    let auroc = "auroc"

/// Every distance, one row per (attack, split, input).
let distancesFrame (all: Distances list) =
    [ for d in all do
          for split, xs in [ "clean", d.Clean; "triggered", d.Triggered ] do
              for x in xs -> d.Attack, split, x ]
    |> List.mapi (fun i (attack, split, x) ->
        i, series [ Columns.attack => box attack; Columns.split => box split; Columns.id => box x.Id; Columns.task => box x.Task
                    Columns.distance => box x.Distance; Columns.threshold => box x.Threshold
                    Columns.flagged => box (x.Distance > x.Threshold) ])
    |> Frame.ofRows

let private values (xs: Scored[]) = xs |> Array.map (fun x -> x.Distance)

/// The ROC curve of one attack (empty when a split has no distance).
let roc (d: Distances) =
    if d.Clean.Length = 0 || d.Triggered.Length = 0 then [||]
    else DetectionMetrics.rocCurve (values d.Clean) (values d.Triggered)

/// Every ROC point, one row per (attack, threshold), with the attack's AUROC.
let rocFrame (all: Distances list) =
    [ for d in all do
          let points = roc d
          if points.Length > 0 then
              let a = DetectionMetrics.auroc (values d.Clean) (values d.Triggered)
              for p in points -> d.Attack, p, a ]
    |> List.mapi (fun i (attack, p: DetectionMetrics.RocPoint, a) ->
        i, series [ Columns.attack => box attack; Columns.threshold => box p.Threshold; Columns.fpr => box p.Fpr
                    Columns.tpr => box p.Tpr; Columns.auroc => box a ])
    |> Frame.ofRows

/// Histograms of d, one per named group of inputs, with each task's γ marked.
let histogramOf (title: string) (groups: (string * Scored[]) list) =
    let all = groups |> List.map snd |> Array.concat
    let height = groups |> List.map (fun (_, xs) -> xs.Length) |> List.fold max 0
    let thresholds = all |> Array.map (fun x -> x.Task, x.Threshold) |> Array.distinct |> Array.sort
    [ for name, xs in groups -> Chart.Histogram(values xs, Name = name, Opacity = 0.6)
      for task, g in thresholds -> Chart.Line([ g; g ], [ 0.0; float height ], Name = $"threshold γ ({task})") ]
    |> Chart.combine
    |> Chart.withTitle title
    |> Chart.withXAxisStyle (TitleText = "distance d")

/// One attack's histograms of d, clean vs triggered, with each task's γ marked.
let histogram (d: Distances) =
    histogramOf $"{d.Attack}: distance to the clean reference" [ "clean", d.Clean; "triggered", d.Triggered ]

/// The ROC curves of all attacks in one chart, AUROC in the legend, chance as the diagonal.
let rocChart (all: Distances list) =
    [ for d in all do
          let points = roc d
          if points.Length > 0 then
              let a = DetectionMetrics.auroc (values d.Clean) (values d.Triggered)
              // from (0, 0) to (1, 1): FPR ascending as the threshold falls
              yield Chart.Line(points |> Array.map (fun p -> p.Fpr), points |> Array.map (fun p -> p.Tpr),
                               Name = $"{d.Attack} (AUROC {a:F2})", ShowMarkers = false)
      yield Chart.Line([ 0.0; 1.0 ], [ 0.0; 1.0 ], Name = "chance", LineDash = StyleParam.DrawingStyle.Dot,
                       LineColor = Color.fromString "grey") ]
    |> Chart.combine
    |> Chart.withTitle "ROC of the distance d per attack (clean test inputs vs their triggered versions)"
    |> Chart.withXAxisStyle (TitleText = "false-positive rate", MinMax = (0.0, 1.0))
    |> Chart.withYAxisStyle (TitleText = "true-positive rate", MinMax = (0.0, 1.0))
    |> Chart.withSize (700, 560)
