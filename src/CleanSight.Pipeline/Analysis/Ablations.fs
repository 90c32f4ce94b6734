/// Chart 6: the two ablations the demo can afford. τ: purification forced on every input at several
/// τ (relative to the uniform share 1/T) — ASR against clean utility. Clean samples: references
/// fitted on n of the calibration samples (seeded draws), the FPR measured on the samples not drawn.
module CleanSight.Pipeline.Analysis.Ablations

open System
open Deedle
open Plotly.NET
open CleanSight.Pipeline
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening

// ---- τ ------------------------------------------------------------------------------------------

/// One τ: ASR on triggered inputs and utility on clean ones with purification forced on every
/// input; `TauRelative = None` is no purification (the undefended model on the same inputs).
type TauRow =
    { Attack: string
      TauRelative: float option
      Asr: float
      CleanUtility: float
      PrunedFraction: float
      CleanSamples: int
      TriggeredSamples: int }

let tauRow (attack: string) (tauRelative: float option) (m: Summary.DefenseMetrics) =
    { Attack = attack; TauRelative = tauRelative
      Asr = defaultArg m.Asr nan; CleanUtility = defaultArg m.Clean.Utility nan
      PrunedFraction = defaultArg m.PrunedFraction nan
      CleanSamples = m.CleanSamples; TriggeredSamples = m.PoisonedSamples }

let tauLabel (r: TauRow) = match r.TauRelative with Some t -> $"τ = {t:G3}/T" | None -> "no purification"

// ---- clean-sample count -------------------------------------------------------------------------

/// One reference size n: the FPR on held-out clean samples over `Repeats` seeded draws.
type SampleCountRow =
    { Attack: string
      Samples: int
      Repeats: int
      HeldOut: int
      FprMean: float
      FprMin: float
      FprMax: float
      /// the FPR the threshold aims at: 1 − quantile
      TargetFpr: float }

/// For each n in `sizes` (2 ≤ n < samples, and n ≥ `Whitening.conformalMinimum` under the conformal
/// rule; others are skipped): `repeats` draws of n clean samples (seeded by `seed` and n); each fits a
/// reference and γ as calibration does with `settings` (whitening, conditioning, quantile, threshold
/// from in-sample or leave-one-out distances, threshold rule), and counts the held-out samples with d > γ.
let sampleCount (attack: string) (settings: Calibration.Settings) (clean: Calibration.Measured[])
                (sizes: int list) (repeats: int) (seed: int) =
    if repeats < 1 then invalidArg (nameof repeats) $"need at least one draw, got {repeats}"
    let least =
        match settings.ThresholdRule with
        | Interpolated -> 2
        | ConformalRank -> max 2 (conformalMinimum settings.Quantile)
    [ for n in sizes do
          if n >= least && n < clean.Length then
              let rng = Random(seed * 7919 + n)
              let fprs =
                  Array.init repeats (fun _ ->
                      let order = Array.init clean.Length id
                      for i in order.Length - 1 .. -1 .. 1 do // Fisher–Yates
                          let j = rng.Next(i + 1)
                          let t = order.[i]
                          order.[i] <- order.[j]
                          order.[j] <- t
                      let fitted = order.[.. n - 1] |> Array.map (fun i -> clean.[i])
                      let heldOut = order.[n ..] |> Array.map (fun i -> clean.[i])
                      let t = Calibration.fitReference settings fitted
                      let flagged = heldOut |> Array.filter (fun m -> Calibration.distanceTo t m > t.Threshold) |> Array.length
                      float flagged / float heldOut.Length)
              yield { Attack = attack; Samples = n; Repeats = repeats; HeldOut = clean.Length - n
                      FprMean = Array.average fprs; FprMin = Array.min fprs; FprMax = Array.max fprs
                      TargetFpr = 1.0 - settings.Quantile } ]

// ---- frames and charts --------------------------------------------------------------------------

