/// Peak memory of loading a checkpoint, over its size: a generated multi-GB sharded llava-hf
/// checkpoint (LLaVA-7B's decoder widths and vocabulary, a few layers, a tiny vision tower; F16 as
/// llava-hf ships) is loaded in a child process — `cleansight bench-load-probe`, the load path of
/// `LlavaSession.Load` without the tokenizer — which reports its VmHWM.
module CleanSight.Pipeline.Bench.LoadRss

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp
open CleanSight.Core.Checkpoints
open CleanSight.Core.Model
open CleanSight.Pipeline.Bench

/// The checkpoint's shape: 7B widths, 32000-token vocabulary, `layers` decoder layers.
let shape (layers: int) = { PrefillShape.llava7bWidth layers 16 32 with Vocab = 32000 }

let dtype = torch.ScalarType.Float16

/// Parameter names and shapes of a config's model, in declaration order (meta device: no memory).
let tensorsOf (cfg: LlavaConfig) =
    use model = new LlavaForConditionalGeneration(cfg, dtype, torch.device "meta")
    [| for struct (name, p) in model.named_parameters () -> name, p.shape |]

/// Consecutive tensors grouped into shards of at most `maxBytes` (a larger tensor gets a shard of its own).
let shardPlan (maxBytes: int64) (sizes: (string * int64)[]) : string[][] =
    let shards = Collections.Generic.List<string[]>()
    let current = Collections.Generic.List<string>()
    let mutable bytes = 0L
    for name, size in sizes do
        if current.Count > 0 && bytes + size > maxBytes then
            shards.Add(current.ToArray())
            current.Clear()
            bytes <- 0L
        current.Add name
        bytes <- bytes + size
    if current.Count > 0 then shards.Add(current.ToArray())
    shards.ToArray()

let shardName (i: int) (n: int) = $"model-%05d{i}-of-%05d{n}.safetensors"

type Checkpoint = { Dir: string; Bytes: int64; Shards: int; Tensors: int; LargestTensorBytes: int64 }

/// Writes config.json, the shards (seeded U(−0.03, 0.03) F16 values, one shard in memory at a time)
/// and model.safetensors.index.json into `dir`.
let write (dir: string) (s: PrefillShape.Shape) (maxShardBytes: int64) =
    Directory.CreateDirectory dir |> ignore
    File.WriteAllText(Path.Combine(dir, "config.json"), (PrefillShape.configJson s).ToJsonString())
    let tensors = tensorsOf (PrefillShape.config s)
    let bytesOf (shape: int64[]) = (Array.fold (*) 1L shape) * 2L
    let plan = shardPlan maxShardBytes (tensors |> Array.map (fun (n, shape) -> n, bytesOf shape))
    let shapes = dict tensors
    use generator = new torch.Generator(3UL)
    let weightMap = JsonObject()
    plan |> Array.iteri (fun i names ->
        let file = shardName (i + 1) plan.Length
        use scope = torch.NewDisposeScope()
        let values = [ for n in names -> struct (n, torch.empty(shapes.[n], dtype).uniform_(-0.03, 0.03, generator)) ]
        SafetensorsFile.Write(Path.Combine(dir, file), values)
        for n in names do weightMap.[n] <- JsonValue.Create file)
    let shardFiles = [ for i in 1 .. plan.Length -> Path.Combine(dir, shardName i plan.Length) ]
    let total = tensors |> Array.sumBy (snd >> bytesOf)
    let index = JsonObject()
    index.["metadata"] <- JsonObject([ Collections.Generic.KeyValuePair<string, JsonNode>("total_size", JsonValue.Create total) ])
    index.["weight_map"] <- weightMap
    File.WriteAllText(Path.Combine(dir, CheckpointFiles.IndexFileName), index.ToJsonString())
    { Dir = dir; Bytes = shardFiles |> List.sumBy (fun f -> FileInfo(f).Length); Shards = plan.Length
      Tensors = tensors.Length; LargestTensorBytes = tensors |> Array.map (snd >> bytesOf) |> Array.max }

/// What one load reports: RSS before loading (runtime and libtorch up), peak RSS, seconds.
type Probe = { BaselineRss: int64; PeakRss: int64; Seconds: float }

let probeToJson (p: Probe) =
    JsonSerializer.Serialize(dict [ "baseline_rss", box p.BaselineRss; "peak_rss", box p.PeakRss; "seconds", box p.Seconds ])

let probeOfJson (line: string) =
    let o = JsonNode.Parse line
    { BaselineRss = o.["baseline_rss"].GetValue<int64>(); PeakRss = o.["peak_rss"].GetValue<int64>()
      Seconds = o.["seconds"].GetValue<float>() }

/// In the child: loads the checkpoint folder as `LlavaSession.Load` does (config, shard headers, an
/// uninitialised model of the file's dtype, every tensor read straight into a buffer and copied into its parameter).
let probe (dir: string) =
    (torch.zeros(1L)).Dispose() // libtorch loaded: part of the baseline
    let baseline = Machine.currentRss ()
    let seconds, () =
        Stats.time (fun () ->
            let cfg = LlavaConfig.Load(Path.Combine(dir, "config.json"))
            let files = CheckpointFiles.Open dir
            use model = new LlavaForConditionalGeneration(cfg, dtype, torch.CPU)
            WeightLoader.Load(model, files)
            model.eval ())
    { BaselineRss = baseline; PeakRss = Machine.peakRss (); Seconds = seconds }

/// In the parent: one child process per load; `cleansight bench-load-probe --model DIR` on the same runtime.
let measure (dir: string) =
    let host =
        let p = Environment.ProcessPath
        if not (isNull p) && Path.GetFileNameWithoutExtension p = "dotnet" then p else "dotnet"
    let info = ProcessStartInfo(host, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    for a in [ typeof<Probe>.Assembly.Location; "bench-load-probe"; "--model"; dir ] do info.ArgumentList.Add a
    use p = Process.Start info
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    match p.ExitCode, out.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> Array.tryLast with
    | 0, Some line -> Ok(probeOfJson line)
    | code, _ -> Error $"the load probe failed (exit {code}): {err.Result.Trim()}"

/// Free space on the file system holding `dir` (the longest mount point above it), bytes.
let freeBytes (dir: string) =
    let full = Path.GetFullPath dir
    DriveInfo.GetDrives()
    |> Array.filter (fun d -> d.IsReady && full.StartsWith(d.RootDirectory.FullName, StringComparison.Ordinal))
    |> Array.sortByDescending (fun d -> d.RootDirectory.FullName.Length)
    |> Array.tryHead
    |> Option.map (fun d -> d.AvailableFreeSpace)
