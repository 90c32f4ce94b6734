/// Where should CleanSight look on a model of another depth? The method notes place the detection
/// layers "where cross-modal fusion begins" and, for other depths, suggest an AUROC sweep on clean vs
/// synthetic-trigger inputs. Both can be measured without attacked data:
/// (1) fusion on clean inputs — how far the last prompt token's next-token distribution moves (KL)
///     when the image tokens are excluded from layer ℓ on, and each layer's share of that (the math is
///     `Defense.Fusion`'s, which `calibrate --layers fusion` applies);
/// (2) the sweep — detection AUROC per layer of clean inputs against the same inputs carrying a
///     trigger the defender makes up (a seeded noise patch or noise blend, not the attack's).
/// Beside them, for reporting only, the real trigger's AUROC per layer.
module CleanSight.Pipeline.Analysis.LayerSelection

open System
open Deedle
open Plotly.NET
open CleanSight.Core.Vision
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.World

/// A trigger the defender makes up, knowing nothing of the attack.
type Synthetic =
    /// a noise patch of the paper's BadNet size (30/336 of the side), at a place drawn per input
    | NoisePatch
    /// 0.2 · uniform noise + 0.8 · image, the noise drawn per input
    | NoiseBlend

let syntheticName = function NoisePatch -> "noise-patch" | NoiseBlend -> "noise-blend"

/// The synthetic trigger of kind `kind` for input `index`, drawn from (seed, index): never the
/// attacks' own seeds (they use 0) — the defender does not know them.
let synthetic (kind: Synthetic) (seed: int) (index: int) (image: RgbImage) =
    let key = 1_000_003 * (seed + 1) + index
    match kind with
    | NoisePatch ->
        let rng = Random(key)
        Triggers.apply (Triggers.BadNetPatch { Triggers.Defaults.badNet with Seed = key; Corner = Triggers.At(rng.NextDouble(), rng.NextDouble()) }) image
    | NoiseBlend -> Triggers.apply (Triggers.BlendedNoise { Triggers.Defaults.blended with Seed = key }) image

/// One model's clean fusion at one layer.
type FusionRow = { Model: string; Layer: int; KlFromLayer: float; LayerShare: float; Samples: int }

/// Mean knockout over clean inputs → one row per layer.
let fusionRows (model: string) (perInput: float[][]) =
    let layers = perInput.[0].Length
    let mean = Fusion.meanKnockout perInput
    let shares = Fusion.layerShares mean
    [ for l in 0 .. layers - 1 -> { Model = model; Layer = l; KlFromLayer = mean.[l]; LayerShare = shares.[l]; Samples = perInput.Length } ]

/// Detection AUROC of one trigger (the attack's, or a synthetic one) at one detection-layer set.
type SweepRow = { Attack: string; Trigger: string; Layers: int[]; Auroc: float }

let fusionFrame (rows: FusionRow list) =
    rows
    |> List.mapi (fun i r ->
        i, series [ "model" => box r.Model; "layer" => box r.Layer; "kl_from_layer" => box r.KlFromLayer
                    "layer_share" => box r.LayerShare; "samples" => box r.Samples ])
    |> Frame.ofRows

let sweepFrame (rows: SweepRow list) =
    rows
    |> List.mapi (fun i r ->
        i, series [ "attack" => box r.Attack; "trigger" => box r.Trigger
                    "layers" => box (String.Join(",", r.Layers)); "start" => box r.Layers.[0]; "width" => box r.Layers.Length
                    "auroc" => box r.Auroc ])
    |> Frame.ofRows

/// Left: each model's clean fusion share by layer. Right: per attack, single-layer detection AUROC of
/// the real trigger (solid) and the synthetic ones (dotted), the detection layers marked.
let chart (fusion: FusionRow list) (sweep: SweepRow list) (detectionLayers: int[]) =
    let byModel =
        fusion |> List.groupBy (fun r -> r.Model)
        |> List.map (fun (m, rs) -> Chart.Line(rs |> List.map (fun r -> r.Layer), rs |> List.map (fun r -> r.LayerShare), Name = $"fusion: {m}", ShowMarkers = true))
        |> Chart.combine
        |> Chart.withXAxisStyle (TitleText = "layer")
        |> Chart.withYAxisStyle (TitleText = "KL share (nats), clean inputs")
    let single = sweep |> List.filter (fun r -> r.Layers.Length = 1)
    let byTrigger =
        single |> List.groupBy (fun r -> r.Attack, r.Trigger)
        |> List.map (fun ((a, t), rs) ->
            let rs = rs |> List.sortBy (fun r -> r.Layers.[0])
            let dash = if t = "real" then StyleParam.DrawingStyle.Solid else StyleParam.DrawingStyle.Dot
            Chart.Line(rs |> List.map (fun r -> r.Layers.[0]), rs |> List.map (fun r -> r.Auroc), Name = $"{a}: {t}", ShowMarkers = true, LineDash = dash))
    let marks =
        detectionLayers |> Array.toList |> List.map (fun l ->
            Chart.Line([ l; l ], [ 0.0; 1.0 ], Name = "detection layer", ShowLegend = false, LineDash = StyleParam.DrawingStyle.Dot, LineColor = Color.fromString "grey"))
    let aurocs =
        Chart.combine (byTrigger @ marks)
        |> Chart.withXAxisStyle (TitleText = "detection layer (one)")
        |> Chart.withYAxisStyle (TitleText = "AUROC")
    Chart.Grid(nRows = 1, nCols = 2) [ byModel; aurocs ]
    |> Chart.withTitle "Where to look: clean fusion by layer (left); detection AUROC per layer, real vs made-up triggers (right)"
    |> Chart.withSize (1300, 480)

/// Writes DIR/layer-selection-fusion.csv, DIR/layer-selection-sweep.csv and DIR/layer-selection.html (each atomically).
let save (dir: string) (fusion: FusionRow list) (sweep: SweepRow list) (detectionLayers: int[]) =
    IO.Directory.CreateDirectory dir |> ignore
    fusionFrame fusion |> CleanSight.Pipeline.Files.saveCsv (IO.Path.Combine(dir, "layer-selection-fusion.csv"))
    sweepFrame sweep |> CleanSight.Pipeline.Files.saveCsv (IO.Path.Combine(dir, "layer-selection-sweep.csv"))
    let html = GenericChart.toEmbeddedHTML (chart fusion sweep detectionLayers)
    CleanSight.Pipeline.Files.writeText (IO.Path.Combine(dir, "layer-selection.html")) (fun w -> w.Write html)
