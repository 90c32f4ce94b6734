/// Calibration through the real forward of the fixture model: the clean reference and threshold,
/// the versioned file (round trip, checksum, model fingerprint), and `cleansight calibrate`.
module CleanSight.Tests.CalibrationTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening
open CleanSight.Pipeline.World

let private session = lazy (LlavaSession.Load Fixtures.tinyLlava)

let private questions =
    [| "What is in the picture?"; "How many shapes are there?"; "What colour is the circle?"; "Is there a red square?" |]

/// n clean (image, question, task) VQA samples at 56 px (the fixture's size).
let private samples n = [| for i in 0 .. n - 1 -> Scenes.render 56 (Scenes.generate 1 i), questions.[i % questions.Length], Dataset.Vqa |]

/// n clean caption requests at 56 px, on other scenes.
let private captionSamples n = [| for i in 0 .. n - 1 -> Scenes.render 56 (Scenes.generate 2 i), "Describe the image.", Dataset.Caption |]

/// Synthetic (features, task) rows: `n` of `task` drawn around `centre` (12 dims, seeded).
let private rows (seed: int) (task: Dataset.Task) (centre: float) (n: int) =
    let rng = Random(seed)
    [| for _ in 1 .. n -> Array.init 12 (fun _ -> centre + rng.NextDouble()), task |]

/// The rows as calibration measures them, every prompt with 5 text tokens after the image.
let private measured (rows: (float[] * Dataset.Task)[]) =
    rows |> Array.map (fun (f, task) -> ({ Features = f; TextTokens = 5 }: Calibration.Measured), task)

let private noFingerprint: Calibration.Fingerprint = { Config = ""; Tensors = ""; Projector = ""; Base = ""; Dtype = "f32" }

let private settings = { Calibration.defaultSettings 3 with Layers = [| 0; 1; 2 |] }

let private calibrated = lazy (Calibration.calibrate session.Value settings (samples 12) (fun _ _ -> ()))

/// The calibration saved to a fresh file.
let private saved () =
    let path = Path.Combine(Fixtures.tempDir (), "calibration.json")
    Calibration.save path calibrated.Value
    path

