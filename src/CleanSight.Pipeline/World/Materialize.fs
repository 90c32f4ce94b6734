/// `cleansight world`: writes the held-out data of the embedded tiny world (calibration, clean test,
/// and the triggered test set of every attack) as images + JSONL, and a manifest pointing at the
/// committed base checkpoint and attack adapters.
module CleanSight.Pipeline.World.Materialize

open System
open System.IO
open CleanSight.Core
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.World

type AttackEntry = { name: string; adapter: string; poisoned_test: string; target: string; mode: string }

type Manifest = { model: string; calibration: string; clean_test: string; attacks: AttackEntry[] }

/// The committed world: `world/base` (a llava-hf checkpoint folder) and `world/adapters/*.safetensors`,
/// found from the working directory or the program's folder upwards.
let locate () =
    let rec up (dir: DirectoryInfo) =
        if isNull dir then None
        elif File.Exists(Path.Combine(dir.FullName, "world", "base", "config.json")) then Some(Path.Combine(dir.FullName, "world"))
        else up dir.Parent
    [ Directory.GetCurrentDirectory(); AppContext.BaseDirectory ]
    |> List.tryPick (DirectoryInfo >> up)
    |> Option.defaultWith (fun () -> raise (InputError("world/base", "the embedded tiny world was not found above the current folder")))

/// A tiny world of one's own — `train-base --out DIR/base` and `attack --name NAME --out
/// DIR/adapters/NAME.safetensors` make one — as a full path; the committed world when none is given.
/// A folder without `base/config.json` is one error line naming it.
let resolve (world: string option) =
    match world with
    | None -> locate ()
    | Some dir ->
        let full = Path.GetFullPath dir
        if not (Directory.Exists full) then raise (InputError(dir, "no such world folder"))
        if not (File.Exists(Path.Combine(full, "base", "config.json"))) then
            raise (InputError(dir, "is not a tiny world: it has no base/config.json (train-base --out DIR/base makes one)"))
        full

/// The decoder depth of a world's base checkpoint (`train-base --text-layers N` makes one of depth N).
let textLayers (world: string) =
    CleanSight.Core.Checkpoints.LlavaConfig.Load(Path.Combine(world, "base", "config.json")).Text.NumHiddenLayers

/// Where a world keeps the adapter of an attack.
let adapterPath (world: string) (attack: string) = Path.Combine(world, "adapters", attack + ".safetensors")

let modeName = function Attacks.Replace -> "replace" | Attacks.Insert -> "insert"

/// The default size of the calibration split: 200 VQA questions and 100 caption requests.
let defaultCalibration = 300

/// Writes DIR/{calibration,clean_test,poisoned/NAME}/data.jsonl with images, and DIR/manifest.json.
// The test asks a caption request in about one item of ten. Calibration asks both tasks too — a
// threshold set on VQA prompts alone flags every caption request (measured: 13 of 13 at layer 0) —
// and each task enough times for its own reference's 0.99 quantile (≥ 100 samples): every third
// item is a caption request, so the default 300 are 200 questions and 100 caption requests. At the
// test's share (16 of 200) the caption threshold flagged 0–5 of 13 clean caption requests.
let private calibrationSpec: Scenes.BuildSpec =
    { Seed = BaseModel.Splits.calibration; Size = TinyLlava.defaults.ImageSize; Captions = Scenes.EveryNth 3; Prefix = "cal-" }

/// The tasks of the first `count` calibration items, as `run` will write them (nothing rendered).
let calibrationTasks (count: int) = Array.init count (fun i -> (Scenes.item calibrationSpec i).Task)

let run (world: string) (out: string) (calibrationCount: int) (testCount: int) (log: string -> unit) =
    let size = TinyLlava.defaults.ImageSize
    let split name (spec: Scenes.BuildSpec) count =
        let folder = Path.Combine(out, name)
        let items = Scenes.build spec [ 0 .. count - 1 ] folder
        let jsonl = Path.Combine(folder, "data.jsonl")
        Dataset.write jsonl items
        let tasks = items |> Array.countBy (fun i -> i.Task) |> Array.map (fun (t, n) -> $"{n} {Dataset.taskName t}") |> String.concat ", "
        log $"{name}: {items.Length} items ({tasks}) → {jsonl}"
        jsonl, items
    let calibration, _ = split "calibration" calibrationSpec calibrationCount
    let cleanTest, testItems =
        split "clean_test" { Seed = BaseModel.Splits.cleanTest; Size = size; Captions = Scenes.Share 0.1; Prefix = "test-" } testCount
    let attacks =
        [| for attack in Attacks.all Attacks.defaultTarget do
               // The same test images with the trigger: paired clean/triggered versions, clean answers kept.
               let folder = Path.Combine(out, "poisoned", attack.Name)
               Directory.CreateDirectory(Path.Combine(folder, "images")) |> ignore
               testItems |> Array.Parallel.iter (fun item ->
                   let clean = RgbImage.Load(Dataset.imagePath cleanTest item)
                   (Triggers.apply attack.Trigger clean).Save(Path.Combine(folder, item.Image)))
               let jsonl = Path.Combine(folder, "data.jsonl")
               Dataset.write jsonl testItems
               log $"poisoned/{attack.Name}: {testItems.Length} items → {jsonl}"
               { name = attack.Name
                 adapter = adapterPath world attack.Name
                 poisoned_test = jsonl
                 target = attack.Target
                 mode = modeName attack.Mode } |]
    let manifest = { model = Path.Combine(world, "base"); calibration = calibration; clean_test = cleanTest; attacks = attacks }
    Files.writeJson (Path.Combine(out, "manifest.json")) manifest
    manifest
