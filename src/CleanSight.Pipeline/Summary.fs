/// The per-defense numbers of an evaluation, from its records (the paper's Table 1 row per defense).
module CleanSight.Pipeline.Summary

open System.Text.Json
open System.Text.Json.Nodes
open CleanSight.Pipeline.Evaluation
open CleanSight.Pipeline.Metrics

/// Mean of a possibly empty set (None when empty).
let private mean (xs: float[]) = if xs.Length = 0 then None else Some(Array.average xs)

/// Utility of a set of records: official VQA accuracy over VQA items, its V-score, and CIDEr-D over
/// caption items. `utility` is the VQA accuracy, or CIDEr-D when the set has only captions.
type Utility = { Vqa: float option; VScore: float option; Cider: float option; Utility: float option }

let utility (records: Record[]) =
    let vqa = records |> Array.filter (fun r -> r.Task = "vqa")
    let captions = records |> Array.filter (fun r -> r.Task = "caption")
    let acc = vqa |> Array.map (fun r -> VqaMetrics.accuracy r.Answers r.Output) |> mean
    let vs = vqa |> Array.map (fun r -> VqaMetrics.vScore r.Answers r.Output) |> mean
    let cider = if captions.Length = 0 then None else Some(Cider.cider (captions |> Array.map (fun r -> r.Output, r.Answers)))
    { Vqa = acc; VScore = vs; Cider = cider; Utility = (match acc with Some a -> Some a | None -> cider) }

/// Detection on one task's records: each task is compared with its own clean reference (one per task
/// by default), so its false-positive rate is its own — the pooled FPR can hide a task flagged far
/// more often than the target.
type TaskDetection =
    { Tpr: float option; Fpr: float option
      /// 95 % Wilson intervals of the two rates (`RateInterval.ci95`)
      TprCi95: (float * float) option; FprCi95: (float * float) option
      CleanSamples: int; PoisonedSamples: int }

type DefenseMetrics =
    { Asr: float option
      CleanAsr: float option
      Clean: Utility
      Poisoned: Utility
      Auroc: float option
      Tpr: float option
      Fpr: float option
      /// 95 % Wilson intervals of ASR, clean ASR, TPR and FPR (`RateInterval.ci95`; None where the rate is)
      AsrCi95: (float * float) option
      CleanAsrCi95: (float * float) option
      TprCi95: (float * float) option
      FprCi95: (float * float) option
      PrunedFraction: float option
      MsPerSample: float option
      CleanSamples: int
      PoisonedSamples: int
      /// per task (in the order tasks first appear), when the defense detects; empty otherwise
      ByTask: (string * TaskDetection)[] }

let ofDefense (records: Record[]) =
    let clean = records |> Array.filter (fun r -> r.Split = "clean")
    let poisoned = records |> Array.filter (fun r -> r.Split = "poisoned")
    // a rate and its interval from the same count: k of the n records, None for no records
    let hits (rs: Record[]) f = if rs.Length = 0 then None else Some((Array.filter f rs).Length, rs.Length)
    let rate rs f = hits rs f |> Option.map (fun (k, n) -> float k / float n)
    let interval rs f = hits rs f |> Option.map (fun (k, n) -> RateInterval.ci95 k n)
    let detected = records |> Array.exists (fun r -> r.Distance.IsSome)
    let distances (rs: Record[]) = rs |> Array.choose (fun r -> r.Distance)
    { Asr = rate poisoned (fun r -> r.AsrHit)
      CleanAsr = rate clean (fun r -> r.AsrHit)
      Clean = utility clean
      Poisoned = utility poisoned
      Auroc =
        if detected && clean.Length > 0 && poisoned.Length > 0
        then Some(DetectionMetrics.auroc (distances clean) (distances poisoned)) else None
      Tpr = if detected then rate poisoned (fun r -> r.Flagged) else None
      Fpr = if detected then rate clean (fun r -> r.Flagged) else None
      AsrCi95 = interval poisoned (fun r -> r.AsrHit)
      CleanAsrCi95 = interval clean (fun r -> r.AsrHit)
      TprCi95 = if detected then interval poisoned (fun r -> r.Flagged) else None
      FprCi95 = if detected then interval clean (fun r -> r.Flagged) else None
      PrunedFraction = records |> Array.map (fun r -> float r.Pruned.Length / float (max 1 r.VisualTokens)) |> mean
      MsPerSample = records |> Array.map (fun r -> r.Ms) |> mean
      CleanSamples = clean.Length
      PoisonedSamples = poisoned.Length
      ByTask =
        if not detected then [||]
        else
            records |> Array.map (fun r -> r.Task) |> Array.distinct |> Array.map (fun task ->
                let c = clean |> Array.filter (fun r -> r.Task = task)
                let p = poisoned |> Array.filter (fun r -> r.Task = task)
                task, { Tpr = rate p (fun r -> r.Flagged); Fpr = rate c (fun r -> r.Flagged)
                        TprCi95 = interval p (fun r -> r.Flagged); FprCi95 = interval c (fun r -> r.Flagged)
                        CleanSamples = c.Length; PoisonedSamples = p.Length }) }

