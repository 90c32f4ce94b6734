/// `cleansight table`: metrics.json read back, the paper-shaped table of several evaluate folders, and
/// its refusals (one line naming the file, nothing written).
module CleanSight.Tests.TableTests

open System
open System.IO
open Deedle
open Expecto
open CleanSight.Pipeline
open CleanSight.Pipeline.Analysis

let private metric (asr: float option) (utility: float) (auroc: float option) (n: int) : Summary.DefenseMetrics =
    { Asr = asr; CleanAsr = Some 0.0
      Clean = { Vqa = Some utility; VScore = Some(utility + 0.1); Cider = None; Utility = Some utility }
      Poisoned = { Vqa = Some(utility / 2.0); VScore = None; Cider = Some 1.5; Utility = Some(utility / 2.0) }
      Auroc = auroc; Tpr = auroc |> Option.map (fun _ -> 0.9); Fpr = auroc |> Option.map (fun _ -> 0.02)
      AsrCi95 = None; CleanAsrCi95 = Some(0.0, 0.05); TprCi95 = None; FprCi95 = auroc |> Option.map (fun _ -> 0.005, 0.07)
      PrunedFraction = Some 0.0; MsPerSample = Some 12.5; CleanSamples = n; PoisonedSamples = n; ByTask = [||] }

/// Random metrics from a seed: every field present or absent, finite values, a few tasks.
let private randomMetrics (seed: int) : (string * Summary.DefenseMetrics)[] =
    let rng = Random(seed)
    let value () = if rng.Next 4 = 0 then None else Some(rng.NextDouble() * (if rng.Next 3 = 0 then 1000.0 else 1.0))
    let interval () = if rng.Next 3 = 0 then None else (let a = rng.NextDouble() in Some(a, a + rng.NextDouble()))
    let utility () : Summary.Utility = { Vqa = value (); VScore = value (); Cider = value (); Utility = value () }
    [| for d in 0 .. rng.Next(1, 5) ->
        $"defense-{d}",
        { Asr = value (); CleanAsr = value (); Clean = utility (); Poisoned = utility (); Auroc = value (); Tpr = value (); Fpr = value ()
          AsrCi95 = interval (); CleanAsrCi95 = interval (); TprCi95 = interval (); FprCi95 = interval ()
          PrunedFraction = value (); MsPerSample = value (); CleanSamples = rng.Next 2000; PoisonedSamples = rng.Next 2000
          ByTask =
            [| for t in 0 .. rng.Next(-1, 3) ->
                $"task-{t}",
                ({ Tpr = value (); Fpr = value (); TprCi95 = interval (); FprCi95 = interval ()
                   CleanSamples = rng.Next 500; PoisonedSamples = rng.Next 500 }: Summary.TaskDetection) |] } |]

/// Writes `text` as DIR/metrics.json of a fresh folder, returns the folder.
let private folderWith (text: string) =
    let dir = Fixtures.tempDir ()
    File.WriteAllText(Path.Combine(dir, "metrics.json"), text)
    dir

let private writeMetrics (metrics: (string * Summary.DefenseMetrics)[]) =
    let dir = Fixtures.tempDir ()
    Summary.write (Path.Combine(dir, "metrics.json")) metrics
    dir

/// `table` fails: one error line holding `expected`, a non-zero exit, no --out folder.
let private refuses (args: string list) (expected: string) =
    let out = Path.Combine(Fixtures.tempDir (), "table")
    let code, stdout, err = Fixtures.runCli ([ "table" ] @ args @ [ "--out"; out ])
    Expect.notEqual code 0 "non-zero exit"
    let lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
    Expect.equal lines.Length 1 $"one error line, got: {err}"
    Expect.stringContains lines.[0] expected "names the file and the problem"
    Expect.equal stdout "" "no table printed"
    Expect.isFalse (Directory.Exists out) "nothing written"

/// A CSV's rows as cells, without Deedle's row-key column.
let private cells (path: string) =
    let frame = Frame.ReadCsv(path, inferTypes = false)
    [ for key in frame.RowKeys -> [ for c in frame.ColumnKeys |> Seq.filter ((<>) "Key") -> frame.GetColumn<string>(c).[key] ] ]

