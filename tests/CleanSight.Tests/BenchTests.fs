/// The bench's cheap parts (no timed assertions): the median/min/max summary, the FLOP count, the
/// prefill inputs, shard planning and a small sharded checkpoint written and loaded back, the
/// /proc parsers, the JSON's shape, the PyTorch script on a tiny shape when python3-torch is
/// present, and the CLI's refusal of a bad --only.
module CleanSight.Tests.BenchTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
open CleanSight.Core.Checkpoints
open CleanSight.Core.Model
open CleanSight.Pipeline.Bench
open CleanSight.Pipeline.Bench.Stats

let private config = { FsCheckConfig.defaultConfig with maxTest = 200; replay = Some(20260306UL, 0x9E3779B97F4A7C15UL, None) }

/// A decoder small enough for a unit test: 2 layers of width 64, 16 image tokens.
let private tiny =
    { PrefillShape.llava7bWidth 2 16 6 with Hidden = 64; Heads = 4; KvHeads = 2; Mlp = 96; Vocab = 128; VisionHidden = 8 }

let private sampleResults () : BenchReport.Results =
    let s xs = summarize xs
    { Quick = true
      Settings = BenchReport.obj [ "threads", box 2 ]
      Machine = Machine.describe "0.00 0.00 0.00"
      Seconds = 1.0
      World =
        Ok { Attack = "badnet"; Adapter = None; VisualTokens = 36
             Clean = { Inputs = 2; UndefendedMs = s [| 10.0 |]; DefendedMs = s [| 10.2 |]; PruneAllMs = s [| 9.0 |]
                       Ratio = s [| 1.02 |]; PruneAllRatio = s [| 0.9 |]; FlaggedShare = 0.0; MeanPruned = 0.0 }
             Triggered = { Inputs = 2; UndefendedMs = s [| 10.0 |]; DefendedMs = s [| 9.5 |]; PruneAllMs = s [| 9.0 |]
                           Ratio = s [| 0.95 |]; PruneAllRatio = s [| 0.9 |]; FlaggedShare = 0.5; MeanPruned = 12.0 }
             CalibrationPerS = s [| 20.0; 22.0 |]; EvaluationPerS = s [| 15.0 |] }
      Gemm = Ok [ { Dtype = "f32"; N = 64; Gflops = s [| 100.0 |] } ]
      Prefill =
        Ok [ { Dtype = "f32"; Shape = tiny; Dotnet = s [| 1.0; 1.2 |]
               Pytorch = Ok { Seconds = [| 1.0; 1.1 |]; Torch = "1.13"; Threads = 2; BlasThreads = Some 2; Blas = [| "libopenblas.so" |]
                              Attention = "eager"; Python = "/usr/bin/python3"; GemmGflops = [| 90.0 |] } }
             { Dtype = "bf16"; Shape = tiny; Dotnet = s [| 2.0 |]; Pytorch = Error "python3-torch not found" } ]
      Load = Error "not enough disk" }