/// Metrics of every defense, in the order the defenses first appear.
let ofRecords (records: Record[]) =
    records |> Array.map (fun r -> r.Defense) |> Array.distinct
    |> Array.map (fun d -> d, ofDefense (records |> Array.filter (fun r -> r.Defense = d)))

let private num (x: float option) : JsonNode = match x with Some v when not (System.Double.IsNaN v) -> JsonValue.Create v | _ -> null
/// [low, high], or null.
let private interval (x: (float * float) option) : JsonNode =
    match x with Some(lo, hi) -> JsonArray(JsonValue.Create lo, JsonValue.Create hi) | None -> null

/// metrics.json: {"defenses": {NAME: {"asr", "clean_asr", "clean_utility", "poisoned_utility", "auroc", …,
/// "asr_ci95": [low, high] (and clean_asr_, tpr_, fpr_ci95), "by_task": {TASK: {"tpr", "fpr", "tpr_ci95",
/// "fpr_ci95", "clean_samples", "poisoned_samples"}} for a defense that detects}}}
let toJson (metrics: (string * DefenseMetrics)[]) =
    let defenses = JsonObject()
    for name, m in metrics do
        let o = JsonObject()
        o.["asr"] <- num m.Asr
        o.["clean_asr"] <- num m.CleanAsr
        o.["clean_utility"] <- num m.Clean.Utility
        o.["poisoned_utility"] <- num m.Poisoned.Utility
        o.["auroc"] <- num m.Auroc
        o.["tpr"] <- num m.Tpr
        o.["fpr"] <- num m.Fpr
        o.["pruned_fraction"] <- num m.PrunedFraction
        o.["ms_per_sample"] <- num m.MsPerSample
        o.["clean_vqa_accuracy"] <- num m.Clean.Vqa
        o.["clean_vscore"] <- num m.Clean.VScore
        o.["clean_cider_d"] <- num m.Clean.Cider
        o.["poisoned_vqa_accuracy"] <- num m.Poisoned.Vqa
        o.["poisoned_vscore"] <- num m.Poisoned.VScore
        o.["poisoned_cider_d"] <- num m.Poisoned.Cider
        o.["asr_ci95"] <- interval m.AsrCi95
        o.["clean_asr_ci95"] <- interval m.CleanAsrCi95
        o.["tpr_ci95"] <- interval m.TprCi95
        o.["fpr_ci95"] <- interval m.FprCi95
        o.["clean_samples"] <- JsonValue.Create m.CleanSamples
        o.["poisoned_samples"] <- JsonValue.Create m.PoisonedSamples
        if m.ByTask.Length > 0 then
            let byTask = JsonObject()
            for task, t in m.ByTask do
                let d = JsonObject()
                d.["tpr"] <- num t.Tpr
                d.["fpr"] <- num t.Fpr
                d.["tpr_ci95"] <- interval t.TprCi95
                d.["fpr_ci95"] <- interval t.FprCi95
                d.["clean_samples"] <- JsonValue.Create t.CleanSamples
                d.["poisoned_samples"] <- JsonValue.Create t.PoisonedSamples
                byTask.[task] <- d
            o.["by_task"] <- byTask
        defenses.[name] <- o
    let root = JsonObject()
    root.["defenses"] <- defenses
    root

