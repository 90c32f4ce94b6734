/// `cleansight bench`: the plan (quick or full sizes), the stages in order — tiny world, GEMM and
/// prefill, checkpoint load — each turned into rows or into the reason it could not run, and the
/// JSON file. Timings are medians over repeats; nothing here asserts on them.
module CleanSight.Pipeline.Bench.Benchmark

open System
open System.Diagnostics
open System.IO
open System.Text.Json.Nodes
open TorchSharp
open CleanSight.Pipeline
open CleanSight.Pipeline.Bench
open CleanSight.Pipeline.Bench.BenchReport

type Stage =
    | World
    | Prefill
    | Load

let stageName = function World -> "world" | Prefill -> "prefill" | Load -> "load"
let allStages = [ World; Prefill; Load ]

let parseStages (csv: string) =
    csv.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    |> Array.map (fun s ->
        match allStages |> List.tryFind (fun x -> stageName x = s.ToLowerInvariant()) with
        | Some x -> x
        | None -> invalidArg "stages" $"""unknown stage '{s}' (one of {allStages |> List.map stageName |> String.concat ", "})""")
    |> Array.distinct |> Array.toList

/// One dtype of the prefill comparison: shape, untimed warm-up runs, timed runs (the same on both sides).
type PrefillPlan = { Dtype: string; Shape: PrefillShape.Shape; Warmup: int; Runs: int }

type GemmPlan = { Dtype: string; N: int; Warmup: int; Runs: int }

type Settings =
    { Out: string
      Quick: bool
      Threads: int
      /// python3 with torch; found when absent
      Python: string option
      Stages: Stage list
      World: DefenseCost.Settings
      Gemm: GemmPlan list
      Prefill: PrefillPlan list
      /// decoder layers of the generated checkpoint (7B widths, 32000-token vocabulary, F16)
      LoadLayers: int
      LoadShardBytes: int64
      LoadRuns: int }

let private dtypeOf = function
    | "f32" -> torch.ScalarType.Float32
    | "bf16" -> torch.ScalarType.BFloat16
    | d -> invalidArg "dtype" $"unknown dtype '{d}'"

/// The sizes: --quick runs in about a minute; the full run in about ten (2 cores).
/// bf16 prefills are shorter: CPU bf16 GEMM without AVX-512 runs at a few GFLOP/s (PyTorch's too).
let plan (quick: bool) (out: string) =
    let shape = PrefillShape.llava7bWidth
    if quick then
        { Out = out; Quick = true; Threads = Environment.ProcessorCount; Python = None; Stages = allStages
          World = { Calibration = 16; Test = 8; NewTokens = 8; Repeats = 3; EvaluationLimit = 4; EvaluationRepeats = 2; Attack = "badnet" }
          Gemm = [ { Dtype = "f32"; N = 2048; Warmup = 1; Runs = 3 }; { Dtype = "bf16"; N = 512; Warmup = 0; Runs = 1 } ]
          Prefill = [ { Dtype = "f32"; Shape = shape 1 64 35; Warmup = 1; Runs = 2 }; { Dtype = "bf16"; Shape = shape 1 16 3; Warmup = 0; Runs = 1 } ]
          LoadLayers = 1; LoadShardBytes = 512L <<< 20; LoadRuns = 1 }
    else
        { Out = out; Quick = false; Threads = Environment.ProcessorCount; Python = None; Stages = allStages
          World = { Calibration = 100; Test = 40; NewTokens = 32; Repeats = 5; EvaluationLimit = 20; EvaluationRepeats = 3; Attack = "badnet" }
          Gemm = [ { Dtype = "f32"; N = 4096; Warmup = 1; Runs = 3 }; { Dtype = "bf16"; N = 1024; Warmup = 0; Runs = 1 } ]
          Prefill = [ { Dtype = "f32"; Shape = shape 2 576 35; Warmup = 1; Runs = 3 }; { Dtype = "bf16"; Shape = shape 1 144 35; Warmup = 0; Runs = 3 } ]
          LoadLayers = 6; LoadShardBytes = 1L <<< 30; LoadRuns = 3 }

let settingsJson (s: Settings) =
    let w = s.World
    obj [ "threads", box s.Threads
          "stages", box (s.Stages |> List.map stageName |> List.toArray)
          "tiny_world",
          box (obj [ "calibration_samples", box w.Calibration; "test_inputs", box w.Test; "new_tokens", box w.NewTokens
                     "repeats", box w.Repeats; "evaluation_limit", box w.EvaluationLimit; "evaluation_repeats", box w.EvaluationRepeats
                     "attack", box w.Attack ])
          "gemm", box (JsonArray([| for g in s.Gemm -> obj [ "dtype", box g.Dtype; "n", box g.N; "warmup", box g.Warmup; "runs", box g.Runs ] :> JsonNode |]))
          "prefill",
          box (JsonArray([| for p in s.Prefill ->
                               obj [ "dtype", box p.Dtype; "shape", box (PrefillShape.toJson p.Shape); "warmup", box p.Warmup; "runs", box p.Runs ] :> JsonNode |]))
          "load", box (obj [ "layers", box s.LoadLayers; "shard_bytes", box s.LoadShardBytes; "runs", box s.LoadRuns ]) ]