[<Tests>]
let tests =
    testSequenced <| testList "table" [
        testList "metrics.json read back" [
            test "Summary.read inverts Summary.write (200 random metric sets: absent fields, intervals, tasks)" {
                for seed in 0 .. 199 do
                    let metrics = randomMetrics seed
                    let back = Summary.read (Path.Combine(writeMetrics metrics, "metrics.json"))
                    Expect.equal back metrics $"seed {seed}"
            }
            test "a file that is not metrics.json is refused in one line naming it" {
                let problem text =
                    let path = Path.Combine(folderWith text, "metrics.json")
                    let e = Expect.throwsC (fun () -> Summary.read path |> ignore) id
                    Expect.stringStarts e.Message path "names the file"
                    e.Message.Substring(path.Length + 2)
                Expect.stringStarts (problem "{\"defenses\": ") "is not JSON" "cut short"
                Expect.stringStarts (problem "[1, 2]") "has no \"defenses\" object" "an array"
                Expect.equal (problem "{\"defenses\": {\"none\": {\"asr\": \"high\"}}}") "defenses.none.asr is not a number" "a string rate"
                Expect.equal (problem "{\"defenses\": {\"none\": {\"clean_samples\": 2.5}}}") "defenses.none.clean_samples is not a count: 2.5" "a fractional count"
                Expect.equal (problem "{\"defenses\": {\"none\": {\"fpr_ci95\": [0.1]}}}") "defenses.none.fpr_ci95 is not [low, high]" "a one-bound interval"
                Expect.equal (problem "{\"defenses\": {\"none\": 3}}") "defenses.none is not a JSON object" "a defense that is a number"
            }
        ]
        testList "the paper's shape" [
            test "ASR shows one triggered input: whole percents up to 100 inputs, then a decimal per tenfold" {
                Expect.equal [ for n in [ 1; 60; 100; 101; 1000; 1001; 10000 ] -> DefenseTable.asrDecimals n ] [ 0; 0; 0; 1; 1; 2; 2 ] "decimals"
            }
            test "one row per model, ASR / utility per defense, – where a model lacks a defense, CleanSight's AUROC last" {
                let models: DefenseTable.Model list =
                    [ { Name = "badnet"; Metrics = [| "none", metric (Some 0.96) 0.563 None 100; "blur", metric (Some 0.13) 0.517 None 100
                                                      "cleansight", metric (Some 0.01) 0.5624 (Some 0.9987) 100 |] }
                      { Name = "my|model"; Metrics = [| "none", metric (Some 0.954) 0.587 None 1000; "cleansight", metric None 0.584 (Some 1.0) 1000 |] } ]
                Expect.equal (DefenseTable.markdown models)
                    ("| attack | none | blur | cleansight | AUROC |\n"
                     + "| --- | --- | --- | --- | --- |\n"
                     + "| badnet | 96 / 56.3 | 13 / 51.7 | 1 / 56.2 | 1.00 |\n"
                     + "| my\\|model | 95.4 / 58.7 | – | – / 58.4 | 1.00 |\n") "markdown"
                let noDetection: DefenseTable.Model list = [ { Name = "a"; Metrics = [| "none", metric (Some 0.5) 0.5 None 10 |] } ]
                Expect.equal (fst (DefenseTable.paperRows noDetection)) [ "attack"; "none" ] "no AUROC column without CleanSight"
            }
        ]
        testList "cleansight table" [
            test "two evaluate folders: the Markdown on stdout, and table.md, table.csv (evaluate's own rows) and report.html under --out" {
                let first, second = EvaluationTests.evaluatedFolder (), DefendTests.evaluatedFolder ()
                let out = Path.Combine(Fixtures.tempDir (), "table")
                let code, stdout, err = Fixtures.runCli [ "table"; first; second; "--names"; "fixture,badnet"; "--out"; out ]
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                let lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                Expect.equal lines.[0] "| attack | none | prune-all | uniform | cleansight | AUROC |" "every defense of both folders, in order"
                Expect.equal lines.Length 4 "header, rule, two rows"
                Expect.stringStarts lines.[2] "| fixture | " "first folder first"
                Expect.stringStarts lines.[3] "| badnet | " "then the second"
                Expect.equal (lines.[3].Split('|').[3].Trim()) "–" "the second folder has no prune-all"
                Expect.equal (File.ReadAllText(Path.Combine(out, "table.md"))) stdout "table.md is what was printed"
                // the long table: exactly the rows each evaluate wrote in its own frames/table.csv
                // (the same numbers, read back from metrics.json), the second with its name
                let own folder = cells (Path.Combine(folder, "frames", "table.csv"))
                let rename name (rows: string list list) = rows |> List.map (fun r -> name :: List.tail r)
                Expect.equal (cells (Path.Combine(out, "table.csv"))) (rename "fixture" (own first) @ rename "badnet" (own second)) "table.csv"
                let html = File.ReadAllText(Path.Combine(out, "report.html"))
                Expect.stringContains html "<td>fixture</td>" "the report's table names the rows"
                Expect.stringContains html "Attack success rate (%) per defense" "chart 5's bars"
            }
            test "by default a row is named after its folder" {
                let folder = Path.Combine(Fixtures.tempDir (), "issba")
                Directory.CreateDirectory folder |> ignore
                Summary.write (Path.Combine(folder, "metrics.json")) [| "none", metric (Some 0.8) 0.5 None 100 |]
                let code, stdout, _ = Fixtures.runCli [ "table"; folder + "/" ]
                Expect.equal code 0 "exit 0"
                Expect.stringContains stdout "| issba | 80 / 50.0 |" "the folder's name, trailing slash or not"
            }
            test "refusals: one line naming the folder or file, nothing written" {
                let good = writeMetrics [| "none", metric (Some 0.5) 0.5 None 10 |]
                let missing = Path.Combine(Fixtures.tempDir (), "absent")
                refuses [ good; missing ] $"{missing}: no such folder"
                let empty = Fixtures.tempDir ()
                refuses [ good; empty ] $"{empty}: has no metrics.json"
                let corrupt = folderWith "{\"defenses\": {\"none\": {\"asr\": true}}}"
                refuses [ good; corrupt ] $"""{Path.Combine(corrupt, "metrics.json")}: defenses.none.asr is not a number"""
                let none = folderWith "{\"defenses\": {}}"
                refuses [ none ] $"""{Path.Combine(none, "metrics.json")}: names no defense"""
                refuses [ good; empty; "--names"; "a" ] "--names: 1 names for 2 folders"
                refuses [ good; good ] $"--names: two folders are named '{Path.GetFileName good}'"
                refuses [ good; empty; "--names"; "a, " ] "--names: a name is empty"
            }
        ]
    ]
