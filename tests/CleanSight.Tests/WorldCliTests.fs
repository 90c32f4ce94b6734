/// The `world` and `demo` commands as a user runs them: the manifest contract of `world` (automated
/// checks read it), a world of one's own through `--world`, and one error line with nothing written
/// for a folder that is not a world.
module CleanSight.Tests.WorldCliTests

open System.IO
open System.Text.Json
open Expecto
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.World

let private run = Fixtures.runCli
let private committedWorld = Path.Combine(Fixtures.root, "world")

/// Lines of a JSONL file.
let private lineCount (path: string) = File.ReadAllLines path |> Array.filter (fun l -> l.Trim() <> "") |> Array.length

/// A world of one's own in a fresh folder: the committed base and the named committed adapters.
let private ownWorld (adapters: string list) =
    let dir = Fixtures.tempDir ()
    let copy (from: string) (into: string) =
        Directory.CreateDirectory into |> ignore
        for f in Directory.GetFiles from do File.Copy(f, Path.Combine(into, Path.GetFileName f))
    copy (Path.Combine(committedWorld, "base")) (Path.Combine(dir, "base"))
    Directory.CreateDirectory(Path.Combine(dir, "adapters")) |> ignore
    for a in adapters do
        File.Copy(Materialize.adapterPath committedWorld a, Materialize.adapterPath dir a)
    dir

/// stderr's lines.
let private lines (err: string) = err.Split('\n', System.StringSplitOptions.RemoveEmptyEntries)

