/// The paper's mechanism, measured: per decoder layer, the last prompt token's attention on the
/// image tokens over its attention on the prompt text after them — clean vs triggered inputs.
module CleanSight.Pipeline.Analysis.AttentionStealing

open Deedle
open Plotly.NET
open TorchSharp
open CleanSight.Core.Inference
open CleanSight.Core.Vision

/// One input observed at every decoder layer: the last prompt token's attention rows (layer order)
/// and the image span (first, last position) of its prompt.
type Observed = { Rows: AttentionRow[]; First: int64; Last: int64 }

/// One prefill (no decode) recording every layer's row.
let observe (session: LlavaSession) (image: RgbImage) (question: string) =
    use scope = torch.NewDisposeScope()
    let ids = session.Prompt(question).InputIds |> Array.map int64
    let struct (first, last) = AttentionRatio.ImageSpan(ids, int64 session.Config.ImageTokenIndex)
    let policy = RecordingPolicy [ 0 .. session.Config.Text.NumHiddenLayers - 1 ]
    session.Model.Prefill(ids, session.Pixels image, policy).Cache.Dispose()
    { Rows = policy.Rows.ToArray(); First = first; Last = last }

/// Per-layer, per-head (visual, prompt) attention sums of an observed input.
let sumsOf (o: Observed) =
    [| for row in o.Rows -> AttentionRatio.Sums(row, o.First, o.Last) |> Array.map (fun struct (v, p) -> v, p) |]

/// One input's per-layer, per-head (visual, prompt) attention sums of the last prompt token.
let sums (session: LlavaSession) (image: RgbImage) (question: string) = sumsOf (observe session image question)

/// Where the last prompt token's attention goes at one layer, mean over heads: BOS, the text between
/// BOS and the image, the image, the text after it (the four add up to 1).
type Partition = { Bos: float; Before: float; Image: float; After: float }

/// Per layer, the partition of an observed input's last-prompt-token attention.
let partitionOf (o: Observed) =
    [| for row in o.Rows ->
           let part = Array.zeroCreate<float> 4
           for h in 0 .. row.Heads - 1 do
               for j in 0 .. row.Keys - 1 do
                   let p = row.KeyPositions.[j]
                   let k = if p = 0L then 0 elif p < o.First then 1 elif p <= o.Last then 2 else 3
                   part.[k] <- part.[k] + float row.[h, j] / float row.Heads
           { Bos = part.[0]; Before = part.[1]; Image = part.[2]; After = part.[3] } |] // [layers]

/// Per layer, the mean partition over inputs (each input: `partitionOf`).
let meanPartition (perInput: Partition[][]) =
    let layers = perInput.[0].Length
    let mean f l = perInput |> Array.averageBy (fun input -> f input.[l])
    Array.init layers (fun l ->
        { Bos = mean (fun p -> p.Bos) l; Before = mean (fun p -> p.Before) l
          Image = mean (fun p -> p.Image) l; After = mean (fun p -> p.After) l })

/// The detector's feature at layers `ls` (in that order, all heads) from one input's sums.
let featuresAt (feature: CleanSight.Pipeline.Defense.Whitening.Feature) (ls: int[]) (sums: (float * float)[][]) =
    ls |> Array.collect (fun l -> sums.[l] |> Array.map (fun (v, p) -> CleanSight.Pipeline.Defense.Whitening.featureOf feature v p))

/// Detection AUROC at layers `ls`: the reference fitted on `reference` inputs' sums, distances of
/// `clean` (negatives) and `triggered` (positives).
let aurocAt feature whitening (ls: int[]) (reference: (float * float)[][][]) (clean: (float * float)[][][]) (triggered: (float * float)[][][]) =
    let r = CleanSight.Pipeline.Defense.Whitening.fit whitening (reference |> Array.map (featuresAt feature ls))
    let d xs = xs |> Array.map (featuresAt feature ls >> CleanSight.Pipeline.Defense.Whitening.distance r)
    CleanSight.Pipeline.Metrics.DetectionMetrics.auroc (d clean) (d triggered)

/// Column names of the frame, in one place.
module Columns =
    let attack = "attack"
    let condition = "condition"
    let layer = "layer"
    let meanRatio = "mean_ratio"
    let medianRatio = "median_ratio"
    let visualShare = "visual_share"
    let samples = "samples"
    let model = "model"
    let bos = "bos"
    let textBeforeImage = "text_before_image"
    let image = "image"
    let textAfterImage = "text_after_image"

