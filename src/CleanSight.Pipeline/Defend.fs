/// Defend: CleanSight on your own inputs, as it would run in front of a deployed model. For each
/// input, one prefill measures the last prompt token's attention at the detection layers and compares
/// it with the clean reference; a flagged input has its attention-stealing image tokens excluded from
/// the last detection layer on (prefill and every decode step) before it is answered. Unlike
/// `evaluate`, no target and no answers are needed. One record per input is appended to
/// defended.csv as it exists (resumable; a kill -9 loses nothing already written); for a flagged
/// input the record also holds what the model says without the defense.
module CleanSight.Pipeline.Defend

open System
open System.Diagnostics
open System.Globalization
open System.IO
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense

/// What CleanSight decided for one input.
type Verdict =
    { /// the input's distance d from the clean reference of its task
      Distance: float
      /// that reference's threshold γ (flagged when d > γ)
      Threshold: float
      Flagged: bool
      /// positions of the image tokens excluded (empty unless flagged)
      Pruned: int64[]
      VisualTokens: int
      /// the layer the exclusion starts at (the last detection layer)
      FromLayer: int }

/// One input answered under CleanSight.
type Answer = { OutputIds: int64[]; Output: string; Verdict: Verdict }

/// CleanSight on one input: detection inside the prefill, purification when flagged, greedy answer.
let answer (session: LlavaSession) (calibration: Calibration.Calibration) (task: Dataset.Task)
           (image: RgbImage) (question: string) (maxNewTokens: int) : Answer =
    use scope = torch.NewDisposeScope()
    let ids = session.Prompt(question).InputIds |> Array.map int64
    let first, last = Calibration.imageSpan session ids
    let policy, outcome = Defenses.policy Defenses.CleanSight calibration task first last 0
    let generation = Generator.Greedy(session.Model, ids, session.Pixels image, maxNewTokens, policy)
    let o = outcome ()
    let distance =
        match o.Distance with
        | Some d -> d
        | None -> failwith "CleanSight measured no distance: the detection layers were never observed"
    { OutputIds = generation.OutputIds
      Output = session.Decode generation.OutputIds
      Verdict =
        { Distance = distance; Threshold = (Calibration.detection calibration task).Threshold; Flagged = o.Flagged
          Pruned = o.Pruned; VisualTokens = int (last - first + 1L); FromLayer = Array.max calibration.Settings.Layers } }

/// The undefended greedy answer (what a flagged input would have got).
let undefended (session: LlavaSession) (image: RgbImage) (question: string) (maxNewTokens: int) =
    session.Decode (session.Generate(image, question, maxNewTokens)).OutputIds

// ---- defended.csv ---------------------------------------------------------------------------------

/// One input's record.
type Record =
    { Id: string
      Task: string
      Question: string
      Verdict: Verdict
      /// the answer under CleanSight
      Output: string
      /// the answer without the defense: computed for flagged inputs; an unflagged input's is `Output`
      Undefended: string
      Ms: float }

let columns =
    [| "id"; "task"; "question"; "distance"; "threshold"; "flagged"; "pruned_count"; "pruned_indices"
       "visual_tokens"; "from_layer"; "output"; "undefended_output"; "ms" |]

let private inv (x: float) = x.ToString("R", CultureInfo.InvariantCulture)
let private float' (s: string) = Double.Parse(s, CultureInfo.InvariantCulture)

let toLine (r: Record) =
    let v = r.Verdict
    RecordStore.line
        [ r.Id; r.Task; r.Question; inv v.Distance; inv v.Threshold; (if v.Flagged then "1" else "0")
          string v.Pruned.Length; String.Join(" ", v.Pruned); string v.VisualTokens; string v.FromLayer
          r.Output; r.Undefended; inv r.Ms ]

