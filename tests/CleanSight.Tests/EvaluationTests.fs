/// samples.csv (one record per defense × split × sample, appended as it exists, resumable) and the
/// `evaluate` command end to end on the fixture model with a tiny clean/triggered dataset.
module CleanSight.Tests.EvaluationTests

open System
open System.IO
open System.Text
open System.Text.Json.Nodes
open Expecto
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Evaluation
open CleanSight.Pipeline.World

let private record (i: int) (output: string) : Record =
    { Defense = "cleansight"; Split = "poisoned"; Id = $"id-{i}"; Task = "vqa"
      Answers = [| "2"; "two, maybe"; "a \"quoted\" one" |]; Output = output; AsrHit = i % 2 = 0
      Distance = (if i % 3 = 0 then None else Some(Math.PI * float i)); Flagged = i % 2 = 1
      Pruned = [| 3L; 7L; int64 (10 + i) |]; VisualTokens = 16; Ms = 12.5 + float i }

let private header = String.Join(",", columns |> Array.map (fun c -> "\"" + c + "\""))

// ---- the tiny evaluation world -------------------------------------------------------------------

/// clean/data.jsonl (4 scenes at 56 px), poisoned/data.jsonl (the same items with the BadNet patch),
/// and a calibration file of the fixture model on 12 other scenes.
let private world =
    lazy (
        let dir = Fixtures.tempDir ()
        // Seed 5: scenes whose first 4 answer tokens stay inside the tokenizer on this random fixture
        // (other seeds make it emit ids 514..543, which crash decoding: see the pending test below).
        let spec: Scenes.BuildSpec = { Seed = 5; Size = 56; Captions = Scenes.Share 0.0; Prefix = "t" }
        let cleanDir, poisonedDir = Path.Combine(dir, "clean"), Path.Combine(dir, "poisoned")
        let items = Scenes.build spec [ 0 .. 3 ] cleanDir
        let clean = Path.Combine(cleanDir, "data.jsonl")
        Dataset.write clean items
        Directory.CreateDirectory(Path.Combine(poisonedDir, "images")) |> ignore
        for item in items do
            let image = RgbImage.Load(Dataset.imagePath clean item)
            (Triggers.apply (Triggers.BadNetPatch Triggers.Defaults.badNet) image).Save(Path.Combine(poisonedDir, item.Image))
        let poisoned = Path.Combine(poisonedDir, "data.jsonl")
        Dataset.write poisoned items
        let calibration = Path.Combine(dir, "calibration.json")
        use session = LlavaSession.Load Fixtures.tinyLlava
        let settings = { Calibration.defaultSettings 3 with Layers = [| 0; 1; 2 |] }
        let samples = [| for i in 0 .. 11 -> Scenes.render 56 (Scenes.generate 22 i), "What is in the picture?", Dataset.Vqa |]
        Calibration.save calibration (Calibration.calibrate session settings samples (fun _ _ -> ()))
        clean, poisoned, calibration)

let private defenses = [ "none"; "prune-all"; "uniform"; "cleansight" ]

let private evaluate (out: string) =
    let clean, poisoned, calibration = world.Value
    CliTests.run [ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; calibration; "--clean"; clean
                   "--poisoned"; poisoned; "--target"; "you have been hacked lol"; "--defense"; String.Join(",", defenses)
                   "--limit"; "3"; "--max-new-tokens"; "4"; "--out"; out; "--no-progress" ]

let private lines (path: string) = File.ReadAllText(path).Split('\n', StringSplitOptions.RemoveEmptyEntries)

/// metrics.json without the one field that measures time.
let private withoutTime (path: string) =
    let root = JsonNode.Parse(File.ReadAllText path)
    for kv in root.["defenses"].AsObject() do kv.Value.AsObject().Remove "ms_per_sample" |> ignore
    root.ToJsonString()

/// A record without its timing, for comparing two runs.
let private untimed (r: Record) = { r with Ms = 0.0 }

