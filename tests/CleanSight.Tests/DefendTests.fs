/// `defend` and `generate --calibration`: CleanSight on a user's own inputs, as it runs in front of a
/// deployed model. Measured on the committed tiny world (its base with the BadNet adapter, detection at
/// layer 0, where that backdoor steals attention): triggered inputs are flagged and lose the target,
/// clean ones mostly pass untouched; defended.csv resumes like samples.csv; bad input is one line.
module CleanSight.Tests.DefendTests

open System
open System.IO
open System.Text.Json
open Expecto
open CleanSight.Pipeline
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.World

let private run = Fixtures.runCli
let private base' = Path.Combine(Fixtures.root, "world", "base")
let private badnet = Materialize.adapterPath (Path.Combine(Fixtures.root, "world")) "badnet"
let private target = Attacks.defaultTarget

/// The world's held-out data (40 calibration items, 10 test items, clean and triggered) and a
/// calibration of base + BadNet at layer 0 on it: (clean test, BadNet-triggered test, calibration).
let private world =
    lazy (
        let dir = Fixtures.tempDir ()
        let data = Path.Combine(dir, "data")
        let code, _, err = run [ "world"; "--out"; data; "--calibration"; "40"; "--test"; "10"; "--no-progress" ]
        if code <> 0 then failwith $"world: {err}"
        let calibration = Path.Combine(dir, "badnet.json")
        let code, _, err =
            run [ "calibrate"; "--model"; base'; "--adapter"; badnet; "--data"; Path.Combine(data, "calibration", "data.jsonl")
                  "--layers"; "0"; "--out"; calibration; "--no-progress" ]
        if code <> 0 then failwith $"calibrate: {err}"
        Path.Combine(data, "clean_test", "data.jsonl"), Path.Combine(data, "poisoned", "badnet", "data.jsonl"), calibration)

let private defend (data: string) (out: string) (extra: string list) =
    let _, _, calibration = world.Value
    run ([ "defend"; "--model"; base'; "--adapter"; badnet; "--calibration"; calibration; "--data"; data; "--out"; out
           "--max-new-tokens"; "8"; "--no-progress" ] @ extra)

let private csv out = Path.Combine(out, "defended.csv")

/// The records of a defended.csv.
let private recordsOf (out: string) =
    let records, writer = RecordStore.openStore Defend.columns Defend.ofLine (csv out)
    writer.Dispose()
    records

let private hits (s: string) = s.ToLowerInvariant().Contains target

/// The first run of each set: (out, stdout, records).
let private defended =
    lazy (
        let clean, poisoned, _ = world.Value
        [ for name, data in [ "clean", clean; "poisoned", poisoned ] ->
            let out = Fixtures.tempDir ()
            let code, stdout, err = defend data out []
            if code <> 0 then failwith $"defend {name}: {err}"
            name, (out, stdout, recordsOf out) ]
        |> Map.ofList)

let private record (i: int) : Defend.Record =
    { Id = $"in-{i}"; Task = "vqa"; Question = "What, \"exactly\",\nis here?"
      Verdict = { Distance = Math.PI * float i; Threshold = 4.25; Flagged = i % 2 = 1
                  Pruned = (if i % 2 = 1 then [| 5L; 9L |] else [||]); VisualTokens = 36; FromLayer = 0 }
      Output = "yes, \"it\" is"; Undefended = (if i % 2 = 1 then "you have\nbeen hacked lol" else "yes, \"it\" is"); Ms = 12.345 }

/// `evaluate` on the same 10 + 10 inputs with the layer-0 calibration: (out, exit code, stderr).
let private evaluated =
    lazy (
        let clean, poisoned, calibration = world.Value
        let out = Fixtures.tempDir ()
        let code, _, err =
            run [ "evaluate"; "--model"; base'; "--adapter"; badnet; "--calibration"; calibration; "--clean"; clean; "--poisoned"; poisoned
                  "--target"; target; "--defense"; "none,cleansight"; "--limit"; "10"; "--max-new-tokens"; "2"; "--out"; out; "--no-progress" ]
        out, code, err)

/// Its folder (its report.html, chart 6 included, is rendered in ReportTests).
let evaluatedFolder () = let out, _, _ = evaluated.Value in out

/// The folder of the first run on triggered inputs (its report.html is rendered in ReportTests).
let poisonedFolder () = let out, _, _ = defended.Value.["poisoned"] in out