[<Tests>]
let tests =
    testSequenced <| testList "cli world and demo" [
        test "world writes the manifest contract: model, calibration, clean test, every attack's adapter, triggered test, target and mode" {
            let out = Path.Combine(Fixtures.tempDir (), "w")
            let code, stdout, err = run [ "world"; "--out"; out; "--calibration"; "4"; "--test"; "3"; "--no-progress" ]
            Expect.equal code 0 $"exit 0 ({err})"
            let manifestPath = Path.Combine(out, "manifest.json")
            Expect.stringContains stdout manifestPath "prints the manifest's path"
            use doc = JsonDocument.Parse(File.ReadAllText manifestPath)
            let m = doc.RootElement
            let path (e: JsonElement) = Path.GetFullPath(e.GetString(), out) // absolute or relative to the manifest
            Expect.equal (path (m.GetProperty "model")) (Path.Combine(committedWorld, "base")) "the committed base"
            Expect.equal (lineCount (path (m.GetProperty "calibration"))) 4 "--calibration items"
            let tasks = Dataset.read (path (m.GetProperty "calibration")) |> Array.map (fun it -> it.Task)
            Expect.equal tasks [| Dataset.Vqa; Dataset.Vqa; Dataset.Caption; Dataset.Vqa |] "every third calibration item a caption request"
            Expect.equal (lineCount (path (m.GetProperty "clean_test"))) 3 "--test items"
            let attacks = [ for a in m.GetProperty("attacks").EnumerateArray() -> a ]
            Expect.equal [ for a in attacks -> a.GetProperty("name").GetString() ] [ for a in Attacks.all Attacks.defaultTarget -> a.Name ] "every attack, in order"
            for a in attacks do
                let name = a.GetProperty("name").GetString()
                Expect.isTrue (File.Exists(path (a.GetProperty "adapter"))) $"{name}: its adapter exists"
                let poisoned = path (a.GetProperty "poisoned_test")
                Expect.equal (lineCount poisoned) 3 $"{name}: the test items, triggered"
                for item in File.ReadAllLines poisoned |> Array.filter (fun l -> l.Trim() <> "") do
                    use it = JsonDocument.Parse item
                    let image = Path.Combine(Path.GetDirectoryName poisoned, it.RootElement.GetProperty("image").GetString())
                    Expect.isTrue (File.Exists image) $"{name}: {image} exists"
                Expect.equal (a.GetProperty("target").GetString()) Attacks.defaultTarget $"{name}: target"
                Expect.contains [ "replace"; "insert" ] (a.GetProperty("mode").GetString()) $"{name}: mode"
        }
        test "world --world points the manifest at a world of one's own" {
            let mine = ownWorld [ "badnet" ]
            let out = Path.Combine(Fixtures.tempDir (), "w")
            let code, _, err = run [ "world"; "--world"; mine; "--out"; out; "--calibration"; "2"; "--test"; "1"; "--no-progress" ]
            Expect.equal code 0 $"exit 0 ({err})"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "manifest.json")))
            Expect.equal (doc.RootElement.GetProperty("model").GetString()) (Path.Combine(mine, "base")) "its base"
            let adapters = [ for a in doc.RootElement.GetProperty("attacks").EnumerateArray() -> a.GetProperty("adapter").GetString() ]
            Expect.all adapters (fun a -> a.StartsWith(Path.Combine(mine, "adapters"))) "its adapters' paths"
        }
        test "a --world that is not a world: one line naming it, exit 1, nothing written (world and demo)" {
            let notAWorld = Fixtures.tempDir () // exists, but has no base/config.json
            for command in [ "world"; "demo" ] do
                for world in [ notAWorld; Path.Combine(notAWorld, "missing") ] do
                    let out = Path.Combine(Fixtures.tempDir (), "out")
                    let code, _, err = run [ command; "--world"; world; "--out"; out; "--no-progress" ]
                    Expect.equal code 1 $"{command} {world}: exit 1"
                    Expect.equal (lines err).Length 1 $"{command}: one line, got: {err}"
                    Expect.stringContains err world $"{command}: names the folder"
                    Expect.isFalse (Directory.Exists out) $"{command}: nothing written"
        }
        test "demo on a world with a base but no adapter: one line naming its adapters folder, nothing written" {
            let mine = ownWorld []
            let out = Path.Combine(Fixtures.tempDir (), "out")
            let code, _, err = run [ "demo"; "--world"; mine; "--out"; out; "--no-progress" ]
            Expect.equal code 1 "exit 1"
            Expect.equal (lines err).Length 1 $"one line, got: {err}"
            Expect.stringContains err (Path.Combine(mine, "adapters")) "names the adapters folder"
            Expect.isFalse (Directory.Exists out) "nothing written"
        }
        test "demo --world runs on that world: its base and only the attacks it has an adapter for" {
            let mine = ownWorld [ "badnet" ]
            let out = Path.Combine(Fixtures.tempDir (), "out")
            let code, stdout, err = run [ "demo"; "--world"; mine; "--out"; out; "--test"; "2"; "--calibration"; "12"; "--no-progress" ]
            Expect.equal code 0 $"exit 0 ({err})"
            Expect.stringContains stdout (Path.Combine(out, "report.html")) "prints the report's path"
            use data = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "data", "manifest.json")))
            Expect.equal (data.RootElement.GetProperty("model").GetString()) (Path.Combine(mine, "base")) "the data's manifest points at its base"
            Expect.equal (Directory.GetFiles(Path.Combine(out, "calibration")) |> Array.map Path.GetFileName) [| "badnet.json" |] "only badnet calibrated"
            Expect.equal (Directory.GetDirectories(Path.Combine(out, "eval")) |> Array.map Path.GetFileName) [| "badnet" |] "only badnet evaluated"
            let page = File.ReadAllText(Path.Combine(out, "report.html"))
            Expect.stringContains page $"the tiny world at {mine}" "the report names the world"
            // chart 6: each of the 8 layers' AUROC and the default layers' (2 clean + 2 triggered test inputs)
            Expect.stringContains page "6. Which layer sees the trigger" "chart 6"
            Expect.stringContains page "7. Ablations" "then chart 7"
            let byLayer = File.ReadAllLines(Path.Combine(out, "frames", "auroc-by-layer.csv")) |> Array.skip 1
            Expect.equal byLayer.Length 9 "one row per layer, then the default layers"
            Expect.equal (byLayer.[.. 7] |> Array.map (fun l -> let r = l.Split ',' in r.[1], r.[3])) [| for l in 0 .. 7 -> "badnet", string l |] "layers 0–7"
            Expect.stringContains byLayer.[8] "badnet,real,\"2,3,4\",2,3," "the default layers 2–4"
            use settings = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "manifest.json")))
            Expect.stringContains (settings.RootElement.GetProperty("config").GetRawText()) (JsonEncodedText.Encode(mine).ToString()) "the run records its world"
        }
    ]
