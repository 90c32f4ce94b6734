/// Chart 2: where triggered inputs leave the clean reference. Per decoder layer and head, the mean
/// over triggered inputs of the whitened deviation (s − μ)/σ of the detector's feature s (the
/// paper's visual ÷ prompt ratio by default), with μ and σ (population σ + ε, as the diagonal
/// detector) from the clean calibration samples. At the detection layers these are exactly the
/// coordinates whose norm is the diagonal detector's distance d.
module CleanSight.Pipeline.Analysis.HeadDeviation

open Deedle
open Plotly.NET
open CleanSight.Pipeline.Defense.Whitening

/// Column names of the frame, in one place.
module Columns =
    let attack = "attack"
    let layer = "layer"
    let head = "head"
    let deviation = "deviation"
    let cleanMean = "clean_mean"
    let cleanStd = "clean_std"
    let triggeredMean = "triggered_mean"
    let detectionLayer = "detection_layer"
    let cleanSamples = "clean_samples"
    let triggeredSamples = "triggered_samples"

type Cell =
    { Attack: string
      Layer: int
      Head: int
      /// mean over triggered inputs of (s − μ)/σ
      Deviation: float
      CleanMean: float
      CleanStd: float
      TriggeredMean: float
      DetectionLayer: bool
      CleanSamples: int
      TriggeredSamples: int }

/// Per-input (visual, prompt) sums [input][layer][head] → the feature [input][layer · heads + head].
let featuresOf (feature: Feature) (sums: (float * float)[][][]) =
    sums |> Array.map (fun input -> input |> Array.collect (Array.map (fun (v, p) -> featureOf feature v p)))

/// The cells of one attack. `clean` and `triggered` are feature rows [input][layer · heads + head]
/// over `layers` (the recorded layer numbers, in order) with `heads` heads each.
let compute (attack: string) (layers: int[]) (heads: int) (detectionLayers: int[]) (clean: float[][]) (triggered: float[][]) =
    if triggered.Length = 0 then invalidArg (nameof triggered) "need at least one triggered input"
    let p = layers.Length * heads
    for name, rows in [ nameof clean, clean; nameof triggered, triggered ] do
        rows |> Array.iteri (fun i r ->
            if r.Length <> p then invalidArg name $"{name} input {i} has {r.Length} features, expected {layers.Length} layers × {heads} heads = {p}")
    let reference = fit Diagonal clean
    [ for li in 0 .. layers.Length - 1 do
          for h in 0 .. heads - 1 ->
              let j = li * heads + h
              let mu, sigma = reference.Mean.[j], reference.Std.[j]
              { Attack = attack; Layer = layers.[li]; Head = h
                Deviation = triggered |> Array.averageBy (fun x -> (x.[j] - mu) / sigma)
                CleanMean = mu; CleanStd = sigma
                TriggeredMean = triggered |> Array.averageBy (fun x -> x.[j])
                DetectionLayer = Array.contains layers.[li] detectionLayers
                CleanSamples = clean.Length; TriggeredSamples = triggered.Length } ]

let toFrame (cells: Cell list) =
    cells
    |> List.mapi (fun i c ->
        i, series [ Columns.attack => box c.Attack; Columns.layer => box c.Layer; Columns.head => box c.Head
                    Columns.deviation => box c.Deviation; Columns.cleanMean => box c.CleanMean
                    Columns.cleanStd => box c.CleanStd; Columns.triggeredMean => box c.TriggeredMean
                    Columns.detectionLayer => box c.DetectionLayer; Columns.cleanSamples => box c.CleanSamples
                    Columns.triggeredSamples => box c.TriggeredSamples ])
    |> Frame.ofRows

/// The colour limit: the 95th percentile of |deviation| (at least 1), so that one head with a tiny
/// clean σ does not wash out the rest; larger values saturate (their hover shows the value).
let colourLimit (cells: Cell list) =
    let a = cells |> List.map (fun c -> abs c.Deviation) |> List.filter System.Double.IsFinite |> Array.ofList
    if a.Length = 0 then 1.0 else max 1.0 (threshold 0.95 a)

/// One heatmap per attack: layers (rows; detection layers marked ◆) × heads, diverging colours on
/// one symmetric scale for all attacks (red: triggered inputs above the clean mean).
let chart (cells: Cell list) =
    let attacks = cells |> List.map (fun c -> c.Attack) |> List.distinct
    let limit = colourLimit cells
    let panel i attack =
        let cs = cells |> List.filter (fun c -> c.Attack = attack)
        let layers = cs |> List.map (fun c -> c.Layer, c.DetectionLayer) |> List.distinct |> List.sortBy fst
        let heads = cs |> List.map (fun c -> c.Head) |> List.distinct |> List.sort
        let label (l, det) = if det then $"L{l} ◆" else $"L{l}"
        let z =
            [ for l, _ in layers ->
                  [ for h in heads -> cs |> List.find (fun c -> c.Layer = l && c.Head = h) |> fun c -> c.Deviation ] ]
        Chart.Heatmap(z, heads |> List.map (fun h -> $"h{h}"), layers |> List.map label, Name = attack,
                      ColorScale = StyleParam.Colorscale.RdBu, ShowScale = (i = 0))
        |> GenericChart.mapTrace (Trace2DStyle.Heatmap(ZMin = -limit, ZMax = limit, ZMid = 0.0))
    attacks
    |> List.mapi panel
    |> Chart.Grid(nRows = (attacks.Length + 2) / 3, nCols = min 3 attacks.Length, SubPlotTitles = attacks)
    |> Chart.withTitle $"Whitened deviation of triggered inputs, mean (s − μ)/σ per layer and head (◆ detection layer; colour saturates at ±{limit:F1})"
    |> Chart.withSize (1200, 320 * ((attacks.Length + 2) / 3) + 60)
