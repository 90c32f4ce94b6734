/// What the defense costs on the embedded tiny world (one backdoored model): generation latency
/// with CleanSight and with purification forced (prune-all) over undefended, on clean and on
/// triggered inputs, and the throughput of calibration and evaluation as their commands run them.
module CleanSight.Pipeline.Bench.DefenseCost

open System
open System.IO
open TorchSharp
open CleanSight.Core.Inference
open CleanSight.Core.Model
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.Bench
open CleanSight.Pipeline.Bench.Stats
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.World

type Settings =
    { Calibration: int
      Test: int
      /// tokens every timed generation makes (EOS does not stop it)
      NewTokens: int
      Repeats: int
      EvaluationLimit: int
      EvaluationRepeats: int
      /// the backdoored model (its adapter; the first adapter present when it is missing)
      Attack: string }

/// One split's latencies (ms per generation) and what the defense did there.
type Latency =
    { Inputs: int
      UndefendedMs: Stat
      DefendedMs: Stat
      PruneAllMs: Stat
      /// defended / undefended, per repeat
      Ratio: Stat
      PruneAllRatio: Stat
      /// share of inputs CleanSight flagged (and purified), mean image tokens it pruned per input
      FlaggedShare: float
      MeanPruned: float }

type Result =
    { Attack: string
      Adapter: string option
      VisualTokens: int
      Clean: Latency
      Triggered: Latency
      CalibrationPerS: Stat
      EvaluationPerS: Stat }

/// Greedy generation of exactly `n` tokens: the prefill, then n − 1 decode steps whatever the
/// tokens are, so the arms of a ratio do the same amount of decoding.
let generateFixed (model: LlavaForConditionalGeneration) (ids: int64[]) (pixels: torch.Tensor) (policy: IAttentionPolicy) (n: int) =
    let prefilled = model.Prefill(ids, pixels, policy)
    use cache = prefilled.Cache
    let mutable logits = prefilled.Logits
    for step in 0 .. n - 2 do
        logits <- model.Decode(Generator.ArgMax logits, prefilled.PromptLength + int64 step, cache)

type private Input = { Ids: int64[]; Pixels: torch.Tensor; Task: Dataset.Task; First: int64; Last: int64 }

let private load (session: LlavaSession) (jsonl: string) (n: int) =
    Dataset.read jsonl |> Array.truncate n |> Array.map (fun item ->
        let ids = session.Prompt(item.Question).InputIds |> Array.map int64
        let first, last = Calibration.imageSpan session ids
        { Ids = ids; Pixels = session.Pixels(RgbImage.Load(Dataset.imagePath jsonl item)).DetachFromDisposeScope()
          Task = item.Task; First = first; Last = last })

let private arms = [| Defenses.NoDefense; Defenses.CleanSight; Defenses.PruneAll |]

/// Every input under every arm, `repeats` times; the arms' order rotates per input and repeat.
let private latency (session: LlavaSession) (calibration: Calibration.Calibration) (newTokens: int) (repeats: int) (inputs: Input[]) =
    let run (defense: Defenses.Defense) (i: int) (input: Input) =
        let policy, outcome = Defenses.policy defense calibration input.Task input.First input.Last i
        let seconds, () = time (fun () -> generateFixed session.Model input.Ids input.Pixels policy newTokens)
        seconds, outcome ()
    for d in arms do run d 0 inputs.[0] |> ignore // warm-up
    let totals = Array2D.zeroCreate repeats arms.Length
    let verdicts = Collections.Generic.List<Defenses.Outcome>()
    for r in 0 .. repeats - 1 do
        inputs |> Array.iteri (fun i input ->
            for k in 0 .. arms.Length - 1 do
                let a = (k + i + r) % arms.Length
                let seconds, outcome = run arms.[a] i input
                totals.[r, a] <- totals.[r, a] + seconds
                if r = 0 && arms.[a] = Defenses.CleanSight then verdicts.Add outcome)
    let arm a = Array.init repeats (fun r -> totals.[r, a])
    let ms a = arm a |> Array.map (fun s -> 1000.0 * s / float inputs.Length) |> summarize
    { Inputs = inputs.Length
      UndefendedMs = ms 0; DefendedMs = ms 1; PruneAllMs = ms 2
      Ratio = ratioOf (arm 1) (arm 0); PruneAllRatio = ratioOf (arm 2) (arm 0)
      FlaggedShare = verdicts |> Seq.averageBy (fun v -> if v.Flagged then 1.0 else 0.0)
      MeanPruned = verdicts |> Seq.averageBy (fun v -> float v.Pruned.Length) }