/// A stage's value, or the reason it failed (the other stages still run; the message is logged).
let private attempt (log: string -> unit) (name: string) (f: unit -> 'a) : Result<'a, string> =
    try Ok(f ())
    with e ->
        let reason = $"{e.GetType().Name}: {e.Message}"
        log $"{name}: failed: {reason}"
        Error reason

let private skipped = Error "skipped (--only)"

let private gemm (s: Settings) (log: string -> unit) =
    s.Gemm |> List.map (fun g ->
        let r: BenchReport.Gemm = { Dtype = g.Dtype; N = g.N; Gflops = Gemm.gflops g.N (dtypeOf g.Dtype) g.Warmup g.Runs }
        log $"GEMM {g.Dtype} {g.N}²: {r.Gflops.Median:F1} GFLOP/s"
        r)

let private prefill (s: Settings) (log: string -> unit) =
    let python = PytorchPrefill.findPython s.Python
    match python with Error e -> log e | Ok p -> log $"PyTorch side: {p}"
    s.Prefill |> List.map (fun p ->
        let dotnet = DotnetPrefill.time p.Shape (dtypeOf p.Dtype) p.Warmup p.Runs |> Stats.summarize
        log $"prefill {p.Dtype}, {PrefillShape.tokens p.Shape} tokens, {p.Shape.Layers} layer(s): ours {dotnet.Median:F2} s"
        // PyTorch's own f32 GEMM beside its f32 prefill: tells a BLAS gap from an overhead gap.
        let gemm = match p.Dtype, s.Gemm |> List.tryFind (fun g -> g.Dtype = "f32") with "f32", Some g -> g.N, g.Runs | _ -> 0, 0
        let pytorch = python |> Result.bind (fun py -> PytorchPrefill.run py p.Shape p.Dtype s.Threads p.Warmup p.Runs gemm)
        match pytorch with
        | Ok r -> log $"prefill {p.Dtype}: PyTorch {Stats.median r.Seconds:F2} s (torch {r.Torch}, {r.Threads} threads, BLAS {String.Join(' ', r.Blas)})"
        | Error e -> log $"prefill {p.Dtype}: PyTorch not measured: {e}"
        ({ Dtype = p.Dtype; Shape = p.Shape; Dotnet = dotnet; Pytorch = pytorch }: BenchReport.Prefill))

let private load (s: Settings) (folder: string) (log: string -> unit) =
    let expected =
        LoadRss.tensorsOf (PrefillShape.config (LoadRss.shape s.LoadLayers))
        |> Array.sumBy (fun (_, shape) -> 2L * Array.fold (*) 1L shape)
    match LoadRss.freeBytes folder with
    | Some free when free < 2L * expected + (1L <<< 30) ->
        Error $"{expected / (1L <<< 20)} MiB checkpoint, {free / (1L <<< 20)} MiB free under {folder}"
    | _ ->
        let dir = Path.Combine(folder, "checkpoint")
        try
            let seconds, checkpoint = Stats.time (fun () -> LoadRss.write dir (LoadRss.shape s.LoadLayers) s.LoadShardBytes)
            log $"checkpoint: {float checkpoint.Bytes / 1e9:F2} GB in {checkpoint.Shards} shards, written in {seconds:F0} s"
            let probes =
                Array.init s.LoadRuns (fun _ ->
                    match LoadRss.measure dir with
                    | Ok p -> p
                    | Error e -> failwith e)
            log $"load: peak RSS / size {Stats.median (probes |> Array.map (fun p -> float p.PeakRss / float checkpoint.Bytes)):F3}"
            Ok { Checkpoint = checkpoint; Probes = probes }
        finally
            if Directory.Exists dir then Directory.Delete(dir, true)

let run (s: Settings) (log: string -> unit) =
    let loadAtStart = Machine.loadAverage ()
    torch.set_num_threads s.Threads
    let clock = Stopwatch.StartNew()
    let temp = Path.Combine(Path.GetTempPath(), $"cleansight-bench-{Guid.NewGuid():N}")
    Directory.CreateDirectory temp |> ignore
    // The folder may hold a multi-GB checkpoint: removed on SIGTERM / Ctrl+C too, not only at the end.
    let cleanUp () =
        // best effort, a few tries: on a signal the stage may still be writing into the folder
        let mutable tries = 3
        while tries > 0 && Directory.Exists temp do
            try Directory.Delete(temp, true)
            with :? IOException | :? UnauthorizedAccessException -> Threading.Thread.Sleep 200
            tries <- tries - 1
    use _term = Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGTERM, fun _ -> cleanUp ())
    use _int = Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGINT, fun _ -> cleanUp ())
    let has stage = List.contains stage s.Stages
    try
        let world =
            if has World then attempt log "tiny world" (fun () -> DefenseCost.run s.World (Path.Combine(temp, "world")) log) else skipped
        let gemm = if has Prefill then attempt log "GEMM" (fun () -> gemm s log) else skipped
        let prefill = if has Prefill then attempt log "prefill" (fun () -> prefill s log) else skipped
        let load = if has Load then attempt log "load" (fun () -> load s temp log) |> Result.bind id else skipped
        let results =
            { Quick = s.Quick; Settings = settingsJson s; Machine = Machine.describe loadAtStart; Seconds = clock.Elapsed.TotalSeconds
              World = world; Gemm = gemm; Prefill = prefill; Load = load }
        let json = toJson results
        Files.writeAtomic s.Out (fun stream ->
            use w = new Text.Json.Utf8JsonWriter(stream, Text.Json.JsonWriterOptions(Indented = true, Encoder = Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping))
            json.WriteTo w)
        results
    finally
        cleanUp ()