[<Tests>]
let tests =
    testList "bench" [
        testList "stats" [
            test "median of odd and even counts" {
                Expect.equal (median [| 3.0; 1.0; 2.0 |]) 2.0 "odd: the middle"
                Expect.equal (median [| 4.0; 1.0; 3.0; 2.0 |]) 2.5 "even: the mean of the middle two"
            }
            testPropertyWithConfig config "min ≤ median ≤ max, the runs kept in order" <| fun (NonEmptyArray(xs: NormalFloat[])) ->
                let runs = xs |> Array.map (fun (NormalFloat x) -> x)
                let s = summarize runs
                s.Min <= s.Median && s.Median <= s.Max && s.Runs = runs
                && s.Min = Array.min runs && s.Max = Array.max runs
            test "paired and unpaired ratios" {
                let paired = ratioOf [| 2.0; 3.0; 4.0 |] [| 1.0; 1.0; 2.0 |]
                Expect.equal paired.Runs [| 2.0; 3.0; 2.0 |] "run by run"
                Expect.equal paired.Median 2.0 "median of the ratios"
                let unpaired = ratioOfMedians [| 2.0; 4.0; 3.0 |] [| 1.0; 2.0; 4.0 |]
                Expect.equal unpaired.Median 1.5 "median over median"
                Expect.equal (unpaired.Min, unpaired.Max) (0.5, 4.0) "min/max cross the extremes"
            }
            test "goals" {
                Expect.isTrue (met (AtMost 1.05) (summarize [| 1.0; 1.1; 1.05 |])) "median 1.05 meets ≤ 1.05"
                Expect.isFalse (met (AtLeast 0.5) (summarize [| 0.4 |])) "0.4 misses ≥ 0.5"
            }
            test "no runs is an error, not a NaN" {
                Expect.throwsT<ArgumentException> (fun () -> summarize [||] |> ignore) "empty"
            }
        ]

        testList "prefill shape" [
            test "FLOPs: the hand count of a tiny shape" {
                // T = 5 + 16 + 6 = 27; D = 64, 4 heads of 16, 2 KV heads (K and V: 32 wide), MLP 96
                let t, d, kv, m = 27.0, 64.0, 32.0, 96.0
                let perLayer = 2.0 * t * (d * d + 2.0 * d * kv + d * d + 3.0 * d * m) + 2.0 * t * (t + 1.0) * d
                let expected = 2.0 * perLayer + 2.0 * 16.0 * (8.0 * d + d * d) + 2.0 * d * 128.0
                Expect.floatClose Accuracy.veryHigh (PrefillShape.flops tiny) expected "flops"
            }
            test "ids: BOS, the image tokens in one run, everything inside the vocabulary" {
                let ids = PrefillShape.ids tiny
                let image = int64 (CleanSight.Pipeline.World.TinyLlava.imageTokenId (PrefillShape.sizes tiny))
                Expect.equal ids.Length (PrefillShape.tokens tiny) "length"
                Expect.equal ids.[0] 1L "BOS"
                Expect.equal (ids |> Array.filter ((=) image) |> Array.length) 16 "16 image tokens"
                Expect.equal ids.[tiny.PromptBefore .. tiny.PromptBefore + 15] (Array.create 16 image) "contiguous"
                Expect.isTrue (ids |> Array.forall (fun i -> i >= 0L && i < int64 tiny.Vocab)) "in the vocabulary"
                Expect.equal (PrefillShape.config tiny).ImageSeqLength 16 "the config's image tokens"
            }
            test "a non-square image token count is refused" {
                Expect.throwsT<ArgumentException> (fun () -> PrefillShape.sizes { tiny with ImageTokens = 15 } |> ignore) "15"
            }
            test "our prefill runs on the shape (one timed run)" {
                let runs = DotnetPrefill.time tiny torch.ScalarType.Float32 0 1
                Expect.equal runs.Length 1 "one run"
                Expect.isTrue (runs.[0] > 0.0) "positive seconds"
            }
        ]

        testList "load" [
            testPropertyWithConfig config "shard plan: order kept, every shard within the limit unless one tensor exceeds it" <|
                fun (sizes: PositiveInt list) (PositiveInt limit) ->
                    let named = sizes |> List.mapi (fun i (PositiveInt s) -> $"t{i}", int64 s) |> List.toArray
                    let plan = LoadRss.shardPlan (int64 limit) named
                    let sizeOf = dict named
                    Array.concat plan = Array.map fst named
                    && plan |> Array.forall (fun shard -> shard.Length = 1 || Array.sumBy (fun n -> sizeOf.[n]) shard <= int64 limit)
            test "a sharded checkpoint is written, indexed, and loads into the model" {
                let dir = Fixtures.tempDir ()
                try
                    let c = LoadRss.write dir tiny 20_000L
                    Expect.isGreaterThan c.Shards 1 "several shards"
                    Expect.isTrue (File.Exists(Path.Combine(dir, CheckpointFiles.IndexFileName))) "index"
                    let files = CheckpointFiles.Open dir
                    Expect.equal files.Tensors.Count c.Tensors "every tensor indexed"
                    Expect.equal (files.Shards |> Seq.sumBy (fun s -> FileInfo(s.Path).Length)) c.Bytes "size = the shards on disk"
                    let p = LoadRss.probe dir
                    Expect.isGreaterThanOrEqual p.PeakRss p.BaselineRss "peak ≥ baseline"
                    Expect.equal (LoadRss.probeOfJson (LoadRss.probeToJson p)) p "the probe's JSON round-trips"
                finally
                    Directory.Delete(dir, true)
            }
        ]

        testList "machine" [
            test "/proc parsers" {
                let status = "Name:\tdotnet\nVmPeak:\t  100 kB\nVmHWM:\t   2048 kB\nVmRSS:\t1024 kB\n"
                Expect.equal (Machine.kbField status "VmHWM") (Some 2097152L) "VmHWM in bytes"
                Expect.equal (Machine.kbField status "VmSwap") None "absent"
                Expect.equal (Machine.cpuModel "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n") "AMD EPYC 7B13" "model name"
                Expect.isGreaterThan (Machine.peakRss ()) 0L "this process"
            }
        ]

        testList "json" [
            test "results: every row, goals and verdicts, unmeasured rows as strings" {
                let json = BenchReport.toJson (sampleResults ())
                let results = json.["results"].AsObject()
                let names = results |> Seq.map (fun kv -> kv.Key) |> Set.ofSeq
                Expect.equal names
                    (set [ "defended_over_undefended_clean"; "defended_over_undefended_triggered"; "dotnet_over_pytorch_prefill"
                           "prefill_flops_fraction"; "load_rss_over_size"; "calibration_samples_per_s"; "evaluation_samples_per_s" ])
                    "the rows"
                let clean = results.["defended_over_undefended_clean"]
                Expect.equal (clean.["median"].GetValue<float>()) 1.02 "median"
                Expect.equal (clean.["goal"].GetValue<string>()) "<= 1.05" "goal"
                Expect.isTrue (clean.["met"].GetValue<bool>()) "met"
                let f32 = results.["dotnet_over_pytorch_prefill"].["f32"]
                Expect.floatClose Accuracy.high (f32.["median"].GetValue<float>()) (1.1 / 1.05) "median over median"
                Expect.isTrue (f32.["met"].GetValue<bool>()) "1.048 meets ≤ 1.1"
                Expect.stringStarts (results.["dotnet_over_pytorch_prefill"].["bf16"].GetValue<string>()) "not measured: python3-torch" "bf16 says why"
                Expect.stringStarts (results.["load_rss_over_size"].GetValue<string>()) "not measured" "load says why"
                let refBlas =
                    { sampleResults () with
                        Prefill = Ok [ { Dtype = "f32"; Shape = tiny; Dotnet = summarize [| 1.0 |]
                                         Pytorch = Ok { Seconds = [| 20.0 |]; Torch = "1.13"; Threads = 2; BlasThreads = Some 2; Blas = [| "libblas.so.3" |]
                                                        Attention = "eager"; Python = "python3"; GemmGflops = [||] } } ] }
                Expect.stringContains ((BenchReport.results refBlas).["dotnet_over_pytorch_prefill"].["f32"].GetValue<string>())
                    "libopenblas0-pthread" "the reference BLAS makes the comparison meaningless: said, not a number"
                Expect.isNull (results.["calibration_samples_per_s"].["goal"]) "throughput has no goal"
                for key in [ "machine"; "settings"; "details" ] do Expect.isNotNull json.[key] key
                Expect.equal (json.["machine"].["load_average_start"].GetValue<string>()) "0.00 0.00 0.00" "load average"
            }
        ]

        testList "pytorch" [
            (match PytorchPrefill.findPython None with
             | Ok python ->
                 test "the script runs the tiny shape and reports its runs" {
                     match PytorchPrefill.run python tiny "f32" 1 0 2 (64, 1) with
                     | Ok r ->
                         Expect.equal r.Seconds.Length 2 "two runs"
                         Expect.equal r.Threads 1 "the thread count asked for"
                         if r.Blas |> Array.exists (fun b -> b.Contains "openblas") then
                             Expect.equal r.BlasThreads (Some 1) "OpenBLAS's pool sized too"
                         Expect.equal r.GemmGflops.Length 1 "one GEMM run"
                     | Error e -> failtest e
                 }
             | Error reason -> test "the script runs the tiny shape" { skiptest reason })
            test "an interpreter without torch: a reason naming python3-torch" {
                match PytorchPrefill.findPython (Some "/nonexistent/python3") with
                | Ok p -> failtest $"found {p}"
                | Error e -> Expect.stringContains e "python3-torch" "names the package"
            }
        ]

        testSequenced <| test "cli: an unknown --only stage is one error line" {
            let out = Path.Combine(Fixtures.tempDir (), "b.json")
            let code, _, err = Fixtures.runCli [ "bench"; "--only"; "gpu"; "--out"; out ]
            Expect.equal code 1 "exit 1"
            Expect.stringContains err "unknown stage 'gpu'" "names the stage"
            Expect.isFalse (File.Exists out) "nothing written"
        }
    ]
