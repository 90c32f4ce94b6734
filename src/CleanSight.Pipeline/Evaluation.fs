/// Evaluate: every (defense × split × sample) → one record, appended to samples.csv as soon as it
/// exists (a kill -9 loses nothing already written; a re-run skips finished samples), then the
/// metrics of every defense from the records → metrics.json.
module CleanSight.Pipeline.Evaluation

open System
open System.Diagnostics
open System.Globalization
open System.IO
open System.Text
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Metrics

type Split = Clean | Poisoned

let splitName = function Clean -> "clean" | Poisoned -> "poisoned"

/// One sample under one defense.
type Record =
    { Defense: string
      Split: string
      Id: string
      Task: string
      Answers: string[]
      Output: string
      AsrHit: bool
      Distance: float option
      Flagged: bool
      Pruned: int64[]
      VisualTokens: int
      Ms: float }

// ---- samples.csv: the column names live here and nowhere else -----------------------------------

let columns =
    [| "defense"; "split"; "id"; "task"; "answers"; "output"; "asr_hit"; "distance"; "flagged"
       "pruned_count"; "pruned_indices"; "visual_tokens"; "ms" |]

let private inv (x: float) = x.ToString("R", CultureInfo.InvariantCulture)

let toLine (r: Record) =
    RecordStore.line
        [ r.Defense; r.Split; r.Id; r.Task; Json.JsonSerializer.Serialize r.Answers; r.Output
          (if r.AsrHit then "1" else "0"); (r.Distance |> Option.map inv |> Option.defaultValue "")
          (if r.Flagged then "1" else "0"); string r.Pruned.Length; String.Join(" ", r.Pruned)
          string r.VisualTokens; inv r.Ms ]

let ofLine (line: string) =
    let f = RecordStore.fields line
    if f.Length <> columns.Length then invalidArg "line" $"expected {columns.Length} fields, got {f.Length}"
    { Defense = f.[0]; Split = f.[1]; Id = f.[2]; Task = f.[3]
      Answers = Json.JsonSerializer.Deserialize<string[]> f.[4]; Output = f.[5]; AsrHit = f.[6] = "1"
      Distance = (if f.[7] = "" then None else Some(Double.Parse(f.[7], CultureInfo.InvariantCulture)))
      Flagged = f.[8] = "1"
      Pruned = (if f.[10] = "" then [||] else f.[10].Split(' ') |> Array.map int64)
      VisualTokens = int f.[11]; Ms = Double.Parse(f.[12], CultureInfo.InvariantCulture) }

/// Opens samples.csv for appending, returning the records already there (see `RecordStore.openStore`).
let openStore (path: string) = RecordStore.openStore columns ofLine path

/// Appends one record durably (flushed to disk before the next sample starts).
let append (w: StreamWriter) (r: Record) = RecordStore.append w (toLine r)

// ---- running ------------------------------------------------------------------------------------

type Settings =
    { Defenses: Defenses.Defense list
      Target: string
      MaxNewTokens: int
      Limit: int option
      Seed: int }

/// One sample under one defense.
let runOne (session: LlavaSession) (calibration: Calibration.Calibration) (settings: Settings)
           (defense: Defenses.Defense) (split: Split) (jsonl: string) (index: int) (item: Dataset.Item) =
    use scope = torch.NewDisposeScope()
    let clock = Stopwatch.StartNew()
    let image = RgbImage.Load(Dataset.imagePath jsonl item) |> Defenses.transform defense
    let ids = session.Prompt(item.Question).InputIds |> Array.map int64
    let first, last = Calibration.imageSpan session ids
    let policy, outcome = Defenses.policy defense calibration item.Task first last (settings.Seed * 1_000_003 + index)
    let generation = Generator.Greedy(session.Model, ids, session.Pixels image, settings.MaxNewTokens, policy)
    let output = session.Decode generation.OutputIds
    let o = outcome ()
    { Defense = Defenses.name defense; Split = splitName split; Id = item.Id; Task = Dataset.taskName item.Task
      Answers = List.toArray item.Answers; Output = output
      AsrHit = VqaMetrics.containsTarget settings.Target output
      Distance = o.Distance; Flagged = o.Flagged; Pruned = o.Pruned
      VisualTokens = int (last - first + 1L); Ms = clock.Elapsed.TotalMilliseconds }

