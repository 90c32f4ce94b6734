/// `defend`'s pictures of your own inputs: where their distances fall against γ, the most suspicious
/// flagged inputs up close (the attention that purification cut, the answer with and without the
/// defense), and every flagged input in a table — DIR/report.html and DIR/frames/*.csv.
module CleanSight.Pipeline.Analysis.DefendReport

open System
open System.IO
open Deedle
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense

/// Each record's distance and threshold, as chart 1 and distances.csv take them.
let scored (records: Defend.Record[]) =
    records |> Array.map (fun r -> ({ Id = r.Id; Task = r.Task; Distance = r.Verdict.Distance; Threshold = r.Verdict.Threshold }: Detection.Scored))

/// One row per input: id, task, d, γ, flagged (no split: whether an input is triggered is not known here).
let distancesFrame (records: Defend.Record[]) =
    records
    |> Array.mapi (fun i r ->
        i, series [ Detection.Columns.id => box r.Id; Detection.Columns.task => box r.Task
                    Detection.Columns.distance => box r.Verdict.Distance; Detection.Columns.threshold => box r.Verdict.Threshold
                    Detection.Columns.flagged => box r.Verdict.Flagged ])
    |> Frame.ofRows

/// The flagged records shown up close: at most `count`, the largest distance first.
let suspicious (count: int) (records: Defend.Record[]) =
    records |> Array.filter (fun r -> r.Verdict.Flagged) |> Array.sortByDescending (fun r -> r.Verdict.Distance) |> Array.truncate count

/// One flagged input up close: its image, the last prompt token's attention at the layer the
/// exclusion starts at (observed in one more prefill), the excluded tokens outlined, both answers.
let view (session: LlavaSession) (calibration: Calibration.Calibration) (item: Dataset.Item) (image: RgbImage) (r: Defend.Record) : SampleView.View =
    let o = AttentionStealing.observe session image item.Question
    let row = o.Rows |> Array.find (fun x -> x.Layer = r.Verdict.FromLayer)
    let pruned = Set.ofArray r.Verdict.Pruned
    { Attack = "input"; Id = r.Id; Question = r.Question; Expected = item.Answers; Image = image; Layer = r.Verdict.FromLayer
      Attention = SampleView.tokenAttention row o.First o.Last
      Tau = Detector.tauValue calibration.Settings.Tau row.Keys
      AboveTau = [| for p in o.First .. o.Last -> pruned.Contains p |]
      Distance = Some r.Verdict.Distance; Threshold = r.Verdict.Threshold; Flagged = r.Verdict.Flagged
      Answers = [ { Defense = "cleansight"; Output = r.Output; AsrHit = false }
                  { Defense = "without the defense"; Output = r.Undefended; AsrHit = false } ] }

// beside a view: the question and both answers (no target is known here, so no "target in answer")
let private answerHeader = [ ""; "answer" ]

let private answerRows (v: SampleView.View) =
    [ yield [ "question"; v.Question ]
      if not v.Expected.IsEmpty then yield [ "expected"; String.Join(" | ", List.distinct v.Expected) ]
      for a in v.Answers -> [ a.Defense; a.Output ] ]

let private flaggedHeader = [ "id"; "task"; "question"; "d"; "γ"; "image tokens excluded"; "answer under CleanSight"; "answer without the defense" ]

let private flaggedRows (records: Defend.Record[]) =
    [ for r in records |> Array.filter (fun r -> r.Verdict.Flagged) ->
          [ r.Id; r.Task; r.Question; $"{r.Verdict.Distance:G4}"; $"{r.Verdict.Threshold:G4}"
            $"{r.Verdict.Pruned.Length} of {r.Verdict.VisualTokens}"; r.Output; r.Undefended ] ]

/// Writes DIR/frames/{distances,sample-attention,sample-answers}.csv and DIR/report.html: `intro` at
/// the top, then the distances, the `views` (the most suspicious inputs) and the flagged inputs.
let write (dir: string) (title: string) (intro: string list) (records: Defend.Record[]) (views: SampleView.View list) =
    let frames = Path.Combine(dir, "frames")
    Directory.CreateDirectory frames |> ignore
    distancesFrame records |> Files.saveCsv (Path.Combine(frames, "distances.csv"))
    SampleView.attentionFrame views |> Files.saveCsv (Path.Combine(frames, "sample-attention.csv"))
    SampleView.answersFrame views |> Files.saveCsv (Path.Combine(frames, "sample-answers.csv"))
    let flagged, kept = records |> Array.partition (fun r -> r.Verdict.Flagged)
    let pct n = 100.0 * float n / float (max 1 records.Length)
    Report.write (Path.Combine(dir, "report.html")) title
        [ for line in intro -> Report.Text line
          yield Report.Heading "1. Distances of your inputs to the clean reference"
          yield Report.Text $"{flagged.Length} of {records.Length} inputs flagged ({pct flagged.Length:F1} %%): d > γ of the clean reference of their task. On clean inputs the calibration expects about its target false-positive rate to be flagged."
          yield Report.Figure(Detection.histogramOf "distance to the clean reference" [ "not flagged", scored kept; "flagged", scored flagged ])
          if not views.IsEmpty then
              yield Report.Heading "2. The most suspicious inputs up close"
              yield Report.Text "The last prompt token's attention on each image token at the layer the exclusion starts at (max over heads), the excluded tokens outlined, and the answer with and without the defense."
              for v in views -> Report.Side [ Report.Figure(SampleView.chart v); Report.Table(answerHeader, answerRows v) ]
          yield Report.Heading $"{(if views.IsEmpty then 2 else 3)}. Every flagged input"
          if flagged.Length = 0 then yield Report.Text "None."
          else yield Report.Table(flaggedHeader, flaggedRows records) ]
