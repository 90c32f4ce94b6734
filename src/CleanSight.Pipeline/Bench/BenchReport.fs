/// The bench's JSON: the ratios the issue asks for under `results` (each the median over repeated
/// runs with min, max, the runs, its goal and whether the median meets it — or a string saying
/// why it was not measured), the numbers behind them under `details`, and the machine.
module CleanSight.Pipeline.Bench.BenchReport

open System
open System.Text.Json.Nodes
open CleanSight.Pipeline.Bench.Stats

/// One dtype of the prefill comparison.
type Prefill =
    { Dtype: string
      Shape: PrefillShape.Shape
      /// seconds per prefill
      Dotnet: Stat
      Pytorch: Result<PytorchPrefill.Run, string> }

type Load = { Checkpoint: LoadRss.Checkpoint; Probes: LoadRss.Probe[] }

/// A GEMM measurement: dtype name, n, GFLOP/s.
type Gemm = { Dtype: string; N: int; Gflops: Stat }

type Results =
    { Quick: bool
      Settings: JsonNode
      Machine: Machine.Description
      Seconds: float
      World: Result<DefenseCost.Result, string>
      /// f32 is the yardstick; others explain
      Gemm: Result<Gemm list, string>
      Prefill: Result<Prefill list, string>
      Load: Result<Load, string> }

let formatName = "cleansight-bench"
let formatVersion = 1

// ---- JSON helpers ----------------------------------------------------------------------------------

let private round (f: float) = if Double.IsFinite f then Math.Round(f, 6) else f

let private node (x: obj) : JsonNode =
    match x with
    | null -> null
    | :? JsonNode as n -> n
    | :? float as f -> JsonValue.Create(round f)
    | :? int as i -> JsonValue.Create i
    | :? int64 as i -> JsonValue.Create i
    | :? bool as b -> JsonValue.Create b
    | :? string as s -> JsonValue.Create s
    | :? (float[]) as xs -> JsonArray(xs |> Array.map (fun f -> JsonValue.Create(round f) :> JsonNode))
    | :? (string[]) as xs -> JsonArray(xs |> Array.map (fun s -> JsonValue.Create s :> JsonNode))
    | other -> invalidArg "x" $"no JSON form for {other.GetType().Name}"

let obj (fields: (string * obj) list) =
    let o = JsonObject()
    for k, v in fields do o.[k] <- node v
    o

let statJson (s: Stat) = obj [ "median", box s.Median; "min", box s.Min; "max", box s.Max; "runs", box s.Runs ]

let notMeasured (reason: string) : JsonNode = JsonValue.Create $"not measured: {reason}"

/// A row: the stat, its goal and whether the median meets it, what was timed — or why not measured.
let rowJson (goal: Goal option) (what: string) (row: Row) : JsonNode =
    match row with
    | Unavailable reason -> notMeasured reason
    | Measured s ->
        let o = statJson s
        goal |> Option.iter (fun g ->
            o.["goal"] <- JsonValue.Create(goalText g)
            o.["met"] <- JsonValue.Create(met g s))
        o.["what"] <- JsonValue.Create what
        o

let private rowOf (r: Result<'a, string>) (f: 'a -> Row) = match r with Ok x -> f x | Error e -> Unavailable e

// ---- results ---------------------------------------------------------------------------------------

let goals =
    dict [ "defended_over_undefended_clean", AtMost 1.05
           "defended_over_undefended_triggered", AtMost 1.0
           "dotnet_over_pytorch_prefill", AtMost 1.1
           "prefill_flops_fraction", AtLeast 0.5
           "load_rss_over_size", AtMost 1.2 ]

/// Achieved GFLOP/s of our prefill's runs.
let prefillGflops (p: Prefill) = p.Dotnet |> map (fun s -> PrefillShape.flops p.Shape / s / 1e9)

/// Whether PyTorch loaded an optimised BLAS (Debian's default alternative is the slow reference one).
let optimizedBlas (libraries: string[]) =
    libraries |> Array.exists (fun l -> [ "openblas"; "mkl"; "blis" ] |> List.exists (fun b -> l.Contains(b, StringComparison.OrdinalIgnoreCase)))

let private gemmF32 (r: Results) =
    match r.Gemm with
    | Ok g -> g |> List.tryFind (fun x -> x.Dtype = "f32")
    | Error _ -> None

