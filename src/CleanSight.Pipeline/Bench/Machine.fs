/// What the numbers were measured on: CPU, cores, memory, OS, runtimes, build, torch threads and
/// the load average (a busy machine skews every row); and this process's resident memory.
module CleanSight.Pipeline.Bench.Machine

open System
open System.Diagnostics
open System.IO
open System.Reflection
open System.Runtime.InteropServices
open TorchSharp

type Description =
    { Cpu: string
      LogicalCores: int
      MemoryGiB: float
      Os: string
      Dotnet: string
      TorchSharp: string
      /// Debug or Release: the JIT optimises only Release (libtorch's kernels are native either way)
      Build: string
      TorchThreads: int
      /// /proc/loadavg (1, 5, 15 min) when the run started and when it ended
      LoadAverageStart: string
      LoadAverageEnd: string }

let private readOr (path: string) (fallback: string) = try File.ReadAllText path with _ -> fallback

/// The first "model name" of /proc/cpuinfo text.
let cpuModel (cpuinfo: string) =
    cpuinfo.Split('\n')
    |> Array.tryPick (fun l ->
        let parts = l.Split(':', 2)
        if parts.Length = 2 && parts.[0].Trim() = "model name" then Some(parts.[1].Trim()) else None)
    |> Option.defaultValue "unknown"

/// A "Name:   123 kB" field of /proc/self/status or /proc/meminfo text, in bytes.
let kbField (text: string) (name: string) : int64 option =
    text.Split('\n')
    |> Array.tryPick (fun l ->
        if l.StartsWith(name + ":", StringComparison.Ordinal) then
            match l.Substring(name.Length + 1).Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries) with
            | [| n; "kB" |] -> Some(int64 n * 1024L)
            | [| n |] -> Some(int64 n)
            | _ -> None
        else None)

let private status name =
    kbField (readOr "/proc/self/status" "") name
    |> Option.defaultWith (fun () -> failwith $"{name} is not in /proc/self/status (Linux only)")

/// Peak resident set size of this process so far (VmHWM), bytes.
let peakRss () = status "VmHWM"
/// Resident set size now (VmRSS), bytes.
let currentRss () = status "VmRSS"

let loadAverage () =
    (readOr "/proc/loadavg" "").Split(' ', StringSplitOptions.RemoveEmptyEntries) |> Array.truncate 3 |> String.concat " "

let build =
    let debuggable = typeof<Description>.Assembly.GetCustomAttribute<DebuggableAttribute>()
    if not (isNull debuggable) && debuggable.IsJITOptimizerDisabled then "Debug" else "Release"

let describe (loadAtStart: string) =
    { Cpu = cpuModel (readOr "/proc/cpuinfo" "")
      LogicalCores = Environment.ProcessorCount
      MemoryGiB =
        kbField (readOr "/proc/meminfo" "") "MemTotal"
        |> Option.map (fun b -> Math.Round(float b / 1024.0 ** 3.0, 1)) |> Option.defaultValue nan
      Os = RuntimeInformation.OSDescription
      Dotnet = RuntimeInformation.FrameworkDescription
      TorchSharp = typeof<torch>.Assembly.GetName().Version.ToString()
      Build = build
      TorchThreads = torch.get_num_threads ()
      LoadAverageStart = loadAtStart
      LoadAverageEnd = loadAverage () }