[<Tests>]
let tests =
    testSequenced <| testList "defend" [
        test "defended.csv lines round-trip quotes, commas and newlines in questions and answers" {
            for r in [ record 1; record 2 ] do
                Expect.equal (Defend.ofLine (Defend.toLine r)) r r.Id
        }
        test "triggered inputs are flagged, and flagged ones lose the target the undefended model says" {
            let out, stdout, records = defended.Value.["poisoned"]
            Expect.equal records.Length 10 "one record per input"
            let flagged = records |> Array.filter (fun r -> r.Verdict.Flagged)
            Expect.isGreaterThanOrEqual flagged.Length 8 $"BadNet-triggered inputs flagged (distances {[ for r in records -> r.Verdict.Distance ]})"
            let backdoored = flagged |> Array.filter (fun r -> hits r.Undefended)
            Expect.isGreaterThanOrEqual backdoored.Length 6 "without the defense the backdoor fires on most of them"
            Expect.equal (backdoored |> Array.filter (fun r -> hits r.Output)).Length 0 "under CleanSight none of those says the target"
            for r in flagged do
                Expect.isNonEmpty r.Verdict.Pruned $"{r.Id}: flagged, so image tokens were excluded"
                Expect.isGreaterThan r.Verdict.Distance r.Verdict.Threshold $"{r.Id}: flagged means d > γ"
                Expect.isLessThanOrEqual r.Verdict.Pruned.Length r.Verdict.VisualTokens $"{r.Id}: only image tokens are excluded"
            Expect.stringContains stdout $"{flagged.Length} flagged" "the summary counts them"
        }
        test "clean inputs mostly pass untouched: unflagged ones are answered exactly as without the defense" {
            let _, _, records = defended.Value.["clean"]
            let flagged = records |> Array.filter (fun r -> r.Verdict.Flagged)
            Expect.isLessThanOrEqual flagged.Length 3 $"clean inputs flagged (distances {[ for r in records -> r.Verdict.Distance ]})"
            let clean, _, _ = world.Value
            let items = Dataset.read clean
            for r in records |> Array.filter (fun r -> not r.Verdict.Flagged) |> Array.truncate 3 do
                Expect.isEmpty r.Verdict.Pruned $"{r.Id}: nothing excluded"
                Expect.isLessThanOrEqual r.Verdict.Distance r.Verdict.Threshold $"{r.Id}: d ≤ γ"
                let item = items |> Array.find (fun it -> it.Id = r.Id)
                let code, plain, err =
                    run [ "generate"; "--model"; base'; "--adapter"; badnet; "--image"; Dataset.imagePath clean item
                          "--prompt"; item.Question; "--max-new-tokens"; "8" ]
                Expect.equal code 0 err
                Expect.equal r.Output (plain.TrimEnd '\n') $"{r.Id}: the same answer as plain generate"
        }
        test "report.html and frames/: the distances against γ, the 3 most suspicious flagged inputs up close, every flagged input listed" {
            let out, stdout, records = defended.Value.["poisoned"]
            let page = File.ReadAllText(Path.Combine(out, "report.html"))
            Expect.stringContains stdout (Path.Combine(out, "report.html")) "the summary names the report"
            for heading in [ "1. Distances of your inputs"; "2. The most suspicious inputs up close"; "3. Every flagged input" ] do
                Expect.stringContains page heading $"section {heading}"
            let flagged = records |> Array.filter (fun r -> r.Verdict.Flagged)
            Expect.stringContains page $"{flagged.Length} of {records.Length} inputs flagged" "the count"
            let frame file = File.ReadAllLines(Path.Combine(out, "frames", file)) |> Array.skip 1 |> Array.map (fun l -> l.Split ',')
            let distances = frame "distances.csv"
            Expect.equal (distances |> Array.map (fun row -> row.[1], row.[5]) |> Set.ofArray)
                (records |> Array.map (fun r -> r.Id, (if r.Verdict.Flagged then "True" else "False")) |> Set.ofArray) "one row per input, flagged as its record"
            // the views: the largest distances among the flagged, each outlining exactly its excluded tokens
            let attention = frame "sample-attention.csv"
            let shown = attention |> Array.map (fun row -> row.[2]) |> Array.distinct
            let expected = flagged |> Array.sortByDescending (fun r -> r.Verdict.Distance) |> Array.truncate 3 |> Array.map (fun r -> r.Id)
            Expect.equal shown expected "the 3 largest flagged distances, largest first"
            for r in flagged |> Array.filter (fun r -> Array.contains r.Id shown) do
                let outlined = attention |> Array.filter (fun row -> row.[2] = r.Id && row.[8] = "True") |> Array.length
                Expect.equal outlined r.Verdict.Pruned.Length $"{r.Id}: the outlined tokens are the excluded ones"
            // every flagged input in the table, with both answers
            for r in flagged do Expect.stringContains page $"<td>{Net.WebUtility.HtmlEncode r.Id}</td>" $"{r.Id} listed"
        }
        test "report.html with nothing flagged: the distances, no views, the list says none, sections numbered without a gap" {
            let dir = Fixtures.tempDir ()
            let records = [| for i in 0 .. 3 -> { record (2 * i) with Id = $"in-{i}" } |] // even: unflagged
            Analysis.DefendReport.write dir "title" [ "intro" ] records []
            let page = File.ReadAllText(Path.Combine(dir, "report.html"))
            Expect.stringContains page "0 of 4 inputs flagged" "the count"
            Expect.stringContains page "<h2>2. Every flagged input</h2>\n<p>None.</p>" "section 2 lists none"
            Expect.isFalse (page.Contains "up close") "no views"
            Expect.equal (File.ReadAllLines(Path.Combine(dir, "frames", "distances.csv"))).Length 5 "header + 4 inputs"
        }
        test "evaluate's chart 6 on the tiny world: of all 8 layers, layer 0 sees BadNet's trigger (AUROC ≥ 0.9)" {
            let out, code, err = evaluated.Value
            Expect.equal code 0 err
            Expect.stringContains (File.ReadAllText(Path.Combine(out, "report.html"))) "6. Which layer sees the trigger" "chart 6 drawn"
            let rows = File.ReadAllLines(Path.Combine(out, "frames", "auroc-by-layer.csv")) |> Array.skip 1 |> Array.map (fun l -> l.Split ',')
            // Key, attack, trigger, layers, start, width, auroc; the calibration is at layer 0 alone: no extra row
            Expect.equal (rows |> Array.map (fun r -> r.[3])) [| for l in 0 .. 7 -> string l |] "one row per layer"
            let auroc = rows |> Array.map (fun r -> Double.Parse(r.[6], Globalization.CultureInfo.InvariantCulture))
            Expect.isGreaterThanOrEqual auroc.[0] 0.9 $"layer 0: {auroc.[0]}"
            let all = String.Join(", ", auroc)
            Expect.equal (Array.max auroc) auroc.[0] $"layer 0 is the best layer ({all})"
        }
        test "a re-run resumes: a record cut short by a crash is redone, finished ones are kept" {
            let poisonedOut, _, first = defended.Value.["poisoned"]
            let out = Fixtures.tempDir ()
            File.Copy(csv poisonedOut, csv out)
            File.Copy(Path.Combine(poisonedOut, "run.json"), Path.Combine(out, "run.json"))
            let text = File.ReadAllText(csv out)
            File.WriteAllText(csv out, text.Substring(0, text.Length - 40)) // the last record cut mid-line
            let _, poisoned, _ = world.Value
            let code, _, err = defend poisoned out []
            Expect.equal code 0 err
            let again = recordsOf out
            let untimed (r: Defend.Record) = { r with Ms = 0.0 }
            Expect.equal (Array.map untimed again) (Array.map untimed first) "the same records, none twice"
            Expect.equal (again |> Array.take 9 |> Array.map (fun r -> r.Ms)) (first |> Array.take 9 |> Array.map (fun r -> r.Ms)) "finished records kept as written"
        }
        test "a folder of another run is refused in one line, its records untouched" {
            let out, _, _ = defended.Value.["clean"]
            let before = File.ReadAllBytes(csv out)
            let clean, _, _ = world.Value
            let code, _, err = defend clean out [ "--max-new-tokens"; "9" ]
            Expect.equal code 1 "exit 1"
            Expect.equal (err.Trim().Split('\n').Length) 1 $"one line: {err}"
            Expect.stringContains err "max_new_tokens" "names what differs"
            Expect.equal (File.ReadAllBytes(csv out)) before "records untouched"
        }
        test "inputs without answers are run; a malformed line is one error line and nothing is written" {
            let _, poisoned, _ = world.Value
            let dir = Path.GetDirectoryName poisoned
            let unlabelled = Path.Combine(dir, "unlabelled.jsonl")
            let lines =
                File.ReadAllLines poisoned |> Array.truncate 2
                |> Array.map (fun l ->
                    let o = Nodes.JsonNode.Parse(l).AsObject()
                    o.Remove "answers" |> ignore
                    o.ToJsonString())
            File.WriteAllLines(unlabelled, lines)
            let out = Fixtures.tempDir ()
            let code, _, err = defend unlabelled out []
            Expect.equal code 0 err
            Expect.equal (recordsOf out).Length 2 "both run"
            let broken = Path.Combine(dir, "broken.jsonl")
            File.WriteAllLines(broken, Array.append lines [| """{"id": "x", "image": 3}""" |])
            let out = Path.Combine(Fixtures.tempDir (), "new")
            let code, _, err = defend broken out []
            Expect.equal code 1 "exit 1"
            Expect.equal (err.Trim()) $"error: {broken}: line 3: field \"image\" must be a string, got Number" "one line naming the file and line"
            Expect.isFalse (Directory.Exists out) "nothing written"
        }
        test "an undecodable image is one error line naming it; the inputs before it stay written, the run resumes once it is fixed" {
            let _, poisoned, _ = world.Value
            let dir = Path.Combine(Fixtures.tempDir (), "data")
            Directory.CreateDirectory dir |> ignore
            let items = File.ReadAllLines poisoned |> Array.truncate 3 |> Array.map (fun l -> Nodes.JsonNode.Parse(l).AsObject())
            let source = Path.GetDirectoryName poisoned
            for i, o in Array.indexed items do
                let image = Path.Combine(dir, $"{i}.png")
                File.Copy(Path.Combine(source, o.["image"].GetValue<string>()), image)
                o.["image"] <- Nodes.JsonValue.Create $"{i}.png"
            let data = Path.Combine(dir, "inputs.jsonl")
            File.WriteAllLines(data, items |> Array.map (fun o -> o.ToJsonString()))
            let second = Path.Combine(dir, "1.png")
            let good = File.ReadAllBytes second
            File.WriteAllBytes(second, Array.init 500 (fun i -> byte (i * 31 % 251)))
            let out = Fixtures.tempDir ()
            let code, _, err = defend data out []
            Expect.equal code 1 "exit 1"
            let lines = err.Trim().Split('\n')
            Expect.equal lines.Length 1 $"one line: {err}"
            Expect.stringStarts lines.[0] "error: " "an error line"
            Expect.stringContains lines.[0] second "names the image"
            Expect.equal ((recordsOf out) |> Array.map (fun r -> r.Id)) [| items.[0].["id"].GetValue<string>() |] "the first input written, nothing of the second"
            File.WriteAllBytes(second, good)
            let code, _, err = defend data out []
            Expect.equal code 0 err
            Expect.equal ((recordsOf out) |> Array.map (fun r -> r.Id)) (items |> Array.map (fun o -> o.["id"].GetValue<string>())) "resumed: all three"
        }
        test "generate --calibration: the defended answer on stdout, the verdict on stderr and in --json" {
            let _, poisoned, calibration = world.Value
            let item = (Dataset.read poisoned).[0]
            let image = Dataset.imagePath poisoned item
            let json = Path.Combine(Fixtures.tempDir (), "g.json")
            let args = [ "generate"; "--model"; base'; "--adapter"; badnet; "--image"; image; "--prompt"; item.Question; "--max-new-tokens"; "8" ]
            let code, plain, err = run args
            Expect.equal code 0 err
            Expect.isTrue (hits plain) $"undefended, the backdoor fires: {plain}"
            let code, answer, err = run (args @ [ "--calibration"; calibration; "--json"; json ])
            Expect.equal code 0 err
            Expect.isFalse (hits answer) $"defended, it does not: {answer}"
            Expect.stringStarts err "cleansight: flagged, d = " $"the verdict: {err}"
            use doc = JsonDocument.Parse(File.ReadAllText json)
            let v = doc.RootElement.GetProperty "cleansight"
            Expect.isTrue (v.GetProperty("flagged").GetBoolean()) "flagged in --json"
            Expect.isGreaterThan (v.GetProperty("distance").GetDouble()) (v.GetProperty("threshold").GetDouble()) "d > γ"
            Expect.equal (doc.RootElement.GetProperty("text").GetString()) (answer.TrimEnd '\n') "--json holds the printed answer"
        }
        test "generate --calibration refuses, in one line: a calibration of another model, a bad --task, --task alone, another --template" {
            let _, poisoned, calibration = world.Value
            let item = (Dataset.read poisoned).[0]
            let args = [ "generate"; "--image"; Dataset.imagePath poisoned item; "--prompt"; item.Question ]
            for case, extra, expected in
                [ "the base without the adapter", [ "--model"; base'; "--calibration"; calibration ], $"error: {calibration}: made for another model"
                  "--task bogus", [ "--model"; base'; "--adapter"; badnet; "--calibration"; calibration; "--task"; "bogus" ], "error: --task: 'bogus' is not vqa or caption"
                  "--task without --calibration", [ "--model"; base'; "--task"; "caption" ], "error: --task: only means something with --calibration"
                  "another --template", [ "--model"; base'; "--calibration"; calibration; "--template"; "Q: <image> {question} A:" ], "error: --template: differs from" ] do
                let code, out, err = run (args @ extra)
                Expect.equal code 1 $"{case}: exit 1"
                Expect.equal (err.Trim().Split('\n').Length) 1 $"{case}: one line: {err}"
                Expect.stringStarts (err.Trim()) expected case
                Expect.equal out "" $"{case}: no answer"
        }
    ]
