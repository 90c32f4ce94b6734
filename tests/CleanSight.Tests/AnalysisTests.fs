/// The report's frames on synthetic data: shapes and values of the layer × head deviation, the
/// per-sample view, the ROC and distance frames, the two ablations; the demo's config hash; the
/// recording policy that rides along a defense; progress modes and line throttling.
module CleanSight.Tests.AnalysisTests

open System
open System.IO
open Deedle
open Expecto
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening

let private close (tol: float) (actual: float) (expected: float) (what: string) =
    Expect.isTrue (abs (actual - expected) <= tol) $"{what}: {actual} vs {expected} (tolerance {tol})"

/// n rows of p features, seeded normal noise with a per-feature mean and scale.
let private gaussian (seed: int) (n: int) (mean: int -> float) (scale: int -> float) (p: int) =
    let rng = Random(seed)
    let normal () = sqrt (-2.0 * log (1.0 - rng.NextDouble())) * cos (2.0 * Math.PI * rng.NextDouble())
    Array.init n (fun _ -> Array.init p (fun j -> mean j + scale j * normal ()))

/// An attention row over positions 0..keys-1 with weights w h j.
let private row (layer: int) (heads: int) (keys: int) (w: int -> int -> float32) =
    AttentionRow(layer, heads, int64 (keys - 1), Array.init keys int64, Array.init (heads * keys) (fun i -> w (i / keys) (i % keys)))