/// Materialises the world's held-out data under `folder` and measures; log gets one line per stage.
let run (s: Settings) (folder: string) (log: string -> unit) =
    let world = Materialize.locate ()
    let manifest = Materialize.run world (Path.Combine(folder, "data")) s.Calibration s.Test ignore
    let attack =
        manifest.attacks |> Array.tryFind (fun a -> a.name = s.Attack && File.Exists a.adapter)
        |> Option.orElse (manifest.attacks |> Array.tryFind (fun a -> File.Exists a.adapter))
    // Without any adapter: the clean base model, still with triggered images (the latency is what matters here).
    let entry = attack |> Option.defaultValue (manifest.attacks |> Array.find (fun a -> a.name = s.Attack))
    use session = LlavaSession.Load(manifest.model, adapter = (attack |> Option.map (fun a -> a.adapter) |> Option.toObj))
    let settings = Calibration.defaultSettings session.Config.Text.NumHiddenLayers
    let calItems = Dataset.read manifest.calibration |> Array.truncate s.Calibration
    // (samples/s, calibration) per repeat; every repeat fits the same calibration
    let calibrations =
        Array.init s.Repeats (fun _ ->
            let seconds, c =
                time (fun () ->
                    let samples = calItems |> Array.map (fun it -> RgbImage.Load(Dataset.imagePath manifest.calibration it), it.Question, it.Task)
                    Calibration.calibrate session settings samples (fun _ _ -> ()))
            float calItems.Length / seconds, c)
    let calibrationRuns, calibration = Array.map fst calibrations, snd (Array.last calibrations)
    log $"calibration: {calItems.Length} samples, median {median calibrationRuns:F1} samples/s"
    let clean = load session manifest.clean_test s.Test
    let triggered = load session entry.poisoned_test s.Test
    let cleanLatency = latency session calibration s.NewTokens s.Repeats clean
    log $"latency, clean: defended/undefended {cleanLatency.Ratio.Median:F3}"
    let triggeredLatency = latency session calibration s.NewTokens s.Repeats triggered
    log $"latency, triggered: defended/undefended {triggeredLatency.Ratio.Median:F3} ({100.0 * triggeredLatency.FlaggedShare:F0}%% flagged)"
    for i in Array.append clean triggered do i.Pixels.Dispose()
    let evalSettings: Evaluation.Settings =
        { Defenses = [ Defenses.NoDefense; Defenses.CleanSight ]; Target = entry.target; MaxNewTokens = 32
          Limit = Some s.EvaluationLimit; Seed = 0 }
    let evaluationRuns =
        Array.init s.EvaluationRepeats (fun r ->
            let csv = Path.Combine(folder, $"eval-{r}", "samples.csv")
            let seconds, records =
                time (fun () -> Evaluation.run session calibration evalSettings manifest.clean_test entry.poisoned_test csv (fun _ _ -> ()))
            float records.Length / seconds)
    log $"evaluation: median {median evaluationRuns:F1} samples/s"
    { Attack = entry.name; Adapter = attack |> Option.map (fun a -> a.adapter)
      VisualTokens = session.Config.ImageSeqLength
      Clean = cleanLatency; Triggered = triggeredLatency
      CalibrationPerS = summarize calibrationRuns; EvaluationPerS = summarize evaluationRuns }