// ---- run.json: what a folder's records depend on ------------------------------------------------

/// What the records of an evaluation folder depend on besides their defense and sample (the key of
/// each record): resuming with anything else would mix two evaluations in one samples.csv. Files are
/// named by the SHA-256 of their bytes (a dataset's images are not hashed). The defenses and --limit
/// may change between runs: they add records, they do not change finished ones.
type RunKey = { Calibration: string; Clean: string; Poisoned: string; Target: string; MaxNewTokens: int; Seed: int }

let fileHash (path: string) =
    Convert.ToHexString(Security.Cryptography.SHA256.HashData(File.ReadAllBytes path)).ToLowerInvariant()

let runKey (calibration: string) (clean: string) (poisoned: string) (settings: Settings) =
    { Calibration = fileHash calibration; Clean = fileHash clean; Poisoned = fileHash poisoned
      Target = settings.Target; MaxNewTokens = settings.MaxNewTokens; Seed = settings.Seed }

/// Claims `dir` for a run: writes dir/run.json on the first run (or over a folder from before
/// run.json existed); a folder claimed by a run with another key is refused, naming what differs.
let claimRun (dir: string) (key: RunKey) =
    let fields =
        [ "calibration", box key.Calibration; "clean", box key.Clean; "poisoned", box key.Poisoned
          "target", box key.Target; "max_new_tokens", box key.MaxNewTokens; "seed", box key.Seed ]
    match CleanSight.Pipeline.Files.claim (Path.Combine(dir, "run.json")) "an evaluation run file" fields [] with
    | [] -> ()
    | differs ->
        raise (InputError(dir, $"""holds the records of an evaluation with another {String.Join(", ", differs)} (run.json); use another --out or delete the folder"""))

/// What an evaluation covers: (split, dataset, items after --limit), every prompt checked to fit the
/// context with the answer — refused before anything is written rather than an hour into the run.
type Plan = private { Sets: (Split * string * Dataset.Item[]) list }

let plan (session: LlavaSession) (settings: Settings) (clean: string) (poisoned: string) =
    let take (items: Dataset.Item[]) = match settings.Limit with Some n -> Array.truncate n items | None -> items
    let sets = [ Clean, clean, take (Dataset.read clean); Poisoned, poisoned, take (Dataset.read poisoned) ]
    for _, jsonl, items in sets do
        for item in items do
            match session.ContextProblem(session.Prompt(item.Question).InputIds.Length, settings.MaxNewTokens) with
            | null -> ()
            | problem -> raise (InputError(jsonl, $"item \"{item.Id}\": {problem}"))
    { Sets = sets }

/// Runs every (defense × split × item) of a plan not already in samples.csv; returns all records.
let runPlanned (session: LlavaSession) (calibration: Calibration.Calibration) (settings: Settings)
               (plan: Plan) (samplesCsv: string) (progress: int -> int -> unit) =
    let sets = plan.Sets
    let existing, writer = openStore samplesCsv
    use writer = writer
    let records = Collections.Generic.List<Record>(existing)
    let done' = existing |> Array.map (fun r -> r.Defense, r.Split, r.Id) |> Collections.Generic.HashSet
    let total = settings.Defenses.Length * (sets |> List.sumBy (fun (_, _, items) -> items.Length))
    let mutable finished = 0
    for defense in settings.Defenses do
        for split, jsonl, items in sets do
            items |> Array.iteri (fun i item ->
                if not (done'.Contains((Defenses.name defense, splitName split, item.Id))) then
                    let r = runOne session calibration settings defense split jsonl i item
                    append writer r
                    records.Add r
                finished <- finished + 1
                progress finished total)
    records.ToArray()

/// `plan`, then `runPlanned`.
let run (session: LlavaSession) (calibration: Calibration.Calibration) (settings: Settings)
        (clean: string) (poisoned: string) (samplesCsv: string) (progress: int -> int -> unit) =
    runPlanned session calibration settings (plan session settings clean poisoned) samplesCsv progress