let ofLine (line: string) =
    let f = RecordStore.fields line
    if f.Length <> columns.Length then invalidArg "line" $"expected {columns.Length} fields, got {f.Length}"
    { Id = f.[0]; Task = f.[1]; Question = f.[2]
      Verdict =
        { Distance = float' f.[3]; Threshold = float' f.[4]; Flagged = f.[5] = "1"
          Pruned = (if f.[7] = "" then [||] else f.[7].Split(' ') |> Array.map int64)
          VisualTokens = int f.[8]; FromLayer = int f.[9] }
      Output = f.[10]; Undefended = f.[11]; Ms = float' f.[12] }

// ---- running --------------------------------------------------------------------------------------

type Settings = { MaxNewTokens: int; Limit: int option }

/// The inputs of `data` (its `items`) to run, after --limit, every prompt checked to fit the context
/// with the answer — refused before anything is written.
let plan (session: LlavaSession) (settings: Settings) (data: string) (items: Dataset.Item[]) =
    let items = match settings.Limit with Some n -> Array.truncate n items | None -> items
    for item in items do
        match session.ContextProblem(session.Prompt(item.Question).InputIds.Length, settings.MaxNewTokens) with
        | null -> ()
        | problem -> raise (InputError(data, $"item \"{item.Id}\": {problem}"))
    items

/// One input: answered under CleanSight, and without it when flagged.
let runOne (session: LlavaSession) (calibration: Calibration.Calibration) (settings: Settings) (data: string) (item: Dataset.Item) =
    let clock = Stopwatch.StartNew()
    let image = RgbImage.Load(Dataset.imagePath data item)
    let a = answer session calibration item.Task image item.Question settings.MaxNewTokens
    let ms = clock.Elapsed.TotalMilliseconds
    let plain = if a.Verdict.Flagged then undefended session image item.Question settings.MaxNewTokens else a.Output
    { Id = item.Id; Task = Dataset.taskName item.Task; Question = item.Question; Verdict = a.Verdict
      Output = a.Output; Undefended = plain; Ms = ms }

/// Runs every planned input not already in `csv`; returns all records, in the data's order.
let run (session: LlavaSession) (calibration: Calibration.Calibration) (settings: Settings) (data: string)
        (items: Dataset.Item[]) (csv: string) (progress: int -> int -> unit) =
    let existing, writer = RecordStore.openStore columns ofLine csv
    use writer = writer
    let byId = Collections.Generic.Dictionary<string, Record>()
    for r in existing do byId.[r.Id] <- r
    items |> Array.iteri (fun i item ->
        if not (byId.ContainsKey item.Id) then
            let r = runOne session calibration settings data item
            RecordStore.append writer (toLine r)
            byId.[item.Id] <- r
        progress (i + 1) items.Length)
    [| for item in items -> byId.[item.Id] |]

/// Claims `dir` for a run on (calibration, data, token budget): a folder holding another run's
/// records is refused, naming what differs.
let claimRun (dir: string) (calibration: string) (data: string) (settings: Settings) =
    let fields =
        [ "calibration", box (Evaluation.fileHash calibration); "data", box (Evaluation.fileHash data)
          "max_new_tokens", box settings.MaxNewTokens ]
    match Files.claim (Path.Combine(dir, "run.json")) "a defend run file" fields [] with
    | [] -> ()
    | differs ->
        raise (InputError(dir, $"""holds the records of a defend run with another {String.Join(", ", differs)} (run.json); use another --out or delete the folder"""))

/// The one-line verdict of an input, as `generate --calibration` prints it on stderr.
let describe (task: Dataset.Task) (v: Verdict) =
    let reference = $"the clean {Dataset.taskName task} reference"
    if v.Flagged then
        $"cleansight: flagged, d = {v.Distance:G4} > γ = {v.Threshold:G4} ({reference}); {v.Pruned.Length} of {v.VisualTokens} image tokens excluded from layer {v.FromLayer} on"
    else $"cleansight: not flagged, d = {v.Distance:G4} ≤ γ = {v.Threshold:G4} ({reference}); nothing excluded"
