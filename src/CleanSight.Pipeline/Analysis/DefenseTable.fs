/// Attack success and utility per defense for a set of evaluated models — the paper's Table 1 — as a
/// long table (table.csv: one row per model and defense, every rate), as bars (chart 5), and in the
/// paper's shape (one row per model, one "ASR / utility" column per defense, CleanSight's AUROC) as
/// Markdown. Shared by `demo`, `evaluate` and `table`.
module CleanSight.Pipeline.Analysis.DefenseTable

open System
open Deedle
open Plotly.NET
open CleanSight.Pipeline
open CleanSight.Pipeline.Defense

/// One evaluated model: its name (an attack's, or an evaluate folder's) and its metrics per defense,
/// in the order the defenses were evaluated.
type Model = { Name: string; Metrics: (string * Summary.DefenseMetrics)[] }

let private pct (x: float option) = match x with Some v -> $"{100.0 * v:F1}" | None -> "–"

let header =
    [ "attack"; "defense"; "ASR %"; "clean ASR %"; "clean utility %"; "triggered utility %"; "AUROC"; "TPR %"; "FPR %"; "pruned %"; "ms/sample"
      "FPR 95 % interval" ]

/// One row per (model, defense), every rate of `header`.
let rows (models: Model list) =
    [ for model in models do
          for name, m in model.Metrics ->
              [ model.Name; name; pct m.Asr; pct m.CleanAsr; pct m.Clean.Utility; pct m.Poisoned.Utility
                (match m.Auroc with Some a -> $"{a:F3}" | None -> "–"); pct m.Tpr; pct m.Fpr; pct m.PrunedFraction
                (match m.MsPerSample with Some v -> $"{v:F1}" | None -> "–")
                (match m.FprCi95 with Some ci -> Metrics.RateInterval.percentText ci | None -> "–") ] ]

/// The rows as a frame (table.csv).
let frame (models: Model list) =
    rows models |> List.mapi (fun i row -> i, Series(header, row |> List.map box)) |> Frame.ofRows

/// Every defense of the models, in the order they first appear.
let defenses (models: Model list) = models |> List.collect (fun m -> m.Metrics |> Array.map fst |> List.ofArray) |> List.distinct

let private metricOf (model: Model) (defense: string) = model.Metrics |> Array.tryFind (fst >> (=) defense) |> Option.map snd

/// Chart 5's bars: one group per model, one column per defense.
let chart (title: string) (axis: string) (value: Summary.DefenseMetrics -> float option) (models: Model list) =
    [ for d in defenses models ->
          Chart.Column(values = (models |> List.map (fun m -> metricOf m d |> Option.bind value |> Option.map ((*) 100.0) |> Option.defaultValue nan)),
                       Keys = (models |> List.map _.Name), Name = d) ]
    |> Chart.combine
    |> Chart.withTitle title
    |> Chart.withYAxisStyle (TitleText = axis)

/// Decimals that show one input of `n`: 0 up to 100 inputs, 1 up to 1000, …
let asrDecimals (n: int) = if n <= 100 then 0 else int (Math.Ceiling(Math.Log10(float n / 100.0)))

/// The paper's shape: a header row and one row per model — "ASR % / clean utility %" per defense
/// ("–" where a model was not evaluated under it), then CleanSight's detection AUROC when any model
/// was evaluated under CleanSight. ASR shows one triggered input (whole percents up to 100 inputs),
/// utility one decimal, AUROC two.
let paperRows (models: Model list) =
    let defenses = defenses models
    let cleansight = Defenses.name Defenses.CleanSight
    let withAuroc = defenses |> List.contains cleansight
    let cell (m: Summary.DefenseMetrics) =
        let asr = match m.Asr with Some a -> (100.0 * a).ToString("F" + string (asrDecimals m.PoisonedSamples)) | None -> "–"
        $"{asr} / {pct m.Clean.Utility}"
    let head = [ yield "attack"; yield! defenses; if withAuroc then yield "AUROC" ]
    let body =
        [ for model in models ->
              [ yield model.Name
                for d in defenses -> metricOf model d |> Option.map cell |> Option.defaultValue "–"
                if withAuroc then
                    yield metricOf model cleansight |> Option.bind _.Auroc |> Option.map (fun a -> $"{a:F2}") |> Option.defaultValue "–" ] ]
    head, body

/// `paperRows` as a Markdown table (one line per row, "\n" after each).
let markdown (models: Model list) =
    let head, body = paperRows models
    let line (cells: string list) = "| " + String.Join(" | ", cells |> List.map (fun c -> c.Replace("|", "\\|"))) + " |\n"
    line head + line (head |> List.map (fun _ -> "---")) + (body |> List.map line |> String.concat "")

/// Chart 5 below its heading: ASR and clean utility as bars, what one input weighs, the long table.
let sections (models: Model list) : Report.Section list =
    let counts (model: Model) = model.Metrics |> Array.tryHead |> Option.map (fun (_, m) -> m.CleanSamples, m.PoisonedSamples)
    [ Report.Figure(chart "Attack success rate (%) per defense" "ASR %" (fun m -> m.Asr) models)
      Report.Figure(chart "Clean utility (%, official VQA accuracy) per defense" "utility %" (fun m -> m.Clean.Utility) models)
      let interval = "The FPR's 95 % interval (Wilson) says how far the rate behind it may lie; metrics.json gives one for every rate."
      match models |> List.choose counts |> List.distinct with
      | [ clean, poisoned ] when clean > 0 ->
          Report.Text $"The table's rates are on {clean} clean and {poisoned} triggered test inputs: one clean input is {100.0 / float clean:G3} points. {interval}"
      | [] | [ _ ] -> ()
      | _ ->
          let each = [ for m in models do match counts m with Some(c, p) -> $"{m.Name} {c} clean and {p} triggered" | None -> () ]
          Report.Text $"""The table's rates are on test inputs of each model's own: {String.Join("; ", each)}. {interval}"""
      Report.Table(header, rows models) ]
