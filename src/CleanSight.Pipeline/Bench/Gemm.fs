/// This machine's large-GEMM throughput through the same libtorch: an n×n by n×n matmul, the
/// yardstick the prefill's achieved FLOP/s is compared with.
module CleanSight.Pipeline.Bench.Gemm

open TorchSharp
open CleanSight.Pipeline.Bench

/// GFLOP/s of each timed n×n·n×n matmul (2n³ FLOPs).
let gflops (n: int) (dtype: torch.ScalarType) (warmup: int) (runs: int) =
    use generator = new torch.Generator(2UL)
    use a32 = torch.randn([| int64 n; int64 n |], generator = generator)
    use b32 = torch.randn([| int64 n; int64 n |], generator = generator)
    use a = a32.``to``(dtype)
    use b = b32.``to``(dtype)
    let seconds = Stats.repeat warmup runs (fun () -> (torch.matmul(a, b)).Dispose())
    seconds |> Array.map (fun s -> 2.0 * float n ** 3.0 / s / 1e9) |> Stats.summarize