[<Tests>]
let tests =
    testList "analysis frames" [
        testList "attention partition" [
            test "partitionOf splits each layer's last-token attention into BOS, text before, image, text after (mean over heads)" {
                // positions 0..5, image at 2..3; head 0 spreads, head 1 splits BOS / one image token
                let w0 = [| 0.1f; 0.1f; 0.2f; 0.2f; 0.2f; 0.2f |]
                let w1 = [| 0.5f; 0.0f; 0.0f; 0.5f; 0.0f; 0.0f |]
                let layer l = row l 2 6 (fun h j -> if h = 0 then w0.[j] else w1.[j])
                let observed: AttentionStealing.Observed = { Rows = [| layer 0; layer 1 |]; First = 2L; Last = 3L }
                let parts = AttentionStealing.partitionOf observed
                Expect.equal parts.Length 2 "one per observed layer"
                let p = parts.[0]
                close 1e-6 p.Bos 0.30 "BOS"
                close 1e-6 p.Before 0.05 "text before the image"
                close 1e-6 p.Image 0.45 "image"
                close 1e-6 p.After 0.20 "text after the image"
                close 1e-6 (p.Bos + p.Before + p.Image + p.After) 1.0 "adds up to 1"
                let mean = AttentionStealing.meanPartition [| parts; [| { p with Image = 0.25 }; p |] |]
                close 1e-6 mean.[0].Image 0.35 "mean over inputs"
                close 1e-6 mean.[1].Image 0.45 "per layer"
            }
        ]
        testList "head deviation (chart 2)" [
            test "a triggered shift of k σ in one layer and head reads k there and about 0 elsewhere" {
                let layers, heads = [| 0; 1; 2 |], 2
                let clean = gaussian 1 400 (fun j -> float j) (fun j -> 0.5 + 0.1 * float j) 6
                let reference = fit Diagonal clean
                // triggered = the clean mean, plus 3 σ at layer 1, head 0 (feature 2)
                let triggered = Array.init 5 (fun _ -> Array.init 6 (fun j -> reference.Mean.[j] + (if j = 2 then 3.0 * reference.Std.[j] else 0.0)))
                let cells = HeadDeviation.compute "badnet" layers heads [| 1; 2 |] clean triggered
                Expect.equal cells.Length 6 "one cell per layer and head"
                for c in cells do
                    let expected = if c.Layer = 1 && c.Head = 0 then 3.0 else 0.0
                    close 1e-9 c.Deviation expected $"deviation at L{c.Layer} h{c.Head}"
                    Expect.equal c.DetectionLayer (c.Layer >= 1) "detection layers marked"
                    Expect.equal (c.CleanSamples, c.TriggeredSamples) (400, 5) "sample counts"
                let frame = HeadDeviation.toFrame cells
                Expect.equal frame.RowCount 6 "frame rows"
                Expect.containsAll frame.ColumnKeys [ "attack"; "layer"; "head"; "deviation"; "clean_mean"; "clean_std"; "detection_layer" ] "frame columns"
                close 1e-9 (frame.GetColumn<float>("deviation").Sum()) 3.0 "frame deviations sum"
            }
            test "featuresOf flattens [input][layer][head] layer-major, as the detector concatenates layers" {
                let sums = [| [| [| 1.0, 2.0; 3.0, 1.0 |]; [| 4.0, 4.0; 0.0, 5.0 |] |] |]
                let f = HeadDeviation.featuresOf Ratio sums
                Expect.equal f.Length 1 "one input"
                Array.iteri2 (fun j a e -> close 1e-9 a e $"feature {j}") f.[0] [| 0.5; 3.0; 1.0; 0.0 |]
                close 1e-9 (HeadDeviation.featuresOf VisualShare sums).[0].[0] (1.0 / 3.0) "visual share"
            }
            test "a triggered input with the wrong feature count is refused with the numbers" {
                try
                    HeadDeviation.compute "a" [| 0; 1 |] 2 [| 1 |] (gaussian 2 5 float (fun _ -> 1.0) 4) [| [| 1.0 |] |] |> ignore
                    failtest "expected an ArgumentException"
                with :? ArgumentException as e -> Expect.stringContains e.Message "2 layers × 2 heads = 4" "message names the shape"
            }
        ]
        testList "per-sample view (chart 3)" [
            test "token attention is the max over heads on the image positions, NaN where a token is gone" {
                // 2 heads over positions 0..7; image tokens at 2..5; position 4 excluded earlier (absent)
                let positions = [| 0L; 1L; 2L; 3L; 5L; 6L; 7L |]
                let w h j = float32 (0.01 * float (h + 1) * float (j + 1))
                let r = AttentionRow(3, 2, 7L, positions, Array.init (2 * positions.Length) (fun i -> w (i / positions.Length) (i % positions.Length)))
                let a = SampleView.tokenAttention r 2L 5L
                Expect.equal a.Length 4 "one value per image position"
                close 1e-6 a.[0] (float (w 1 2)) "position 2: head 1 is larger"
                close 1e-6 a.[1] (float (w 1 3)) "position 3"
                Expect.isTrue (Double.IsNaN a.[2]) "position 4 absent"
                close 1e-6 a.[3] (float (w 1 4)) "position 5 is key index 4"
            }
            test "the patch grid is square when it can be" {
                Expect.equal (SampleView.grid 36) (6, 6) "36 tokens"
                Expect.equal (SampleView.grid 576) (24, 24) "LLaVA-1.5"
                Expect.equal (SampleView.grid 10) (1, 10) "not a square"
            }
            test "frames: one row per token with its grid cell, one row per answer" {
                let view: SampleView.View =
                    { Attack = "badnet"; Id = "test-1"; Question = "What colour is the circle?"; Expected = [ "red" ]
                      Image = RgbImage(12, 12, Array.zeroCreate (12 * 12 * 3)); Layer = 4
                      Attention = Array.init 9 (fun t -> float t / 10.0); Tau = 0.55
                      AboveTau = Array.init 9 (fun t -> float t / 10.0 > 0.55); Distance = Some 3.0; Threshold = 2.0; Flagged = true
                      Answers = [ { Defense = "none"; Output = "you have been hacked lol"; AsrHit = true }
                                  { Defense = "cleansight"; Output = "red"; AsrHit = false } ] }
                let tokens = SampleView.attentionFrame [ view ]
                Expect.equal tokens.RowCount 9 "3 × 3 tokens"
                Expect.equal (tokens.GetColumn<int>("row") |> Series.values |> List.ofSeq) [ 0; 0; 0; 1; 1; 1; 2; 2; 2 ] "rows"
                Expect.equal (tokens.GetColumn<int>("col") |> Series.values |> List.ofSeq) [ 0; 1; 2; 0; 1; 2; 0; 1; 2 ] "columns"
                Expect.equal (tokens.GetColumn<bool>("above_tau") |> Series.values |> Seq.filter id |> Seq.length) 3 "tokens 6, 7, 8 above τ"
                let answers = SampleView.answersFrame [ view ]
                Expect.equal answers.RowCount 2 "one row per defense"
                Expect.equal (answers.GetColumn<string>("output").[1]) "red" "cleansight's answer"
                Expect.stringContains (SampleView.verdict view) "flagged, 3 outlined tokens pruned" "verdict in words"
            }
        ]
        testList "detection (chart 4)" [
            let scored threshold (xs: (string * float)[]) =
                xs |> Array.map (fun (id, d) -> ({ Id = id; Task = "vqa"; Distance = d; Threshold = threshold }: Detection.Scored))
            let d: Detection.Distances =
                { Attack = "badnet"; Clean = scored 1.5 [| "a", 0.5; "b", 1.0; "c", 2.0 |]; Triggered = scored 1.5 [| "a", 1.8; "b", 3.0 |] }
            test "ROC frame: from (0, 0) to (1, 1), with the attack's AUROC" {
                let f = Detection.rocFrame [ d ]
                let fpr = f.GetColumn<float>("fpr") |> Series.values |> Array.ofSeq
                let tpr = f.GetColumn<float>("tpr") |> Series.values |> Array.ofSeq
                Expect.equal (fpr.[0], tpr.[0]) (0.0, 0.0) "starts at the origin"
                Expect.equal (Array.last fpr, Array.last tpr) (1.0, 1.0) "ends at (1, 1)"
                Expect.equal f.RowCount 6 "5 distinct scores + the −∞ threshold"
                // pairs (clean, triggered) ordered: 1.8 > 0.5, 1.0; 3.0 > all → 5 of 6
                close 1e-12 (f.GetColumn<float>("auroc").[0]) (5.0 / 6.0) "AUROC"
            }
            test "distances frame: every input once, flagged = d > γ" {
                let f = Detection.distancesFrame [ d ]
                Expect.equal f.RowCount 5 "3 clean + 2 triggered"
                Expect.equal (f.GetColumn<bool>("flagged") |> Series.values |> List.ofSeq) [ false; false; true; true; true ] "flags"
            }
            test "distances frame: each input against its own task's γ" {
                let caption = ({ Id = "c"; Task = "caption"; Distance = 2.0; Threshold = 2.5 }: Detection.Scored)
                let f = Detection.distancesFrame [ { d with Clean = Array.append d.Clean [| caption |] } ]
                Expect.equal (f.GetColumn<bool>("flagged") |> Series.values |> List.ofSeq) [ false; false; true; false; true; true ]
                    "2.0 flagged against the question γ 1.5, not against the caption γ 2.5"
                Expect.equal (f.GetColumn<string>("task") |> Series.values |> List.ofSeq |> List.distinct) [ "vqa"; "caption" ] "task column"
                Expect.equal (f.GetColumn<float>("threshold").[3]) 2.5 "the caption's γ"
            }
            test "histogram: the clean and the triggered distances as two histograms, and one γ line per task" {
                let caption = ({ Id = "c"; Task = "caption"; Distance = 2.0; Threshold = 2.5 }: Detection.Scored)
                let json = Detection.histogram { d with Clean = Array.append d.Clean [| caption |] } |> Plotly.NET.GenericChart.toJson
                use doc = System.Text.Json.JsonDocument.Parse json
                let traces =
                    [ for t in doc.RootElement.GetProperty("data").EnumerateArray() -> t.GetProperty("type").GetString(), t.GetProperty("name").GetString() ]
                Expect.equal (traces |> List.sort)
                    [ "histogram", "clean"; "histogram", "triggered"; "scatter", "threshold γ (caption)"; "scatter", "threshold γ (vqa)" ]
                    "the two histograms and both tasks' γ"
            }
            test "an attack without distances has no ROC" {
                Expect.equal (Detection.rocFrame [ { d with Triggered = [||] } ]).RowCount 0 "no rows"
            }
        ]
        testList "detection AUROC by layer (chart 6)" [
            // 3 layers × 2 heads of (visual, prompt) sums; the trigger doubles the visual sum at layer 1 only.
            // Clean captions sit where triggered questions do (ratio 2), so only per-task references separate them.
            let rng = Random(4)
            let input (ratio: int -> float) = Array.init 3 (fun l -> Array.init 2 (fun _ -> ratio l + 0.05 * (rng.NextDouble() - 0.5), 1.0))
            let base' task = if task = "caption" then 2.0 else 1.0
            let clean task n = Array.init n (fun _ -> task, input (fun _ -> base' task))
            let triggered task n = Array.init n (fun _ -> task, input (fun l -> if l = 1 then 2.0 * base' task else base' task))
            let settings = { Calibration.defaultSettings 3 with Layers = [| 1; 2 |] }
            let cleanAll = Array.append (clean "vqa" 40) (clean "caption" 20)
            let triggeredAll = Array.append (triggered "vqa" 20) (triggered "caption" 10)
            let rows = Findings.aurocByLayer "m" settings cleanAll triggeredAll
            test "the layer the trigger moves scores 1, the others near chance; the calibrated layers get a row of their own" {
                Expect.equal [ for r in rows -> r.Layers ] [ [| 0 |]; [| 1 |]; [| 2 |]; [| 1; 2 |] ] "one row per layer, then the calibrated set"
                Expect.equal rows.[1].Auroc 1.0 "layer 1 separates"
                for r in [ rows.[0]; rows.[2] ] do
                    Expect.isTrue (r.Auroc > 0.2 && r.Auroc < 0.8) $"layer {r.Layers.[0]}: {r.Auroc} near chance"
                Expect.isGreaterThan rows.[3].Auroc 0.9 "the calibrated layers 1, 2 include the moved one"
            }
            test "one reference per task: pooled, the clean captions would look triggered" {
                let pooled = Findings.aurocByLayer "m" settings (cleanAll |> Array.map (fun (_, x) -> "any", x)) (triggeredAll |> Array.map (fun (_, x) -> "any", x))
                Expect.isLessThan pooled.[1].Auroc 0.95 $"pooled layer 1: {pooled.[1].Auroc}"
            }
            test "a task with fewer than 4 clean inputs is left out; none left gives no rows" {
                let withFew = Findings.aurocByLayer "m" settings (Array.append cleanAll (clean "odd" 3)) (Array.append triggeredAll (triggered "odd" 5))
                Expect.equal [ for r in withFew -> r.Auroc ] [ for r in rows -> r.Auroc ] "the same AUROCs"
                Expect.isEmpty (Findings.aurocByLayer "m" settings (clean "vqa" 3) (triggered "vqa" 3)) "no task with 4 clean inputs"
                Expect.equal (Findings.aurocByLayer "m" { settings with Layers = [| 1 |] } cleanAll triggeredAll).Length 3 "a single calibrated layer: no extra row"
            }
        ]
        testList "ablations (chart 7)" [
            test "sample count: sizes below the sample count only, held-out = rest, FPR in [0, 1], seeded" {
                let clean = gaussian 3 120 (fun _ -> 1.0) (fun _ -> 0.2) 6
                let settings = { Calibration.defaultSettings 3 with Quantile = 0.9; ThresholdFrom = Calibration.InSample }
                let clean = clean |> Array.map (fun f -> ({ Features = f; TextTokens = 5 }: Calibration.Measured))
                let rows = Ablations.sampleCount "badnet" settings clean [ 1; 10; 40; 120; 200 ] 8 0
                Expect.equal (rows |> List.map (fun r -> r.Samples)) [ 10; 40 ] "n < 2 and n ≥ 120 skipped"
                for r in rows do
                    Expect.equal r.HeldOut (120 - r.Samples) "held out"
                    Expect.isTrue (0.0 <= r.FprMin && r.FprMin <= r.FprMean && r.FprMean <= r.FprMax && r.FprMax <= 1.0) "ordered rates"
                    close 1e-12 r.TargetFpr 0.1 "target"
                Expect.equal (Ablations.sampleCount "badnet" settings clean [ 10; 40 ] 8 0) rows "same seed, same rows"
                // with 40 samples the 0.9 quantile holds roughly: FPR near 10 %, far from 0 or 1
                let r40 = rows |> List.find (fun r -> r.Samples = 40)
                Expect.isTrue (r40.FprMean > 0.02 && r40.FprMean < 0.35) $"FPR at n = 40: {r40.FprMean}"
                // γ from leave-one-out distances: held-out FPR nearer the 10 % target at n = 10 than in-sample γ
                let loo = Ablations.sampleCount "badnet" { settings with ThresholdFrom = Calibration.LeaveOneOut } clean [ 10 ] 8 0
                let inSample = rows |> List.find (fun r -> r.Samples = 10)
                Expect.isLessThan (abs (loo.Head.FprMean - 0.1)) (abs (inSample.FprMean - 0.1))
                    $"n = 10: leave-one-out {loo.Head.FprMean}, in-sample {inSample.FprMean}"
                // the conformal rule serves only sizes with ⌈(n+1)q⌉ ≤ n: n ≥ 9 at q = 0.9; γ the ⌈(n+1)q⌉-th distance
                let conformal = { settings with ThresholdRule = ConformalRank; ThresholdFrom = Calibration.LeaveOneOut }
                let byRank = Ablations.sampleCount "badnet" conformal clean [ 5; 8; 9; 40 ] 8 0
                Expect.equal (byRank |> List.map (fun r -> r.Samples)) [ 9; 40 ] "n < 9 skipped"
                Expect.isLessThan (byRank |> List.find (fun r -> r.Samples = 40)).FprMean
                    ((Ablations.sampleCount "badnet" { conformal with ThresholdRule = Interpolated } clean [ 40 ] 8 0).Head.FprMean + 1e-12)
                    "the rank's γ is at or above the interpolated quantile: it flags no more"
                let frame = Ablations.sampleCountFrame rows
                Expect.equal frame.RowCount 2 "frame rows"
                Expect.containsAll frame.ColumnKeys [ "attack"; "samples"; "fpr_mean"; "fpr_min"; "fpr_max"; "target_fpr" ] "columns"
            }
            test "τ rows: the metrics, labelled; no purification has no τ" {
                let m: Summary.DefenseMetrics =
                    { Asr = Some 0.25; CleanAsr = Some 0.0
                      Clean = { Vqa = Some 0.5; VScore = Some 0.6; Cider = None; Utility = Some 0.5 }
                      Poisoned = { Vqa = Some 0.4; VScore = Some 0.4; Cider = None; Utility = Some 0.4 }
                      Auroc = None; Tpr = None; Fpr = None; AsrCi95 = Some(0.11, 0.47); CleanAsrCi95 = Some(0.0, 0.16)
                      TprCi95 = None; FprCi95 = None; PrunedFraction = Some 0.1; MsPerSample = Some 3.0
                      CleanSamples = 20; PoisonedSamples = 20; ByTask = [||] }
                let rows = [ Ablations.tauRow "badnet" None m; Ablations.tauRow "badnet" (Some 0.6) m ]
                Expect.equal (rows |> List.map Ablations.tauLabel) [ "no purification"; "τ = 0.6/T" ] "labels"
                let f = Ablations.tauFrame rows
                Expect.equal f.RowCount 2 "rows"
                Expect.equal (f.GetColumn<float>("asr") |> Series.values |> List.ofSeq) [ 0.25; 0.25 ] "ASR"
                Expect.equal (f.GetColumn<float>("tau_relative") |> Series.countValues) 1 "missing τ for no purification"
            }
        ]
        test "the demo's config hash: stable, blind to the output folder, sensitive to a setting" {
            let a = Demo.defaults "out/a"
            Expect.equal (Demo.configHash a) (Demo.configHash (Demo.defaults "out/a")) "stable"
            Expect.equal (Demo.configHash a) (Demo.configHash (Demo.defaults "elsewhere")) "output folder ignored"
            Expect.notEqual (Demo.configHash a) (Demo.configHash { a with Test = 5 }) "test count matters"
            Expect.notEqual (Demo.configHash a) (Demo.configHash { a with TauGrid = [ 1.0 ] }) "τ grid matters"
            Expect.notEqual (Demo.configHash a) (Demo.configHash { a with Layers = Some [| 0 |] }) "detection layers matter"
            Expect.notEqual (Demo.configHash { a with Layers = Some [| 0 |] }) (Demo.configHash { a with Layers = Some [| 1 |] }) "which layers"
            Expect.notEqual (Demo.configHash a) (Demo.configHash { a with LayersByFusion = true }) "layers placed by clean fusion"
            Expect.notEqual (Demo.configHash a) (Demo.configHash { a with Feature = "visual-share" }) "the feature"
            Expect.notEqual (Demo.configHash a) (Demo.configHash { a with Whitening = "full" }) "the whitening"
            Expect.equal (a.Feature, a.Whitening) ("ratio", "diagonal") "the defaults: the paper's"
            Expect.equal (Demo.configHash a).Length 64 "SHA-256 hex"
        }
        test "the demo's settings hold a --layers request and give it back, whatever they held before" {
            let requests = [ Calibration.AtRelativeDepth; Calibration.NamedLayers [| 0 |]; Calibration.ByCleanFusion ]
            for before in requests do
                for request in requests do
                    let s = Demo.defaults "out/a" |> Demo.withLayerRequest before |> Demo.withLayerRequest request
                    Expect.equal (Demo.layerRequest s) request $"{before} then {request}"
            Expect.equal (Demo.layerRequest (Demo.defaults "out/a")) Calibration.AtRelativeDepth "the default: the paper's relative depth"
        }
        test "the demo's output folder: claimed for its settings, resumed with the same, refused with others" {
            let dir = Path.Combine(Fixtures.tempDir (), "demo")
            try
                let a = Demo.defaults dir
                Demo.claimOutput a
                let stamp = Path.Combine(dir, "settings.json")
                Expect.isTrue (File.Exists stamp) "settings.json written on the first run"
                Expect.stringContains (File.ReadAllText stamp) (Demo.configHash a) "it records the config hash"
                Demo.claimOutput a // a re-run with the same settings resumes
                Expect.throwsT<CleanSight.Core.InputError> (fun () -> Demo.claimOutput { a with Layers = Some [| 0 |] }) "other layers are refused"
                let e = try Demo.claimOutput { a with Test = 5 }; None with :? CleanSight.Core.InputError as e -> Some e.Message
                Expect.isSome e "other settings are refused"
                Expect.stringContains e.Value "other settings" "the error says why"
                Expect.stringContains e.Value dir "and names the folder"
                File.WriteAllText(stamp, "{}")
                Expect.throwsT<CleanSight.Core.InputError> (fun () -> Demo.claimOutput a) "a settings file without a hash is refused"
            finally
                if Directory.Exists dir then Directory.Delete(dir, true)
        }
        test "calibration recording every layer: the same features, and the sums at the detection layers are them" {
            use session = LlavaSession.Load Fixtures.tinyLlava
            let n = session.Config.Text.NumHiddenLayers
            let settings = { Calibration.defaultSettings n with Layers = [| 1; 2 |] }
            let image = World.Scenes.render 56 (World.Scenes.generate 1 0)
            let question = "What colour is the circle?"
            let measured, sums = Calibration.featuresAndSums session settings [| 0 .. n - 1 |] image question
            let features = measured.Features
            Expect.equal features (Calibration.features session settings image question) "recording changes no feature"
            let ids = session.Prompt(question).InputIds
            let _, last = Calibration.imageSpan session (ids |> Array.map int64)
            Expect.equal measured.TextTokens (ids.Length - 1 - int last) "the text after the image, the last prompt token included"
            Expect.equal sums.Length n "one entry per layer"
            let atDetection = HeadDeviation.featuresOf Ratio [| sums.[1..2] |]
            Expect.equal atDetection.[0] features "the detector's coordinates"
        }
        test "a recording policy around a defense records its layers and passes the defense's on" {
            let inner = FixedExclusionPolicy(2, [ 5L ])
            let recorder = RecordingPolicy([ 0; 1 ], inner)
            Expect.equal ([ 0 .. 3 ] |> List.map recorder.Observes) [ true; true; true; false ] "its layers and the inner one's"
            let r l = row l 1 8 (fun _ _ -> 0.125f)
            Expect.isEmpty (recorder.OnAttention(r 0)) "layer 0: recorded, nothing excluded"
            Expect.isEmpty (recorder.OnAttention(r 1)) "layer 1: recorded, nothing excluded"
            Expect.equal (List.ofSeq (recorder.OnAttention(r 2))) [ 5L ] "layer 2: the inner policy's exclusion"
            Expect.equal (recorder.Rows |> Seq.map (fun x -> x.Layer) |> List.ofSeq) [ 0; 1 ] "only its own layers recorded"
        }
        testList "progress" [
            test "mode: silent with --no-progress or CI, bars on a terminal, lines otherwise" {
                Expect.equal (Progress.modeOf true false true) Progress.Silent "flag"
                Expect.equal (Progress.modeOf false true true) Progress.Silent "CI"
                Expect.equal (Progress.modeOf false false true) Progress.Bars "terminal"
                Expect.equal (Progress.modeOf false false false) Progress.Lines "redirected"
            }
            test "lines: a task's first and last step always, others at most every interval" {
                let every = TimeSpan.FromSeconds 10.0
                Expect.isTrue (Progress.lineDue every None 1 100) "first"
                Expect.isFalse (Progress.lineDue every (Some(TimeSpan.FromSeconds 2.0)) 50 100) "too soon"
                Expect.isTrue (Progress.lineDue every (Some(TimeSpan.FromSeconds 11.0)) 50 100) "interval passed"
                Expect.isTrue (Progress.lineDue every (Some(TimeSpan.FromSeconds 0.1)) 100 100) "last"
                let w = new StringWriter()
                let r = Progress.linesTo w (TimeSpan.FromHours 1.0)
                for i in 1 .. 50 do r.Step "badnet: evaluate" i 50
                r.Log "done"
                let lines = w.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries)
                Expect.equal lines.Length 3 "first step, last step, the news"
                Expect.stringEnds lines.[1] "badnet: evaluate 50/50" "the last step"
                Expect.isMatch lines.[2] @"^\[\s*\d+\.\ds\] done$" "timestamped"
            }
        ]
    ]