/// Column names of the frames, in one place.
module Columns =
    let attack = "attack"
    let label = "label"
    let tauRelative = "tau_relative"
    let asr = "asr"
    let cleanUtility = "clean_utility"
    let prunedFraction = "pruned_fraction"
    let cleanSamples = "clean_samples"
    let triggeredSamples = "triggered_samples"
    let samples = "samples"
    let repeats = "repeats"
    let heldOut = "held_out"
    let fprMean = "fpr_mean"
    let fprMin = "fpr_min"
    let fprMax = "fpr_max"
    let targetFpr = "target_fpr"

let tauFrame (rows: TauRow list) =
    rows
    |> List.mapi (fun i r ->
        i, series [ Columns.attack => box r.Attack; Columns.label => box (tauLabel r)
                    Columns.tauRelative => box (defaultArg r.TauRelative nan)
                    Columns.asr => box r.Asr; Columns.cleanUtility => box r.CleanUtility
                    Columns.prunedFraction => box r.PrunedFraction; Columns.cleanSamples => box r.CleanSamples
                    Columns.triggeredSamples => box r.TriggeredSamples ])
    |> Frame.ofRows

let sampleCountFrame (rows: SampleCountRow list) =
    rows
    |> List.mapi (fun i r ->
        i, series [ Columns.attack => box r.Attack; Columns.samples => box r.Samples; Columns.repeats => box r.Repeats
                    Columns.heldOut => box r.HeldOut; Columns.fprMean => box r.FprMean; Columns.fprMin => box r.FprMin
                    Columns.fprMax => box r.FprMax; Columns.targetFpr => box r.TargetFpr ])
    |> Frame.ofRows

/// ASR (%) against clean utility (%), one line per attack through its τ values (the first attack's
/// points labelled, every point's τ on hover).
let tauChart (rows: TauRow list) =
    let attacks = rows |> List.map (fun r -> r.Attack) |> List.distinct
    [ for i, a in List.indexed attacks ->
          let rs = rows |> List.filter (fun r -> r.Attack = a) |> List.sortBy (fun r -> defaultArg r.TauRelative infinity)
          let mode = if i = 0 then StyleParam.Mode.Lines_Markers_Text else StyleParam.Mode.Lines_Markers
          Chart.Scatter(rs |> List.map (fun r -> 100.0 * r.CleanUtility), rs |> List.map (fun r -> 100.0 * r.Asr), mode, Name = a,
                        MultiText = (rs |> List.map tauLabel), TextPosition = StyleParam.TextPosition.TopCenter) ]
    |> Chart.combine
    |> Chart.withTitle "τ ablation: ASR against clean utility, purification forced on every input"
    |> Chart.withXAxisStyle (TitleText = "clean utility %")
    |> Chart.withYAxisStyle (TitleText = "ASR %")
    |> Chart.withSize (900, 520)

/// Held-out clean FPR (%, mean over draws) against the number of clean reference samples, with the target.
let sampleCountChart (rows: SampleCountRow list) =
    let attacks = rows |> List.map (fun r -> r.Attack) |> List.distinct
    let sizes = rows |> List.map (fun r -> r.Samples) |> List.distinct |> List.sort
    [ for a in attacks ->
          let rs = rows |> List.filter (fun r -> r.Attack = a) |> List.sortBy (fun r -> r.Samples)
          Chart.Line(rs |> List.map (fun r -> r.Samples), rs |> List.map (fun r -> 100.0 * r.FprMean), Name = a, ShowMarkers = true)
      match rows with
      | r :: _ when not sizes.IsEmpty ->
          yield Chart.Line([ List.head sizes; List.last sizes ], [ 100.0 * r.TargetFpr; 100.0 * r.TargetFpr ], Name = "target FPR",
                           LineDash = StyleParam.DrawingStyle.Dash, LineColor = Color.fromString "grey")
      | _ -> () ]
    |> Chart.combine
    |> Chart.withTitle "Clean samples in the reference → false-positive rate on held-out clean inputs"
    |> Chart.withXAxisStyle (TitleText = "clean reference samples", AxisType = StyleParam.AxisType.Log)
    |> Chart.withYAxisStyle (TitleText = "FPR %")
    |> Chart.withSize (900, 520)
