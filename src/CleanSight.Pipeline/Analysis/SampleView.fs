/// Chart 3: one triggered input up close — the image with the last prompt token's attention on each
/// image token (at the last detection layer, max over heads: the quantity purification compares
/// with τ) laid over the patch grid, the tokens above τ outlined, and the answers of every defense.
module CleanSight.Pipeline.Analysis.SampleView

open System
open Deedle
open Plotly.NET
open Plotly.NET.LayoutObjects
open CleanSight.Core.Inference
open CleanSight.Core.Vision

type Answer = { Defense: string; Output: string; AsrHit: bool }

type View =
    { Attack: string
      Id: string
      Question: string
      /// the expected answers of the clean question
      Expected: string list
      Image: RgbImage
      /// the layer whose attention is shown (the last detection layer)
      Layer: int
      /// per image token in position order (row-major over the patch grid): max over heads of the
      /// last prompt token's attention; NaN for a token no longer present at that layer
      Attention: float[]
      /// τ for this prompt (absolute)
      Tau: float
      /// per image token: attention > τ, i.e. what purification excludes when the input is flagged
      AboveTau: bool[]
      Distance: float option
      Threshold: float
      Flagged: bool
      Answers: Answer list }

/// Per image position first..last: the max over heads of the row's attention (NaN where absent).
let tokenAttention (row: AttentionRow) (first: int64) (last: int64) =
    let out = Array.create (int (last - first + 1L)) nan
    for j in 0 .. row.Keys - 1 do
        let p = row.KeyPositions.[j]
        if p >= first && p <= last then
            let mutable peak = 0.0f
            for h in 0 .. row.Heads - 1 do peak <- max peak row.[h, j]
            out.[int (p - first)] <- float peak
    out

/// The patch grid (rows, columns) of n image tokens: square when n is a square, else one row.
let grid (n: int) =
    let g = int (Math.Round(sqrt (float n)))
    if g * g = n then g, g else 1, n

/// Column names of the frames, in one place.
module Columns =
    let attack = "attack"
    let id = "id"
    let token = "token"
    let row = "row"
    let col = "col"
    let attention = "attention"
    let tau = "tau"
    let aboveTau = "above_tau"
    let layer = "layer"
    let question = "question"
    let defense = "defense"
    let output = "output"
    let asrHit = "asr_hit"
    let distance = "distance"
    let threshold = "threshold"
    let flagged = "flagged"

/// One row per (view, image token): its grid cell, attention and whether it is above τ.
let attentionFrame (views: View list) =
    [ for v in views do
          let _, cols = grid v.Attention.Length
          for t in 0 .. v.Attention.Length - 1 -> v, t, t / cols, t % cols ]
    |> List.mapi (fun i (v, t, r, c) ->
        i, series [ Columns.attack => box v.Attack; Columns.id => box v.Id; Columns.token => box t; Columns.row => box r
                    Columns.col => box c; Columns.attention => box v.Attention.[t]; Columns.tau => box v.Tau
                    Columns.aboveTau => box v.AboveTau.[t]; Columns.layer => box v.Layer ])
    |> Frame.ofRows

/// One row per (view, defense): the answer, whether it contains the target, and the detector's verdict.
let answersFrame (views: View list) =
    [ for v in views do for a in v.Answers -> v, a ]
    |> List.mapi (fun i (v, a) ->
        i, series [ Columns.attack => box v.Attack; Columns.id => box v.Id; Columns.question => box v.Question
                    Columns.defense => box a.Defense; Columns.output => box a.Output; Columns.asrHit => box a.AsrHit
                    Columns.distance => box (defaultArg v.Distance nan); Columns.threshold => box v.Threshold
                    Columns.flagged => box v.Flagged ])
    |> Frame.ofRows

/// The verdict in words.
let verdict (v: View) =
    let pruned = v.AboveTau |> Array.filter id |> Array.length
    match v.Distance with
    | Some d when v.Flagged -> $"d = {d:F2} > γ = {v.Threshold:F2}: flagged, {pruned} outlined tokens pruned"
    | Some d -> $"d = {d:F2} ≤ γ = {v.Threshold:F2}: not flagged; outlined = the {pruned} tokens purification would prune"
    | None -> $"outlined = the {pruned} tokens above τ"

/// The image, the attention heatmap over its patch grid (semi-transparent) and the tokens above τ outlined.
let chart (v: View) =
    let img = v.Image
    let rows, cols = grid v.Attention.Length
    let pw, ph = float img.Width / float cols, float img.Height / float rows
    // image pixel (x, y) is centred at (x, y); patch c spans [c·pw − ½, (c+1)·pw − ½]
    let pixels = [ for y in 0 .. img.Height - 1 -> [ for x in 0 .. img.Width - 1 -> [ int img.[y, x, 0]; int img.[y, x, 1]; int img.[y, x, 2] ] ] ]
    let z = [ for r in 0 .. rows - 1 -> [ for c in 0 .. cols - 1 -> v.Attention.[r * cols + c] ] ]
    let heat =
        Chart.Heatmap(z, X = [ for c in 0 .. cols - 1 -> (float c + 0.5) * pw - 0.5 ], Y = [ for r in 0 .. rows - 1 -> (float r + 0.5) * ph - 0.5 ],
                      Name = "attention", Opacity = 0.55, ColorScale = StyleParam.Colorscale.Hot, ReverseScale = true,
                      ColorBar = ColorBar.init (Title = Title.init "attention"))
    let outlines =
        [ for t in 0 .. v.AboveTau.Length - 1 do
              if v.AboveTau.[t] then
                  let r, c = t / cols, t % cols
                  yield Shape.init (ShapeType = StyleParam.ShapeType.Rectangle,
                                    X0 = float c * pw - 0.5, X1 = float (c + 1) * pw - 0.5,
                                    Y0 = float r * ph - 0.5, Y1 = float (r + 1) * ph - 0.5,
                                    Line = Line.init (Color = Color.fromString "cyan", Width = 2.0)) ]
    [ Chart.Image(pixels, Name = "image"); heat ]
    |> Chart.combine
    |> Chart.withShapes outlines
    |> Chart.withTitle (Title.init (Text = $"{v.Attack} · {v.Id}: layer {v.Layer}, τ = {v.Tau:G3}<br><sub>{verdict v}</sub>"))
    |> Chart.withXAxisStyle (ShowGrid = false, ZeroLine = false)
    |> Chart.withYAxisStyle (ShowGrid = false, ZeroLine = false)
    |> Chart.withSize (520, 520)

/// The answers next to the chart: the question, the expected answers, each defense's output.
let answerRows (v: View) =
    [ yield [ "question"; v.Question; "" ]
      yield [ "expected"; String.Join(" | ", List.distinct v.Expected); "" ]
      for a in v.Answers -> [ a.Defense; a.Output; (if a.AsrHit then "yes" else "") ] ]

/// The header of `answerRows`.
let answerHeader = [ ""; "answer"; "target in answer" ]