/// The InputError message of `f`, or a failed test if it does not raise one.
let private inputError (f: unit -> 'a) =
    try f () |> ignore; failtest "expected an InputError"
    with :? InputError as e -> e.Message

/// The fixture model with its projector nudged, written as an adapter file.
let private otherAdapter =
    lazy (
        use other = LlavaSession.Load Fixtures.tinyLlava
        let nudge () =
            use _ = torch.no_grad ()
            for struct (name, p) in other.Model.named_parameters () do
                if name.StartsWith "multi_modal_projector." then p.add_(torch.tensor 0.01f) |> ignore
        nudge ()
        let path = Path.Combine(Fixtures.tempDir (), "other.safetensors")
        TinyLlava.saveAdapter path other.Model [ "note", "fixture projector + 0.01" ]
        path)

let private writeDataset (folder: string) =
    let items = Scenes.build { Seed = 3; Size = 56; Captions = Scenes.Share 0.0; Prefix = "c" } [ 0 .. 11 ] folder
    let jsonl = Path.Combine(folder, "data.jsonl")
    Dataset.write jsonl items
    jsonl

/// `cleansight calibrate` on the fixture model with `options` → (exit code, stdout, stderr).
let private calibrateWith (data: string) (out: string) (options: string list) =
    CliTests.run ([ "calibrate"; "--model"; Fixtures.tinyLlava; "--data"; data; "--out"; out ] @ options @ [ "--no-progress" ])

let private calibrateCli (data: string) (out: string) = calibrateWith data out [ "--layers"; "0,1,2" ]

[<Tests>]
let tests =
    testSequenced <| testList "calibration" [
        test "12 clean samples → 12 finite 12-dim features, the threshold at the 0.99 quantile of their distances" {
            let c = calibrated.Value
            Expect.equal c.Samples 12 "samples"
            Expect.equal c.Reference.Dimension 12 "3 layers × 4 heads"
            Expect.equal c.CleanDistances.Length 12 "one distance per sample"
            Expect.isTrue (c.CleanDistances |> Array.forall (fun d -> Double.IsFinite d && d >= 0.0)) "finite distances"
            Expect.equal c.Threshold (threshold 0.99 c.CleanDistances) "γ = 99th percentile"
            Expect.isLessThanOrEqual c.Threshold (Array.max c.CleanDistances) "γ ≤ the largest clean distance"
            Expect.equal c.Template session.Value.Template "the session's template"
            Expect.equal c.Fingerprint (Calibration.fingerprint session.Value) "the session's fingerprint"
        }
        test "features are the ratios of one prefill at the detection layers, deterministic" {
            let image, question, _ = (samples 1).[0]
            let f = Calibration.features session.Value settings image question
            Expect.equal (Calibration.features session.Value settings image question) f "same input, same features"
            // against the recorded rows of a plain prefill
            let s = session.Value
            let ids = s.Prompt(question).InputIds |> Array.map int64
            let first, last = Calibration.imageSpan s ids
            let rec' = RecordingPolicy [ 0; 1; 2 ]
            use pixels = s.Pixels image
            (s.Model.Prefill(ids, pixels, rec')).Cache.Dispose()
            let expected = rec'.Rows |> Seq.collect (fun r -> AttentionRatio.VisualToPrompt(r, first, last)) |> Seq.toArray
            Expect.equal f.Length expected.Length "12 features"
            // the feature is v / (p + 1e-12): on this random model some heads give p ≈ 1e-6, hence 1e-5 relative
            for i in 0 .. f.Length - 1 do
                Expect.floatClose { absolute = 0.0; relative = 1e-5 } f.[i] expected.[i] $"feature {i}"
            Expect.equal (last - first + 1L) 16L "(the image block: 16 tokens)"
        }
        test "save → load gives the same threshold, mean, std and distances" {
            let c = calibrated.Value
            let back = Calibration.load (saved ()) session.Value
            Expect.equal back.Threshold c.Threshold "threshold"
            Expect.equal back.Reference.Mean c.Reference.Mean "mean"
            Expect.equal back.Reference.Std c.Reference.Std "std"
            Expect.equal back.CleanDistances c.CleanDistances "clean distances"
            Expect.equal back.Settings c.Settings "settings"
            Expect.equal back.Fingerprint c.Fingerprint "fingerprint"
            Expect.equal back.Template c.Template "template"
            let probe = Array.init 12 (fun i -> float i * 0.1)
            Expect.equal (distance back.Reference probe) (distance c.Reference probe) "the loaded reference measures the same distance"
        }
        test "the clean-fusion rule and its knockout survive save → load" {
            let c = { calibrated.Value with Settings = { calibrated.Value.Settings with LayerRule = Calibration.CleanFusion([| 0.61; 0.3; -0.01 |], 40) } }
            let path = Path.Combine(Fixtures.tempDir (), "fusion.json")
            Calibration.save path c
            Expect.equal (Calibration.load path session.Value).Settings c.Settings "settings, the rule's knockout and sample count included"
            Expect.equal (Calibration.load (saved ()) session.Value).Settings.LayerRule Calibration.RelativeDepth "the default rule"
        }
        test "a file edited after it was written is refused, naming the file and the checksum" {
            let path = saved ()
            let o = JsonNode.Parse(File.ReadAllText path)
            o.["threshold"] <- JsonValue.Create(calibrated.Value.Threshold * 2.0)
            File.WriteAllText(path, o.ToJsonString())
            let message = inputError (fun () -> Calibration.load path session.Value)
            Expect.stringContains message path "names the file"
            Expect.stringContains message "checksum" "says checksum"
        }
        test "a file of format version 1 (before per-task references) is refused, naming the file and what to do" {
            let path = saved ()
            let o = JsonNode.Parse(File.ReadAllText path)
            o.["version"] <- JsonValue.Create 1
            File.WriteAllText(path, o.ToJsonString())
            let message = inputError (fun () -> Calibration.load path session.Value)
            Expect.stringContains message path "names the file"
            Expect.stringContains message "version 1" "names the version"
            Expect.stringContains message "calibrate again" "says what to do"
        }
        test "a file made for another model (another projector) is refused" {
            let path = saved ()
            use adapted = LlavaSession.Load(Fixtures.tinyLlava, adapter = otherAdapter.Value)
            Expect.notEqual (Calibration.fingerprint adapted).Projector calibrated.Value.Fingerprint.Projector "(the adapter changes the projector)"
            Expect.equal (Calibration.fingerprint adapted).Tensors calibrated.Value.Fingerprint.Tensors "(same layout)"
            let message = inputError (fun () -> Calibration.load path adapted)
            Expect.stringContains message path "names the file"
            Expect.stringContains message "another model" "says another model"
        }
        test "a file made with the same adapter on another base of one architecture is refused" {
            use adapted = LlavaSession.Load(Fixtures.tinyLlava, adapter = otherAdapter.Value)
            let c = Calibration.calibrate adapted settings (samples 12) (fun _ _ -> ())
            let path = Path.Combine(Fixtures.tempDir (), "calibration.json")
            Calibration.save path c
            // another base: the fixture with one bit of its token embedding flipped
            let otherBase = Fixtures.tinyLlavaCopy ()
            let entry = (CleanSight.Core.Checkpoints.CheckpointFiles.Open otherBase).Tensors.["language_model.model.embed_tokens.weight"]
            do
                use f = new FileStream(entry.File, FileMode.Open, FileAccess.ReadWrite)
                f.Position <- entry.DataStart
                let b = f.ReadByte()
                f.Position <- entry.DataStart
                f.WriteByte(byte (b ^^^ 1))
            use elsewhere = LlavaSession.Load(otherBase, adapter = otherAdapter.Value)
            let fp = Calibration.fingerprint elsewhere
            Expect.equal (fp.Config, fp.Tensors, fp.Projector) (c.Fingerprint.Config, c.Fingerprint.Tensors, c.Fingerprint.Projector)
                "(same config, layout and projector: only the base differs)"
            let message = inputError (fun () -> Calibration.load path elsewhere)
            Expect.stringContains message path "names the file"
            Expect.stringContains message "base weights differ" "says why"
            Expect.equal (Calibration.load path adapted).Fingerprint c.Fingerprint "its own model loads it"
        }
        test "fewer samples than dimensions with full whitening: finite threshold, positive shrinkage, and it round-trips" {
            let few = Calibration.calibrate session.Value { settings with Whitening = Full LedoitWolf } (samples 5) (fun _ _ -> ())
            Expect.equal few.Samples 5 "5 samples for 12 dimensions"
            Expect.isTrue (Double.IsFinite few.Threshold) $"finite threshold ({few.Threshold})"
            Expect.isGreaterThan few.Reference.ShrinkageUsed 0.0 "Ledoit–Wolf shrinks"
            Expect.isTrue (few.CleanDistances |> Array.forall Double.IsFinite) "finite distances"
            let path = Path.Combine(Fixtures.tempDir (), "few.json")
            Calibration.save path few
            let back = Calibration.load path session.Value
            Expect.equal back.Reference.Whitener few.Reference.Whitener "Σ^{-1/2}"
            Expect.equal back.Reference.ShrinkageUsed few.Reference.ShrinkageUsed "shrinkage"
            for image, question, _ in samples 7 |> Array.skip 5 do
                let f = Calibration.features session.Value settings image question
                Expect.equal (distance back.Reference f) (distance few.Reference f) "same distance on a new sample"
        }
        testList "one reference per task" [
            let mixed = Array.append (rows 1 Dataset.Vqa 0.0 30) (rows 2 Dataset.Caption 5.0 12)
            let perTask = Calibration.defaultSettings 3
            test "per task (the default): each task's reference is fitted on its own rows only" {
                Expect.equal perTask.References Calibration.PerTask "the default"
                let c = Calibration.fromFeatures noFingerprint "t" perTask (measured mixed)
                Expect.equal (c.Tasks |> Map.keys |> List.ofSeq) [ Dataset.Vqa; Dataset.Caption ] "both tasks"
                for task, centre, n in [ Dataset.Vqa, 0.0, 30; Dataset.Caption, 5.0, 12 ] do
                    let own = mixed |> Array.filter (fun (_, t) -> t = task) |> Array.map fst
                    let t = c.Tasks.[task]
                    Expect.equal t.Samples n "its own samples"
                    Expect.equal t.Reference.Mean (fit Diagonal own).Mean "μ of its own rows"
                    Expect.equal t.CleanDistances (leaveOneOutDistances Diagonal own) "leave-one-out distances of its own rows (the default)"
                    Expect.equal t.Threshold (threshold 0.99 t.CleanDistances) "γ at the 0.99 quantile of those"
                    Expect.isTrue (t.Reference.Mean |> Array.forall (fun m -> abs (m - (centre + 0.5)) < 0.2)) "μ near its centre"
                Expect.equal c.Samples 42 "the pooled reference keeps every sample"
                Expect.equal c.Reference.Mean (fit Diagonal (Array.map fst mixed)).Mean "pooled μ"
            }
            test "an input is compared with its task's reference; a caption far from every question but typical of captions is not flagged" {
                let c = Calibration.fromFeatures noFingerprint "t" perTask (measured mixed)
                let caption = Array.create 12 5.5
                let d (det: CleanSightPolicy.Detection) = distance det.Reference caption
                let ofCaptions, ofQuestions = Calibration.detection c Dataset.Caption, Calibration.detection c Dataset.Vqa
                Expect.equal ofCaptions.Threshold c.Tasks.[Dataset.Caption].Threshold "the caption γ"
                Expect.isLessThan (d ofCaptions) ofCaptions.Threshold "typical of clean captions"
                Expect.isGreaterThan (d ofQuestions) ofQuestions.Threshold "far from clean questions"
            }
            test "γ from in-sample distances (the paper's) or leave-one-out ones (the default)" {
                Expect.equal perTask.ThresholdFrom Calibration.LeaveOneOut "the default"
                let vqa = mixed |> Array.filter (fun (_, t) -> t = Dataset.Vqa) |> Array.map fst
                let m = measured (vqa |> Array.map (fun f -> f, Dataset.Vqa)) |> Array.map fst
                let inSample = Calibration.fitReference { perTask with ThresholdFrom = Calibration.InSample } m
                let loo = Calibration.fitReference perTask m
                Expect.equal inSample.CleanDistances (distances inSample.Reference vqa) "in-sample distances"
                Expect.equal loo.Reference.Mean inSample.Reference.Mean "the same reference"
                Expect.isGreaterThan loo.Threshold inSample.Threshold "a held-out clean distance is larger: γ too"
                let two = Calibration.fitReference perTask m.[.. 1]
                Expect.equal two.CleanDistances (distances two.Reference vqa.[.. 1]) "2 samples: in-sample"
            }
            test "the conformal rule: γ is each reference's ⌈(n+1)q⌉-th leave-one-out distance" {
                let conformal = { perTask with Quantile = 0.9; ThresholdRule = ConformalRank }
                let c = Calibration.fromFeatures noFingerprint "t" conformal (measured mixed)
                for task, n, rank in [ Dataset.Vqa, 30, 28; Dataset.Caption, 12, 12 ] do // ⌈31·0.9⌉ = 28, ⌈13·0.9⌉ = 12
                    let t = c.Tasks.[task]
                    Expect.equal t.Samples n $"{task} samples"
                    Expect.equal t.Threshold (Array.sort t.CleanDistances).[rank - 1] $"{task}: the {rank}-th smallest of {n}"
                    let paper = Calibration.fitReference { conformal with ThresholdRule = Interpolated } (measured mixed |> Array.filter (snd >> (=) task) |> Array.map fst)
                    Expect.equal paper.CleanDistances t.CleanDistances $"{task}: the same distances under either rule"
                Expect.equal perTask.ThresholdRule Interpolated "the default is the paper's"
                // 12 captions cannot hold a 1 % FPR by rank: the fit refuses rather than guess
                Expect.throwsT<ArgumentException>
                    (fun () -> Calibration.fromFeatures noFingerprint "t" { conformal with Quantile = 0.99 } (measured mixed) |> ignore) "too few"
            }
            test "the references calibration will fit, known from the tasks alone" {
                let tasks (rows: (float[] * Dataset.Task)[]) = Array.map snd rows
                Expect.equal (Calibration.plannedReferences Calibration.PerTask (tasks mixed)) [ "the vqa reference", 30; "the caption reference", 12 ] "per task"
                Expect.equal (Calibration.plannedReferences Calibration.Pooled (tasks mixed)) [ "the reference", 42 ] "pooled"
                let few = Array.append (rows 1 Dataset.Vqa 0.0 30) (rows 2 Dataset.Caption 5.0 9)
                Expect.equal (Calibration.plannedReferences Calibration.PerTask (tasks few)) [ "the vqa reference", 30 ] "9 captions: no reference of their own"
                Expect.equal (Calibration.plannedReferences Calibration.PerTask (tasks (rows 1 Dataset.Vqa 0.0 30))) [ "the reference", 30 ] "one task"
                for rows in [ mixed; few ] do
                    let c = Calibration.fromFeatures noFingerprint "t" perTask (measured rows)
                    let fitted = if c.Tasks.IsEmpty then [ c.Samples ] else [ for KeyValue(_, t) in c.Tasks -> t.Samples ]
                    Expect.equal (Calibration.plannedReferences Calibration.PerTask (tasks rows) |> List.map snd) fitted "what fromFeatures fits"
            }
            test "the FPR an input's reference expects: its task's sample count, the pooled one's for a task without" {
                let few = Calibration.fromFeatures noFingerprint "t" perTask (measured (Array.append (rows 1 Dataset.Vqa 0.0 30) (rows 2 Dataset.Caption 5.0 9)))
                Expect.equal (Calibration.expectedFprFor few Dataset.Vqa) (Some(expectedFpr Interpolated 0.99 30)) "30 questions"
                Expect.equal (Calibration.expectedFprFor few Dataset.Caption) (Some(expectedFpr Interpolated 0.99 39)) "9 captions: the pooled 39"
                let conformal = Calibration.fromFeatures noFingerprint "t" { perTask with Quantile = 0.9; ThresholdRule = ConformalRank } (measured mixed)
                Expect.equal (Calibration.expectedFprFor conformal Dataset.Caption) (Some(1.0 / 13.0)) "rank 12 of 12 captions: 1/13"
                let inSample = Calibration.fromFeatures noFingerprint "t" { perTask with ThresholdFrom = Calibration.InSample } (measured mixed)
                Expect.isNone (Calibration.expectedFprFor inSample Dataset.Vqa) "in-sample distances promise no rate"
            }
            test "samples a quantile needs: ⌈1 / (1 − q)⌉" {
                Expect.equal (Calibration.samplesForQuantile 0.99) 100 "q = 0.99"
                Expect.equal (Calibration.samplesForQuantile 0.95) 20 "q = 0.95"
                Expect.equal (Calibration.samplesForQuantile 0.9) 10 "q = 0.9"
                Expect.equal (Calibration.samplesForQuantile 0.975) 40 "q = 0.975"
            }
            test "pooled, a single task, or a task under 10 samples: the pooled reference" {
                let pooled = Calibration.fromFeatures noFingerprint "t" { perTask with References = Calibration.Pooled } (measured mixed)
                Expect.isEmpty pooled.Tasks "pooled: no per-task reference"
                let det = Calibration.detection pooled Dataset.Caption
                Expect.equal (det.Reference, det.Threshold) (pooled.Reference, pooled.Threshold) "captions use the pooled one"
                let single = Calibration.fromFeatures noFingerprint "t" perTask (measured (rows 1 Dataset.Vqa 0.0 30))
                Expect.isEmpty single.Tasks "one task: the pooled reference is its reference"
                let few = Calibration.fromFeatures noFingerprint "t" perTask (measured (Array.append (rows 1 Dataset.Vqa 0.0 30) (rows 2 Dataset.Caption 5.0 9)))
                Expect.equal (few.Tasks |> Map.keys |> List.ofSeq) [ Dataset.Vqa ] "9 captions < 10: no caption reference"
                Expect.equal (Calibration.detection few Dataset.Caption).Threshold few.Threshold "captions use the pooled γ"
            }
            test "which evaluated tasks meet clean inputs of another kind (evaluate's note)" {
                let both = Calibration.fromFeatures noFingerprint "t" perTask (measured mixed)
                Expect.equal both.TaskSamples (Map [ Dataset.Vqa, 30; Dataset.Caption, 12 ]) "samples per task"
                Expect.isEmpty (Calibration.foreignTasks both [ Dataset.Vqa; Dataset.Caption ]) "each has its own reference"
                let few = Calibration.fromFeatures noFingerprint "t" perTask (measured (Array.append (rows 1 Dataset.Vqa 0.0 30) (rows 2 Dataset.Caption 5.0 9)))
                Expect.equal (Calibration.foreignTasks few [ Dataset.Vqa; Dataset.Caption; Dataset.Caption ]) [ Dataset.Caption, 9 ]
                    "9 captions: compared with a reference dominated by questions"
                let questionsOnly = Calibration.fromFeatures noFingerprint "t" perTask (measured (rows 1 Dataset.Vqa 0.0 30))
                Expect.isEmpty (Calibration.foreignTasks questionsOnly [ Dataset.Vqa ]) "questions against questions"
                Expect.equal (Calibration.foreignTasks questionsOnly [ Dataset.Caption ]) [ Dataset.Caption, 0 ] "captions against questions"
                let pooled = Calibration.fromFeatures noFingerprint "t" { perTask with References = Calibration.Pooled } (measured mixed)
                Expect.isEmpty (Calibration.foreignTasks pooled [ Dataset.Vqa; Dataset.Caption ]) "pooled on purpose: both kinds are in it"
            }
            test "through the model: per-task references round-trip through the file" {
                let c = Calibration.calibrate session.Value settings (Array.append (samples 12) (captionSamples 10)) (fun _ _ -> ())
                Expect.equal (c.Tasks |> Map.keys |> List.ofSeq) [ Dataset.Vqa; Dataset.Caption ] "both tasks"
                let path = Path.Combine(Fixtures.tempDir (), "per-task.json")
                Calibration.save path c
                let back = Calibration.load path session.Value
                Expect.equal back.Settings.References Calibration.PerTask "references"
                for KeyValue(task, t) in c.Tasks do
                    let b = back.Tasks.[task]
                    Expect.equal (b.Samples, b.Threshold, b.CleanDistances) (t.Samples, t.Threshold, t.CleanDistances) $"{task}"
                    Expect.equal (b.Reference.Mean, b.Reference.Std) (t.Reference.Mean, t.Reference.Std) $"{task} μ, σ"
                Expect.equal back.Threshold c.Threshold "pooled γ"
                Expect.equal back.TaskSamples (Map [ Dataset.Vqa, 12; Dataset.Caption, 10 ]) "samples per task"
            }
            test "through the model: prompt-length conditioned references round-trip through the file" {
                let s = { settings with Conditioning = Calibration.OnPromptLength }
                let c = Calibration.calibrate session.Value s (Array.append (samples 12) (captionSamples 10)) (fun _ _ -> ())
                for t in c.Pooled :: (c.Tasks |> Map.toList |> List.map snd) do
                    Expect.isSome t.Length "every reference is conditioned"
                // four questions of different lengths: the VQA lines have a range of ln L to span
                let vqa = c.Tasks.[Dataset.Vqa].Length.Value
                Expect.isLessThan vqa.MinLog vqa.MaxLog "several prompt lengths"
                let path = Path.Combine(Fixtures.tempDir (), "prompt-length.json")
                Calibration.save path c
                let back = Calibration.load path session.Value
                Expect.equal back.Settings.Conditioning Calibration.OnPromptLength "conditioning"
                Expect.equal back.Pooled.Length c.Pooled.Length "pooled lines"
                for KeyValue(task, t) in c.Tasks do
                    Expect.equal back.Tasks.[task].Length t.Length $"{task} lines"
                for image, question, task in samples 14 |> Array.skip 12 do
                    let m, _ = Calibration.featuresAndSums session.Value s [||] image question
                    let d (cal: Calibration.Calibration) = CleanSightPolicy.distanceOf (Calibration.detection cal task) m.TextTokens m.Features
                    Expect.equal (d back) (d c) "same distance on a new sample"
                    Expect.equal (d c) (Calibration.distanceTo c.Tasks.[task] m) "the policy's distance is the reference's"
                let plain = Calibration.load (saved ()) session.Value
                Expect.equal plain.Settings.Conditioning Calibration.Unconditioned "the default: unconditioned"
                Expect.isNone plain.Pooled.Length "no lines"
            }
        ]
        test "progress is reported once per sample" {
            let calls = Collections.Generic.List<int * int>()
            Calibration.calibrate session.Value settings (samples 3) (fun i n -> calls.Add((i, n))) |> ignore
            Expect.sequenceEqual calls [ 1, 3; 2, 3; 3, 3 ] "1/3, 2/3, 3/3"
        }

        testList "cleansight calibrate" [
            test "end to end: exit 0 and a file that loads for the model" {
                let dir = Fixtures.tempDir ()
                let data = writeDataset (Path.Combine(dir, "data"))
                let out = Path.Combine(dir, "cal.json")
                let code, stdout, err = calibrateCli data out
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                Expect.stringContains stdout out "names the file written"
                let c = Calibration.load out session.Value
                Expect.equal c.Samples 12 "12 samples"
                Expect.equal c.Settings.Layers [| 0; 1; 2 |] "layers"
                Expect.floatClose Accuracy.veryHigh c.Settings.Quantile 0.99 "default FPR 1 %"
                Expect.isTrue (Double.IsFinite c.Threshold) "finite threshold"
                // the same samples through the library give the same calibration
                let items = Dataset.read data
                let direct =
                    Calibration.calibrate session.Value c.Settings
                        (items |> Array.map (fun it -> CleanSight.Core.Vision.RgbImage.Load(Dataset.imagePath data it), it.Question, it.Task)) (fun _ _ -> ())
                Expect.equal c.Threshold direct.Threshold "same threshold as the library"
            }
            test "a dataset of questions and captions gets a reference per task with ≥ 10 samples; --pooled-reference one" {
                let dir = Fixtures.tempDir ()
                let folder = Path.Combine(dir, "data")
                let items = Scenes.build { Seed = 3; Size = 56; Captions = Scenes.Share 0.5; Prefix = "m" } [ 0 .. 39 ] folder
                let data = Path.Combine(folder, "data.jsonl")
                Dataset.write data items
                let counts = items |> Array.countBy (fun it -> it.Task) |> Map.ofArray
                let expected = counts |> Map.filter (fun _ n -> n >= 10) |> Map.keys |> Set.ofSeq
                Expect.equal expected (Set [ Dataset.Vqa; Dataset.Caption ]) $"(both tasks have ≥ 10 items: {counts})"
                let out = Path.Combine(dir, "cal.json")
                let code, stdout, err = calibrateCli data out
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                Expect.stringContains stdout "caption: own reference" "says so"
                let c = Calibration.load out session.Value
                Expect.equal (c.Tasks |> Map.keys |> Set.ofSeq) expected "a reference per task"
                for KeyValue(task, t) in c.Tasks do Expect.equal t.Samples counts.[task] $"{task} samples"
                let pooledOut = Path.Combine(dir, "pooled.json")
                let code, _, err =
                    calibrateWith data pooledOut [ "--layers"; "0,1,2"; "--pooled-reference" ]
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                let p = Calibration.load pooledOut session.Value
                Expect.isEmpty p.Tasks "no per-task reference"
                Expect.equal p.Settings.References Calibration.Pooled "pooled"
                Expect.equal p.Threshold c.Threshold "the same pooled reference"
            }
            test "--threshold-rule conformal: refused before measuring when a reference is too small; else γ by rank, recorded" {
                let dir = Fixtures.tempDir ()
                let data = writeDataset (Path.Combine(dir, "data")) // 12 VQA items
                let out = Path.Combine(dir, "cal.json")
                let code, _, err = calibrateWith data out [ "--layers"; "0,1,2"; "--threshold-rule"; "conformal" ]
                Expect.notEqual code 0 "non-zero exit"
                let errLines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                Expect.equal errLines.Length 1 $"one error line, got: {err}"
                Expect.stringContains errLines.[0] "--threshold-rule" "names the option"
                Expect.stringContains errLines.[0] "12 clean samples" "the count"
                Expect.stringContains errLines.[0] "at least 99" "and what a 1 % FPR needs"
                Expect.isFalse (File.Exists out) "nothing written"
                let code, stdout, err = calibrateWith data out [ "--layers"; "0,1,2"; "--threshold-rule"; "conformal"; "--fpr"; "0.1" ]
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                Expect.stringContains stdout "conformal rule" "says the rule"
                Expect.stringContains stdout "expected clean FPR 7.69 %" "(13 − ⌈13·0.9⌉)/13 = 1/13"
                let c = Calibration.load out session.Value
                Expect.equal c.Settings.ThresholdRule ConformalRank "recorded in the file"
                Expect.equal c.Threshold (Array.sort c.CleanDistances).[11] "the 12th smallest of 12 (⌈13·0.9⌉ = 12)"
                let code, _, err = calibrateWith data out [ "--threshold-rule"; "rank" ]
                Expect.notEqual code 0 "an unknown rule"
                Expect.stringContains err "unknown threshold rule 'rank'" "says which"
            }
            test "--dtype bf16: computed and recorded in bf16; only a bf16 session may use the file (evaluate, defend)" {
                let dir = Fixtures.tempDir ()
                let data = writeDataset (Path.Combine(dir, "data"))
                let f32Out, bf16Out = Path.Combine(dir, "f32.json"), Path.Combine(dir, "bf16.json")
                let code, _, err = calibrateCli data f32Out
                Expect.equal code 0 $"f32: exit 0 (stderr: {err})"
                let code, _, err = calibrateWith data bf16Out [ "--layers"; "0,1,2"; "--dtype"; "bf16" ]
                Expect.equal code 0 $"bf16: exit 0 (stderr: {err})"
                use bf16 = LlavaSession.Load(Fixtures.tinyLlava, RunOptions("cpu", torch.ScalarType.BFloat16))
                let c = Calibration.load bf16Out bf16
                Expect.equal c.Fingerprint.Dtype "bf16" "recorded"
                Expect.isTrue (c.CleanDistances |> Array.forall Double.IsFinite) "finite distances"
                let f32 = Calibration.load f32Out session.Value
                Expect.equal f32.Fingerprint.Dtype "f32" "the default"
                Expect.notEqual c.Reference.Mean f32.Reference.Mean "bf16 features differ from f32's (the flag reached the model)"
                let message = inputError (fun () -> Calibration.load bf16Out session.Value)
                Expect.stringContains message bf16Out "names the file"
                Expect.stringContains message "calibrated in bf16; this session computes in f32" "says why"
                Expect.stringContains message "--dtype bf16" "and what to do"
                Expect.stringContains (inputError (fun () -> Calibration.load f32Out bf16)) "calibrated in f32" "and the other way round"
                let evaluate (out: string) (extra: string list) =
                    CliTests.run ([ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; bf16Out; "--clean"; data; "--poisoned"; data
                                    "--target"; "hacked"; "--defense"; "cleansight"; "--limit"; "2"; "--max-new-tokens"; "2"
                                    "--out"; out; "--no-progress" ] @ extra)
                let code, _, err = evaluate (Path.Combine(dir, "eval-f32")) []
                Expect.equal code 1 "an f32 evaluate of a bf16 calibration: exit 1"
                Expect.stringContains err "calibrated in bf16" "one line saying why"
                Expect.isFalse (Directory.Exists(Path.Combine(dir, "eval-f32"))) "nothing written"
                let code, stdout, err = evaluate (Path.Combine(dir, "eval-bf16")) [ "--dtype"; "bf16" ]
                Expect.equal code 0 $"a bf16 evaluate: exit 0 (stderr: {err}; stdout: {stdout})"
                Expect.isTrue (File.Exists(Path.Combine(dir, "eval-bf16", "metrics.json"))) "metrics written"
                let code, _, err =
                    CliTests.run [ "defend"; "--model"; Fixtures.tinyLlava; "--calibration"; bf16Out; "--data"; data; "--limit"; "1"
                                   "--max-new-tokens"; "2"; "--dtype"; "bf16"; "--out"; Path.Combine(dir, "defend"); "--no-progress" ]
                Expect.equal code 0 $"a bf16 defend: exit 0 (stderr: {err})"
            }
            test "a malformed dataset line: one error line naming the file, non-zero exit, nothing written" {
                let dir = Fixtures.tempDir ()
                let data = writeDataset (Path.Combine(dir, "data"))
                let lines = File.ReadAllLines data
                lines.[4] <- lines.[4].Replace("\"question\"", "\"quest\"")
                File.WriteAllLines(data, lines)
                let out = Path.Combine(dir, "cal.json")
                let code, _, err = calibrateCli data out
                Expect.notEqual code 0 "non-zero exit"
                let errLines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                Expect.equal errLines.Length 1 $"one error line, got: {err}"
                Expect.stringContains errLines.[0] data "names the file"
                Expect.stringContains errLines.[0] "line 5" "names the line"
                Expect.isFalse (File.Exists out) "no calibration written"
            }
            test "--template: the clean samples are prompted with it, the file records it, evaluate prompts with it" {
                let dir = Fixtures.tempDir ()
                let data = writeDataset (Path.Combine(dir, "data"))
                let template = "A chat between a curious human and an assistant. USER: <image>\n{question} ASSISTANT:"
                let out = Path.Combine(dir, "cal.json")
                let code, _, err =
                    calibrateWith data out [ "--layers"; "0,1,2"; "--template"; template ]
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                Expect.equal (Calibration.template out) template "recorded"
                use other = LlavaSession.Load(Fixtures.tinyLlava, template = template)
                let c = Calibration.load out other
                let items = Dataset.read data
                let direct =
                    Calibration.calibrate other c.Settings
                        (items |> Array.map (fun it -> CleanSight.Core.Vision.RgbImage.Load(Dataset.imagePath data it), it.Question, it.Task)) (fun _ _ -> ())
                Expect.equal c.Reference.Mean direct.Reference.Mean "the features of prompts in that template"
                let defaultOut = Path.Combine(dir, "default.json")
                let code, _, err = calibrateCli data defaultOut
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                Expect.notEqual (Calibration.load defaultOut session.Value).Reference.Mean c.Reference.Mean "another template, other features"
                let message = inputError (fun () -> Calibration.load out session.Value)
                Expect.stringContains message "another template" "a session prompting otherwise is refused"
                let evalOut = Path.Combine(dir, "eval")
                let code, stdout, err =
                    CliTests.run [ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; out; "--clean"; data; "--poisoned"; data
                                   "--target"; "hacked"; "--defense"; "cleansight"; "--limit"; "2"; "--max-new-tokens"; "2"
                                   "--out"; evalOut; "--no-progress" ]
                Expect.equal code 0 $"evaluate exits 0 (stderr: {err}; stdout: {stdout})"
                Expect.isTrue (File.Exists(Path.Combine(evalOut, "metrics.json"))) "metrics written"
                // 12 clean questions, the 0.99 quantile: (12 − 11·0.99)/13 = 8.54 % expected, printed beside the FPR
                Expect.stringContains stdout "(2 clean; expected 8.54 %)" "the FPR's expected value"
            }
            test "--layers fusion: the layers come from the clean samples' knockout, which the file records" {
                let dir = Fixtures.tempDir ()
                let data = writeDataset (Path.Combine(dir, "data"))
                let out = Path.Combine(dir, "cal.json")
                let code, stdout, err =
                    calibrateWith data out [ "--layers"; "fusion" ]
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                Expect.stringContains stdout "(fusion)" "the rule is reported"
                let c = Calibration.load out session.Value
                match c.Settings.LayerRule with
                | Calibration.CleanFusion(knockout, n) ->
                    let items = Dataset.read data
                    Expect.equal n (min Fusion.defaultSamples items.Length) "the samples the rule used"
                    let direct =
                        items |> Array.truncate n
                        |> Array.map (fun it -> Fusion.knockout session.Value (CleanSight.Core.Vision.RgbImage.Load(Dataset.imagePath data it)) it.Question)
                        |> Fusion.meanKnockout
                    for l in 0 .. direct.Length - 1 do
                        Expect.floatClose Accuracy.high knockout.[l] direct.[l] $"the mean knockout at layer {l}"
                    let numLayers = session.Value.Config.Text.NumHiddenLayers
                    let expected = Fusion.layersFrom numLayers (Detector.defaultLayers numLayers).Length (Fusion.start (Fusion.layerShares knockout))
                    Expect.equal c.Settings.Layers expected "the layers from where fusion begins"
                | rule -> failtest $"layer rule {rule}"
            }
            test "a --template without <image> or {question} is refused in one line, nothing written" {
                let dir = Fixtures.tempDir ()
                let data = writeDataset (Path.Combine(dir, "data"))
                for bad in [ "USER: {question} ASSISTANT:"; "USER: <image> ASSISTANT:" ] do
                    let out = Path.Combine(dir, "cal.json")
                    let code, _, err =
                        calibrateWith data out [ "--template"; bad ]
                    Expect.notEqual code 0 "non-zero exit"
                    let errLines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                    Expect.equal errLines.Length 1 $"one error line, got: {err}"
                    Expect.stringContains errLines.[0] "--template" "names the option"
                    Expect.isFalse (File.Exists out) "no calibration written"
            }
            test "a layer outside the model is refused, nothing written" {
                let dir = Fixtures.tempDir ()
                let data = writeDataset (Path.Combine(dir, "data"))
                let out = Path.Combine(dir, "cal.json")
                let code, _, err =
                    calibrateWith data out [ "--layers"; "1,3" ]
                Expect.notEqual code 0 "non-zero exit"
                Expect.stringContains err "--layers" "names the option"
                Expect.isFalse (File.Exists out) "no calibration written"
            }
        ]
    ]