/// The first evaluation of a fresh folder: (out, exit, stderr, samples.csv lines, metrics.json text).
let private firstRun =
    lazy (
        let out = Fixtures.tempDir ()
        let code, _, err = evaluate out
        out, code, err, File.ReadAllBytes(Path.Combine(out, "samples.csv")), File.ReadAllText(Path.Combine(out, "metrics.json")))

/// The folder of that first evaluation (its report.html is rendered in ReportTests).
let evaluatedFolder () = let out, _, _, _, _ = firstRun.Value in out

[<Tests>]
let tests =
    testSequenced <| testList "evaluation" [
        testList "samples.csv lines" [
            test "toLine/ofLine round-trip quotes, commas, newlines and pipes in output, empty and absent fields" {
                for r in [ record 1 "yes, \"it\" is | here"; record 3 ""; record 4 "   padded   "; record 6 "two\nlines\r\n"
                           { record 5 "x" with Pruned = [||]; Distance = None; Answers = [| "only" |] } ] do
                    Expect.equal (ofLine (toLine r)) r $"record {r.Id}"
            }
            test "ms is kept to the microsecond (3 decimals of a millisecond)" {
                let r = { record 2 "ok" with Ms = 1234.56789 }
                Expect.floatClose { absolute = 5e-4; relative = 0.0 } (ofLine (toLine r)).Ms 1234.56789 "ms"
            }
            test "a line with a missing field is refused" {
                let line = toLine (record 1 "a")
                let cut = line.Substring(0, line.LastIndexOf(','))
                Expect.throwsT<ArgumentException> (fun () -> ofLine cut |> ignore) "12 of 13 fields"
            }
        ]

        testList "store" [
            test "a record is read back exactly as appended" {
                let path = Path.Combine(Fixtures.tempDir (), "samples.csv")
                let existing, w = openStore path
                Expect.isEmpty existing "new store"
                using w (fun w -> for i in 1 .. 3 do append w (record i $"answer {i}, with a comma"))
                let back, w = openStore path
                w.Dispose()
                Expect.equal back [| for i in 1 .. 3 -> record i $"answer {i}, with a comma" |] "3 records"
                Expect.equal (lines path).[0] header "header"
            }
            // Decoded outputs can hold '\n' (byte-fallback pieces): such a record must survive the store.
            // Pending: openStore splits the file at every '\n', also inside a quoted field; it should split
            // at '\n' outside quotes only (RFC 4180), which also keeps its cut-short-line repair.
            test "a record whose output holds a newline survives the store" {
                let path = Path.Combine(Fixtures.tempDir (), "samples.csv")
                let _, w = openStore path
                using w (fun w -> append w (record 1 "first line\nsecond line"); append w (record 2 "after"))
                let back, w = openStore path
                w.Dispose()
                Expect.equal back [| record 1 "first line\nsecond line"; record 2 "after" |] "2 records"
            }
            test "a last line cut short by a crash is dropped and the file ends with a newline again" {
                let path = Path.Combine(Fixtures.tempDir (), "samples.csv")
                let _, w = openStore path
                using w (fun w -> append w (record 1 "one"); append w (record 2 "two"))
                let whole = File.ReadAllText path
                let partial = toLine (record 3 "three")
                File.AppendAllText(path, partial.Substring(0, partial.Length / 2))
                let back, w = openStore path
                w.Dispose()
                Expect.equal back [| record 1 "one"; record 2 "two" |] "the 2 complete records"
                Expect.equal (File.ReadAllText path) whole "the file is cut back to its complete lines"
                // and appending after the repair gives a well-formed store
                let _, w = openStore path
                using w (fun w -> append w (record 3 "three"))
                let back, w = openStore path
                w.Dispose()
                Expect.equal back [| record 1 "one"; record 2 "two"; record 3 "three" |] "3 records after resuming"
            }
            test "a file with another header is refused, naming the file" {
                let path = Path.Combine(Fixtures.tempDir (), "samples.csv")
                File.WriteAllText(path, "\"defense\",\"split\",\"id\"\n\"none\",\"clean\",\"x\"\n")
                let message =
                    try (snd (openStore path)).Dispose(); failtest "a foreign header was accepted"
                    with :? InputError as e -> e.Message
                Expect.stringContains message path "names the file"
                Expect.equal (File.ReadAllText path) "\"defense\",\"split\",\"id\"\n\"none\",\"clean\",\"x\"\n" "left untouched"
            }
        ]

        // The model's vocabulary is padded (fixture: 544 rows, tokenizer 514; llava-1.5: 32064 vs 32002), so
        // greedy decoding can emit an id the tokenizer does not know. HF's fast tokenizer drops such ids;
        // today LlavaTokenizer.Decode throws ArgumentOutOfRangeException and `evaluate` dies with a stack trace.
        test "an output id outside the tokenizer (a padded vocabulary row) decodes to nothing" {
            use s = LlavaSession.Load Fixtures.tinyLlava
            Expect.equal s.Tokenizer.VocabSize 514 "(tokenizer: 512 pieces + <image> + <pad>)"
            Expect.equal (s.Decode [| 527L |]) "" "dropped alone"
            Expect.equal (s.Decode [| 274L; 527L; 333L |]) (s.Decode [| 274L; 333L |]) "dropped between others"
        }
        test "metrics per task: each task's FPR and TPR from its own records, in metrics.json; none without detection" {
            let record defense split task flagged : Record =
                { Defense = defense; Split = split; Id = $"{split}-{task}"; Task = task; Answers = [| "yes" |]; Output = "yes"
                  AsrHit = false; Distance = (if defense = "none" then None else Some 1.0); Flagged = flagged
                  Pruned = [||]; VisualTokens = 4; Ms = 1.0 }
            // cleansight: 1 of 4 clean questions and 2 of 2 clean caption requests flagged; 3 of 4 and 1 of 2 triggered
            let cs =
                [| for f in [ true; false; false; false ] -> record "cleansight" "clean" "vqa" f
                   for f in [ true; true ] -> record "cleansight" "clean" "caption" f
                   for f in [ true; true; true; false ] -> record "cleansight" "poisoned" "vqa" f
                   for f in [ true; false ] -> record "cleansight" "poisoned" "caption" f |]
            let none = cs |> Array.map (fun r -> { r with Defense = "none"; Distance = None; Flagged = false })
            let metrics = Summary.ofRecords (Array.append none cs)
            let m = metrics |> Array.find (fst >> (=) "cleansight") |> snd
            Expect.equal m.Fpr (Some 0.5) "pooled FPR: 3 of 6"
            Expect.equal [ for t, d in m.ByTask -> t, d.Fpr, d.Tpr, d.CleanSamples, d.PoisonedSamples ]
                [ "vqa", Some 0.25, Some 0.75, 4, 4; "caption", Some 1.0, Some 0.5, 2, 2 ] "per task"
            Expect.isEmpty (metrics |> Array.find (fst >> (=) "none") |> snd).ByTask "no detection, no per-task rates"
            let json = Summary.toJson metrics
            Expect.equal (json.["defenses"].["cleansight"].["by_task"].["caption"].["fpr"].GetValue<float>()) 1.0 "caption FPR in metrics.json"
            Expect.equal (json.["defenses"].["cleansight"].["by_task"].["vqa"].["clean_samples"].GetValue<int>()) 4 "vqa clean samples"
            Expect.isNull json.["defenses"].["none"].["by_task"] "none has no by_task"
            // each rate with its 95 % Wilson interval: FPR 3 of 6, ASR 0 of 6; none has no FPR
            let pair (n: JsonNode) = n.[0].GetValue<float>(), n.[1].GetValue<float>()
            Expect.equal (pair json.["defenses"].["cleansight"].["fpr_ci95"]) (Metrics.RateInterval.ci95 3 6) "fpr_ci95"
            Expect.equal (pair json.["defenses"].["cleansight"].["asr_ci95"]) (Metrics.RateInterval.ci95 0 6) "asr_ci95"
            Expect.equal (pair json.["defenses"].["cleansight"].["by_task"].["caption"].["fpr_ci95"]) (Metrics.RateInterval.ci95 2 2) "caption fpr_ci95"
            Expect.equal m.TprCi95 (Some(Metrics.RateInterval.ci95 4 6)) "TPR 4 of 6"
            Expect.isNull json.["defenses"].["none"].["fpr_ci95"] "none has no FPR interval"
            Expect.equal (pair json.["defenses"].["none"].["clean_asr_ci95"]) (Metrics.RateInterval.ci95 0 6) "but its clean ASR has one"
        }
        testList "evaluate end to end (fixture model, 3 clean + 3 triggered)" [
            test "exit 0, metrics per defense with rates in [0, 1], one record per defense × split × sample" {
                let out, code, err, _, _ = firstRun.Value
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                let samples = lines (Path.Combine(out, "samples.csv"))
                Expect.equal samples.Length (1 + defenses.Length * 2 * 3) "header + 4 defenses × 2 splits × 3"
                let records = samples.[1..] |> Array.map ofLine
                for d in defenses do
                    for split in [ "clean"; "poisoned" ] do
                        let ids = records |> Array.filter (fun r -> r.Defense = d && r.Split = split) |> Array.map (fun r -> r.Id)
                        Expect.equal ids [| "t000000"; "t000001"; "t000002" |] $"{d}/{split}: the first 3 items"
                for r in records do
                    Expect.equal r.VisualTokens 16 "16 image tokens"
                    match r.Defense with
                    | "none" -> Expect.isEmpty r.Pruned "no defense prunes nothing"; Expect.isNone r.Distance "no distance"
                    | "prune-all" -> Expect.isTrue r.Flagged "prune-all purifies every input"; Expect.isNone r.Distance "no detection"
                    | "uniform" -> Expect.isEmpty r.Pruned "uniform attention removes no token"; Expect.isNone r.Distance "no detection"
                    | _ ->
                        Expect.isSome r.Distance "cleansight measures a distance"
                        if not r.Flagged then Expect.isEmpty r.Pruned "unflagged → nothing pruned"
                let metrics = JsonNode.Parse(File.ReadAllText(Path.Combine(out, "metrics.json"))).["defenses"]
                Expect.sequenceEqual [ for kv in metrics.AsObject() -> kv.Key ] defenses "one entry per defense, none first"
                let rate (d: string) (key: string) =
                    let v = metrics.[d].[key]
                    Expect.isNotNull v $"{d}.{key} present"
                    let x = v.GetValue<float>()
                    Expect.isTrue (x >= 0.0 && x <= 1.0) $"{d}.{key} = {x} in [0, 1]"
                    x
                for d in defenses do
                    for key in [ "asr"; "clean_asr"; "clean_vqa_accuracy"; "poisoned_vscore"; "pruned_fraction" ] do rate d key |> ignore
                    Expect.equal (metrics.[d].["clean_samples"].GetValue<int>()) 3 $"{d}: 3 clean samples"
                    Expect.equal (metrics.[d].["poisoned_samples"].GetValue<int>()) 3 $"{d}: 3 poisoned samples"
                for key in [ "auroc"; "tpr"; "fpr" ] do rate "cleansight" key |> ignore
                Expect.isNull metrics.["none"].["tpr"] "no detection → no TPR"
                Expect.equal (rate "none" "pruned_fraction") 0.0 "no defense prunes nothing"
                // the metrics are those of the records
                let asr d = records |> Array.filter (fun r -> r.Defense = d && r.Split = "poisoned") |> Array.averageBy (fun r -> if r.AsrHit then 1.0 else 0.0)
                for d in defenses do Expect.floatClose Accuracy.veryHigh (rate d "asr") (asr d) $"{d}: ASR from the records"
            }
            test "re-running the same command adds no records and gives the same metrics (time aside)" {
                let out, _, _, samples, metrics = firstRun.Value
                let code, stdout, err = evaluate out
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                Expect.stringContains stdout (Path.Combine(out, "report.html")) "the summary names the report (drawn again)"
                Expect.equal (File.ReadAllBytes(Path.Combine(out, "samples.csv"))) samples "samples.csv unchanged"
                let first = Path.Combine(Fixtures.tempDir (), "metrics.json")
                File.WriteAllText(first, metrics)
                Expect.equal (withoutTime (Path.Combine(out, "metrics.json"))) (withoutTime first) "metrics.json equal but for ms_per_sample"
            }
            test "a re-run with another target, calibration or dataset into the same folder is refused, nothing written" {
                let out, _, _, samples, _ = firstRun.Value
                let clean, poisoned, calibration = world.Value
                let other = Path.Combine(Fixtures.tempDir (), "calibration.json")
                File.WriteAllText(other, File.ReadAllText(calibration) + "\n") // another file, the same calibration
                let refused what (args: string list) =
                    let code, _, err = CliTests.run args
                    Expect.equal code 1 $"{what}: exit 1"
                    Expect.equal (err.Trim().Split('\n').Length) 1 $"{what}: one line: {err}"
                    Expect.stringContains err out $"{what}: names the folder"
                    Expect.stringContains err what $"{what}: names what differs"
                    Expect.equal (File.ReadAllBytes(Path.Combine(out, "samples.csv"))) samples $"{what}: samples.csv untouched"
                let args target calibration =
                    [ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; calibration; "--clean"; clean
                      "--poisoned"; poisoned; "--target"; target; "--defense"; String.Join(",", defenses)
                      "--limit"; "3"; "--max-new-tokens"; "4"; "--out"; out; "--no-progress" ]
                refused "target" (args "something else" calibration)
                refused "calibration" (args "you have been hacked lol" other)
                Expect.isTrue (File.Exists(Path.Combine(out, "run.json"))) "run.json names what the records depend on"
            }
            test "claimRun: same key resumes; another key is refused naming the fields; a broken run.json is refused" {
                let dir = Fixtures.tempDir ()
                let key: RunKey = { Calibration = "a"; Clean = "b"; Poisoned = "c"; Target = "t"; MaxNewTokens = 32; Seed = 0 }
                claimRun dir key
                claimRun dir key
                let message k = try claimRun dir k; "" with :? CleanSight.Core.InputError as e -> e.Message
                Expect.stringContains (message { key with Seed = 1 }) "another seed" "seed"
                Expect.stringContains (message { key with MaxNewTokens = 8; Clean = "x" }) "another clean, max_new_tokens" "two fields, named in order"
                Expect.equal (message key) "" "the same key still resumes"
                File.WriteAllText(Path.Combine(dir, "run.json"), "[1, 2]")
                Expect.stringContains (message key) "is not an evaluation run file" "broken run.json"
            }
            test "report.html and frames/: the evaluated model's charts 1–5, drawn from its records and 3 + 3 inputs seen at every layer" {
                let out, code, err, _, _ = firstRun.Value
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                let page = File.ReadAllText(Path.Combine(out, "report.html"))
                let name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath Fixtures.tinyLlava))
                Expect.stringContains page $"CleanSight evaluation: {name}" "titled by the model (no adapter)"
                for heading in [ "1. Attention stealing by layer"; "2. Where triggered inputs leave the clean reference"; "3. One triggered input up close"
                                 "4. Detection: distances"; "5. Attack success and utility per defense" ] do
                    Expect.stringContains page heading $"section {heading}"
                Expect.stringContains page "detection layers 0,1,2" "the calibration described"
                let records = lines (Path.Combine(out, "samples.csv")) |> Array.skip 1 |> Array.map ofLine
                let frame file = lines (Path.Combine(out, "frames", file)) |> Array.skip 1 |> Array.map (fun l -> l.Split ',')
                // chart 1: every layer, clean and triggered, over the 3 evaluated inputs (--attention-inputs 50 > --limit 3)
                use session = LlavaSession.Load Fixtures.tinyLlava
                let attention = frame "attention-by-layer.csv"
                Expect.equal attention.Length (2 * session.Config.Text.NumHiddenLayers) "2 conditions × every layer"
                for row in attention do Expect.equal (Array.last row) "3" "3 inputs each"
                // chart 4: one row per CleanSight record, flagged as the record
                let cs = records |> Array.filter (fun r -> r.Defense = "cleansight")
                let distances = frame "distances.csv"
                Expect.equal distances.Length cs.Length "one distance per CleanSight record"
                let flagged = distances |> Array.map (fun row -> row.[3].Trim('"'), row.[2], row.[7])
                Expect.equal (Set.ofArray flagged)
                    (cs |> Array.map (fun r -> r.Id, (if r.Split = "poisoned" then "triggered" else "clean"), (if r.Flagged then "True" else "False")) |> Set.ofArray)
                    "distances.csv: the records' flags"
                // chart 5: the table has one row per defense, ASR as metrics.json
                let metrics = JsonNode.Parse(File.ReadAllText(Path.Combine(out, "metrics.json"))).["defenses"]
                let table = frame "table.csv"
                Expect.equal (table |> Array.map (fun row -> row.[2].Trim('"'))) (List.toArray defenses) "one row per defense"
                for row in table do
                    let asr = metrics.[row.[2].Trim('"')].["asr"].GetValue<float>()
                    Expect.equal (row.[3].Trim('"')) $"{100.0 * asr:F1}" $"{row.[2]}: ASR as metrics.json"
                // chart 3: the answers of every evaluated defense for one triggered input
                let answers = frame "sample-answers.csv"
                Expect.equal answers.Length defenses.Length "one answer per defense"
            }
            test "--attention-inputs 0 leaves out charts 1–3 but draws 4–5; a negative count is refused before loading" {
                let clean, poisoned, calibration = world.Value
                let out = Fixtures.tempDir ()
                let args n =
                    [ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; calibration; "--clean"; clean
                      "--poisoned"; poisoned; "--target"; "you have been hacked lol"; "--defense"; "cleansight"
                      "--limit"; "2"; "--max-new-tokens"; "2"; "--out"; out; "--attention-inputs"; n; "--no-progress" ]
                let code, _, err = CliTests.run (args "0")
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                let page = File.ReadAllText(Path.Combine(out, "report.html"))
                Expect.isFalse (page.Contains "1. Attention stealing by layer") "no chart 1"
                Expect.isFalse (page.Contains "3. One triggered input up close") "no chart 3"
                Expect.stringContains page "0 and 0 were (--attention-inputs)" "says why"
                Expect.stringContains page "4. Detection: distances" "chart 4"
                Expect.stringContains page "5. Attack success and utility per defense" "chart 5"
                let other = Fixtures.tempDir ()
                let code, _, err = CliTests.run ((args "-1") |> List.map (fun a -> if a = out then other else a))
                Expect.equal code 1 "exit 1"
                Expect.equal (err.Trim()) "error: --attention-inputs: must be 0 or more, got -1" "one line naming the option"
                Expect.isEmpty (Directory.GetFileSystemEntries other) "nothing written"
            }
            test "deleting the last 2 records and re-running restores exactly those records" {
                let _, _, _, samples, _ = firstRun.Value
                // a copy of the first run's folder, so the order of these tests does not matter
                let out = Fixtures.tempDir ()
                let path = Path.Combine(out, "samples.csv")
                let original = Encoding.UTF8.GetString(samples).Split('\n', StringSplitOptions.RemoveEmptyEntries)
                File.WriteAllText(path, String.Join("\n", original.[.. original.Length - 3]) + "\n")
                Expect.equal (lines path).Length (original.Length - 2) "(2 records removed)"
                let code, _, err = evaluate out
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                let restored = lines path
                Expect.equal restored.Length original.Length "same number of lines"
                Expect.equal restored.[.. original.Length - 3] original.[.. original.Length - 3] "earlier lines untouched"
                let again = restored.[original.Length - 2 ..] |> Array.map (ofLine >> untimed)
                let before = original.[original.Length - 2 ..] |> Array.map (ofLine >> untimed)
                Expect.equal again before "the same records (outputs, distances, flags, pruned tokens)"
            }
        ]
    ]