type Row = { Attack: string; Condition: string; Layer: int; MeanRatio: float; MedianRatio: float; VisualShare: float; Samples: int }

let private median (xs: float[]) =
    let s = Array.sort xs
    if s.Length = 0 then nan elif s.Length % 2 = 1 then s.[s.Length / 2] else 0.5 * (s.[s.Length / 2 - 1] + s.[s.Length / 2])

/// Rows of one condition: per layer, over inputs and heads, the mean and median ratio and the mean
/// visual share v/(v+p).
let summarise (attack: string) (condition: string) (perInput: (float * float)[][][]) =
    let layers = perInput.[0].Length
    [ for l in 0 .. layers - 1 do
          let pairs = perInput |> Array.collect (fun input -> input.[l])
          let ratios = pairs |> Array.map (fun (v, p) -> v / max p 1e-12)
          { Attack = attack; Condition = condition; Layer = l
            MeanRatio = Array.average ratios; MedianRatio = median ratios
            VisualShare = pairs |> Array.averageBy (fun (v, p) -> v / max (v + p) 1e-12)
            Samples = perInput.Length } ]

let toFrame (rows: Row list) =
    rows
    |> List.mapi (fun i r ->
        i, series [ Columns.attack => box r.Attack; Columns.condition => box r.Condition; Columns.layer => box r.Layer
                    Columns.meanRatio => box r.MeanRatio; Columns.medianRatio => box r.MedianRatio
                    Columns.visualShare => box r.VisualShare; Columns.samples => box r.Samples ])
    |> Frame.ofRows

/// The partition frame: one row per (model, condition, layer).
let partitionFrame (rows: (string * string * Partition[]) list) =
    [ for model, condition, byLayer in rows do
          for l, p in Array.indexed byLayer ->
              series [ Columns.model => box model; Columns.condition => box condition; Columns.layer => box l
                       Columns.bos => box p.Bos; Columns.textBeforeImage => box p.Before
                       Columns.image => box p.Image; Columns.textAfterImage => box p.After ] ]
    |> List.mapi (fun i s -> i, s)
    |> Frame.ofRows

/// One panel per attack: median visual/prompt ratio by layer, clean vs triggered (log scale), with
/// the detection layers marked.
let chart (rows: Row list) (detectionLayers: int[]) =
    let attacks = rows |> List.map (fun r -> r.Attack) |> List.distinct
    let panel attack =
        let line condition =
            let rs = rows |> List.filter (fun r -> r.Attack = attack && r.Condition = condition) |> List.sortBy (fun r -> r.Layer)
            Chart.Line(rs |> List.map (fun r -> r.Layer), rs |> List.map (fun r -> r.MedianRatio), Name = $"{attack}: {condition}", ShowMarkers = true)
        let marks =
            detectionLayers |> Array.map (fun l ->
                Chart.Line([ l; l ], [ 1e-3; 1e3 ], Name = "detection layer", ShowLegend = false, LineDash = StyleParam.DrawingStyle.Dot, LineColor = Color.fromString "grey"))
        Chart.combine ([ line "clean"; line "triggered" ] @ List.ofArray marks)
        |> Chart.withYAxisStyle (AxisType = StyleParam.AxisType.Log, TitleText = "visual / prompt")
        |> Chart.withXAxisStyle (TitleText = "layer")
    attacks
    |> List.map panel
    |> Chart.Grid(nRows = (attacks.Length + 2) / 3, nCols = min 3 attacks.Length)
    |> Chart.withTitle "Attention stealing by layer: last prompt token, median over inputs and heads"
    |> Chart.withSize (1200, 380 * ((attacks.Length + 2) / 3))

/// Writes the frame as DIR/attention-stealing.csv and the chart as DIR/attention-stealing.html (each atomically).
let save (dir: string) (rows: Row list) (detectionLayers: int[]) =
    System.IO.Directory.CreateDirectory dir |> ignore
    toFrame rows |> CleanSight.Pipeline.Files.saveCsv (System.IO.Path.Combine(dir, "attention-stealing.csv"))
    let html = GenericChart.toEmbeddedHTML (chart rows detectionLayers)
    CleanSight.Pipeline.Files.writeText (System.IO.Path.Combine(dir, "attention-stealing.html")) (fun w -> w.Write html)