let results (r: Results) =
    let row name what (value: Row) = name, box (rowJson (if goals.ContainsKey name then Some goals.[name] else None) what value)
    /// one row per dtype: { "f32": row, "bf16": row }
    let perDtype name what (f: Prefill -> Row) =
        match r.Prefill with
        | Error e -> name, box (notMeasured e)
        | Ok ps -> name, box (obj [ for p in ps -> p.Dtype, box (rowJson (Some goals.[name]) what (f p)) ])
    obj
        [ row "defended_over_undefended_clean"
              "CleanSight-defended / undefended latency of a fixed-length greedy generation (prefill + decode), clean inputs; one ratio per repeat"
              (rowOf r.World (fun w -> Measured w.Clean.Ratio))
          row "defended_over_undefended_triggered"
              "the same on triggered inputs; only flagged inputs are purified (details.tiny_world.triggered.flagged_share)"
              (rowOf r.World (fun w -> Measured w.Triggered.Ratio))
          perDtype "dotnet_over_pytorch_prefill" "our prefill seconds / PyTorch's: same shape, dtype, ids and thread count; medians' ratio, min/max cross the extremes"
              (fun p ->
                  match p.Pytorch with
                  | Ok py when not (optimizedBlas py.Blas) ->
                      Unavailable(
                          $"PyTorch ran on the reference BLAS ({String.Join(' ', py.Blas)}), about 20× slower: install libopenblas0-pthread "
                          + $"(measured anyway: {(ratioOfMedians p.Dotnet.Runs py.Seconds).Median:F3})")
                  | Ok py -> Measured(ratioOfMedians p.Dotnet.Runs py.Seconds)
                  | Error e -> Unavailable e)
          perDtype "prefill_flops_fraction" "achieved FLOP/s of our prefill / this machine's f32 n×n GEMM FLOP/s (median, same run)"
              (fun p ->
                  match gemmF32 r with
                  | Some g -> Measured(prefillGflops p |> map (fun x -> x / g.Gflops.Median))
                  | None -> Unavailable "no f32 GEMM measurement")
          row "load_rss_over_size" "peak RSS (VmHWM) of a child process loading the sharded checkpoint / the shards' size on disk"
              (rowOf r.Load (fun l -> Measured(l.Probes |> Array.map (fun p -> float p.PeakRss / float l.Checkpoint.Bytes) |> summarize)))
          row "calibration_samples_per_s" "clean samples per second through `calibrate` (image load, one observing prefill; the fit)"
              (rowOf r.World (fun w -> Measured w.CalibrationPerS))
          row "evaluation_samples_per_s" "records (defense × split × sample) per second through `evaluate --defense none,cleansight`, ≤ 32 new tokens"
              (rowOf r.World (fun w -> Measured w.EvaluationPerS)) ]

// ---- details -------------------------------------------------------------------------------------

let private latencyJson (l: DefenseCost.Latency) =
    obj [ "inputs", box l.Inputs
          "undefended_ms", box (statJson l.UndefendedMs)
          "cleansight_ms", box (statJson l.DefendedMs)
          "prune_all_ms", box (statJson l.PruneAllMs)
          "prune_all_over_undefended", box (statJson l.PruneAllRatio)
          "flagged_share", box l.FlaggedShare
          "mean_pruned_tokens", box l.MeanPruned ]

let private worldJson (w: DefenseCost.Result) =
    obj [ "attack", box w.Attack
          "adapter", box (w.Adapter |> Option.defaultValue "none (clean base model)")
          "visual_tokens", box w.VisualTokens
          "clean", box (latencyJson w.Clean)
          "triggered", box (latencyJson w.Triggered) ]

let private prefillJson (p: Prefill) =
    obj [ "shape", box (PrefillShape.toJson p.Shape)
          "gflop", box (PrefillShape.flops p.Shape / 1e9)
          "dotnet_s", box (statJson p.Dotnet)
          "dotnet_gflops", box (statJson (prefillGflops p))
          "pytorch",
          box (match p.Pytorch with
               | Error e -> notMeasured e
               | Ok py ->
                   obj [ "seconds", box (statJson (summarize py.Seconds))
                         "gflops", box (statJson (py.Seconds |> Array.map (fun s -> PrefillShape.flops p.Shape / s / 1e9) |> summarize))
                         "torch", box py.Torch; "threads", box py.Threads
                         "blas_threads", box (py.BlasThreads |> Option.map box |> Option.toObj); "blas", box py.Blas
                         "attention", box py.Attention; "python", box py.Python
                         "f32_gemm_gflops", box (if py.GemmGflops.Length = 0 then null else statJson (summarize py.GemmGflops)) ]) ]

let private loadJson (l: Load) =
    let size = float l.Checkpoint.Bytes
    obj [ "checkpoint_bytes", box l.Checkpoint.Bytes
          "shards", box l.Checkpoint.Shards
          "tensors", box l.Checkpoint.Tensors
          "largest_tensor_bytes", box l.Checkpoint.LargestTensorBytes
          "baseline_rss_bytes", box (l.Probes |> Array.map (fun p -> float p.BaselineRss) |> summarize |> statJson)
          "peak_rss_bytes", box (l.Probes |> Array.map (fun p -> float p.PeakRss) |> summarize |> statJson)
          "peak_minus_baseline_over_size", box (l.Probes |> Array.map (fun p -> float (p.PeakRss - p.BaselineRss) / size) |> summarize |> statJson)
          "load_s", box (l.Probes |> Array.map (fun p -> p.Seconds) |> summarize |> statJson) ]

let details (r: Results) =
    let part (x: Result<'a, string>) (f: 'a -> JsonNode) : obj = box (match x with Ok v -> f v | Error e -> notMeasured e)
    obj [ "tiny_world", part r.World (worldJson >> fun o -> o :> JsonNode)
          "prefill", part r.Prefill (fun ps -> obj [ for p in ps -> p.Dtype, box (prefillJson p) ] :> JsonNode)
          "gemm_gflops", part r.Gemm (fun gs -> obj [ for g in gs -> g.Dtype, box (obj [ "n", box g.N; "gflops", box (statJson g.Gflops) ]) ] :> JsonNode)
          "load", part r.Load (loadJson >> fun o -> o :> JsonNode) ]

let machineJson (m: Machine.Description) =
    obj [ "cpu", box m.Cpu; "logical_cores", box m.LogicalCores; "memory_gib", box m.MemoryGiB; "os", box m.Os
          "dotnet", box m.Dotnet; "torchsharp", box m.TorchSharp; "build", box m.Build; "torch_threads", box m.TorchThreads
          "load_average_start", box m.LoadAverageStart; "load_average_end", box m.LoadAverageEnd ]

/// The whole file.
let toJson (r: Results) =
    obj [ "format", box formatName
          "version", box formatVersion
          "quick", box r.Quick
          "seconds", box r.Seconds
          "machine", box (machineJson r.Machine)
          "settings", box r.Settings
          "results", box (results r)
          "details", box (details r) ]