let write (path: string) (metrics: (string * DefenseMetrics)[]) =
    let root = toJson metrics
    CleanSight.Pipeline.Files.writeAtomic path (fun s ->
        use w = new Utf8JsonWriter(s, JsonWriterOptions(Indented = true))
        root.WriteTo w)

/// metrics.json read back: `toJson`'s inverse (a null or absent number is None, an absent count 0).
/// A file that is not `{"defenses": {NAME: {…}}}` with numbers where numbers go is refused in one
/// line naming it.
let read (path: string) : (string * DefenseMetrics)[] =
    let fail problem = raise (CleanSight.Core.InputError(path, problem))
    let root =
        try JsonNode.Parse(System.IO.File.ReadAllText path)
        with
        | :? JsonException as e -> fail $"is not JSON ({e.Message.Split('.').[0]})"
        | :? System.IO.FileNotFoundException | :? System.IO.DirectoryNotFoundException -> fail "not found"
    let objectAt (node: JsonNode) (what: string) =
        match node with
        | :? JsonObject as o -> o
        | _ -> fail $"{what} is not a JSON object"
    let defenses =
        match root with
        | :? JsonObject as o when o.ContainsKey "defenses" -> objectAt o.["defenses"] "\"defenses\""
        | _ -> fail "has no \"defenses\" object (is it an evaluate folder's metrics.json?)"
    let number (o: JsonObject) (where: string) (field: string) : float option =
        match o.[field] with
        | null -> None
        | :? JsonValue as v ->
            match v.TryGetValue<float>() with
            | true, x -> Some x
            | _ -> fail $"{where}.{field} is not a number"
        | _ -> fail $"{where}.{field} is not a number"
    let count (o: JsonObject) (where: string) (field: string) =
        match number o where field with
        | Some x when x >= 0.0 && x = System.Math.Floor x -> int x
        | Some x -> fail $"{where}.{field} is not a count: {x}"
        | None -> 0
    let interval (o: JsonObject) (where: string) (field: string) : (float * float) option =
        match o.[field] with
        | null -> None
        | :? JsonArray as a when a.Count = 2 ->
            let bound (i: int) = match a.[i] with :? JsonValue as v -> (match v.TryGetValue<float>() with | true, x -> Some x | _ -> None) | _ -> None
            match bound 0, bound 1 with
            | Some lo, Some hi -> Some(lo, hi)
            | _ -> fail $"{where}.{field} is not [low, high]"
        | _ -> fail $"{where}.{field} is not [low, high]"
    [| for KeyValue(name, node) in defenses ->
        let where = $"defenses.{name}"
        let o = objectAt node where
        let utility prefix =
            { Vqa = number o where $"{prefix}_vqa_accuracy"; VScore = number o where $"{prefix}_vscore"
              Cider = number o where $"{prefix}_cider_d"; Utility = number o where $"{prefix}_utility" }
        let byTask =
            match o.["by_task"] with
            | null -> [||]
            | node ->
                [| for KeyValue(task, t) in objectAt node $"{where}.by_task" ->
                    let at = $"{where}.by_task.{task}"
                    let t = objectAt t at
                    task, { Tpr = number t at "tpr"; Fpr = number t at "fpr"; TprCi95 = interval t at "tpr_ci95"; FprCi95 = interval t at "fpr_ci95"
                            CleanSamples = count t at "clean_samples"; PoisonedSamples = count t at "poisoned_samples" } |]
        name,
        { Asr = number o where "asr"; CleanAsr = number o where "clean_asr"; Clean = utility "clean"; Poisoned = utility "poisoned"
          Auroc = number o where "auroc"; Tpr = number o where "tpr"; Fpr = number o where "fpr"
          AsrCi95 = interval o where "asr_ci95"; CleanAsrCi95 = interval o where "clean_asr_ci95"
          TprCi95 = interval o where "tpr_ci95"; FprCi95 = interval o where "fpr_ci95"
          PrunedFraction = number o where "pruned_fraction"; MsPerSample = number o where "ms_per_sample"
          CleanSamples = count o where "clean_samples"; PoisonedSamples = count o where "poisoned_samples"
          ByTask = byTask } |]
