/// PyTorch's side of the prefill comparison: the same computation (projector on the image
/// features, merge at the image positions, LLaMA decoder layers with HF's math — fp32 RMSNorm,
/// rotate_half RoPE, causal attention — final norm and lm_head on the last token), the same
/// shapes, dtype, ids and thread count, in an embedded script run by a python3 that has torch
/// (Debian's python3-torch). Image features are random inputs here; our side runs its tiny vision
/// tower (≈ 0.1 % of the work) to make them.
module CleanSight.Pipeline.Bench.PytorchPrefill

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open CleanSight.Pipeline.Bench

/// The script: argv[1] is the JSON spec; the last stdout line is the JSON result.
let script = """
import json, math, sys, time
import torch
import torch.nn.functional as F

spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
s = spec["shape"]
D, H, HKV, M, L, V = s["hidden"], s["heads"], s["kv_heads"], s["mlp"], s["layers"], s["vocab"]
N, DV, EPS, THETA = s["image_tokens"], s["vision_hidden"], 1e-5, 10000.0
d = D // H
ids = torch.tensor(spec["ids"], dtype=torch.long)
T = ids.shape[0]

def w(*shape):
    return (torch.randn(*shape) * 0.02).to(dtype)

embed = w(V, D)
p1w, p1b, p2w, p2b = w(D, DV), torch.zeros(D, dtype=dtype), w(D, D), torch.zeros(D, dtype=dtype)
layers = [dict(q=w(H * d, D), k=w(HKV * d, D), v=w(HKV * d, D), o=w(D, H * d),
               gate=w(M, D), up=w(M, D), down=w(D, M),
               ln1=torch.ones(D, dtype=dtype), ln2=torch.ones(D, dtype=dtype)) for _ in range(L)]
norm, lm_head = torch.ones(D, dtype=dtype), w(V, D)
vision = torch.randn(N, DV).to(dtype)
inv_freq = 1.0 / (THETA ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
sdpa = getattr(F, "scaled_dot_product_attention", None)

def rms(x, weight):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)

def rotate_half(x):
    return torch.cat((-x[..., d // 2:], x[..., : d // 2]), -1)

def attention(q, k, v):
    if sdpa is not None:
        return sdpa(q, k, v, is_causal=True)
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(d)
    causal = torch.full((T, T), float("-inf")).triu(1)
    return torch.matmul(torch.softmax(scores.float() + causal, -1).to(q.dtype), v)  # HF eager: fp32 softmax

def prefill():
    with torch.no_grad():
        h = embed[ids]                                                      # [T, D]
        image = F.linear(F.gelu(F.linear(vision, p1w, p1b)), p2w, p2b)      # [N, D]
        h[ids == spec["image_token"]] = image
        h = h.unsqueeze(0)                                                  # [1, T, D]
        f = torch.arange(T).float()[:, None] * inv_freq[None]
        emb = torch.cat((f, f), -1)
        cos, sin = emb.cos().to(dtype)[None, None], emb.sin().to(dtype)[None, None]  # [1, 1, T, d]
        for p in layers:
            x = rms(h, p["ln1"])
            q = F.linear(x, p["q"]).view(1, T, H, d).transpose(1, 2)
            k = F.linear(x, p["k"]).view(1, T, HKV, d).transpose(1, 2)
            v = F.linear(x, p["v"]).view(1, T, HKV, d).transpose(1, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            if HKV != H:
                k, v = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
            o = attention(q, k, v).transpose(1, 2).reshape(1, T, H * d)
            h = h + F.linear(o, p["o"])
            x = rms(h, p["ln2"])
            h = h + F.linear(F.silu(F.linear(x, p["gate"])) * F.linear(x, p["up"]), p["down"])
        return F.linear(rms(h[:, -1:], norm), lm_head).float()

for _ in range(spec["warmup"]):
    prefill()
times = []
for _ in range(spec["runs"]):
    t = time.perf_counter()
    prefill()
    times.append(time.perf_counter() - t)

gemm = []
if spec["gemm_n"] > 0:  # this library's large-GEMM FLOP/s, for the profile
    n = spec["gemm_n"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    for _ in range(spec["gemm_runs"]):
        t = time.perf_counter()
        a @ b
        gemm.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)

libs = {}
with open("/proc/self/maps") as maps:
    for line in maps:
        path = line[line.find("/"):].strip() if "/" in line else ""
        name = path.split("/")[-1]
        if any(x in name for x in ("blas", "mkl", "lapack")):
            libs[name] = path
blas_threads = None  # OpenBLAS keeps its own pool: torch.set_num_threads does not size it (the environment does)
for name, path in libs.items():
    if "openblas" in name:
        try:
            import ctypes
            blas_threads = ctypes.CDLL(path).openblas_get_num_threads()
        except Exception:
            pass
print(json.dumps({"times_s": times, "torch": torch.__version__, "threads": torch.get_num_threads(), "blas_threads": blas_threads,
                  "blas": sorted(libs), "attention": "sdpa" if sdpa else "eager", "gemm_gflops": gemm}))
"""

/// What one PyTorch run reports.
type Run =
    { Seconds: float[]; Torch: string; Threads: int
      /// OpenBLAS's own thread count, when it is the BLAS
      BlasThreads: int option
      Blas: string[]; Attention: string; Python: string
      /// f32 n×n GEMM GFLOP/s in the same process (empty when not asked for)
      GemmGflops: float[] }

let private exec (python: string) (args: string list) (environment: (string * string) list) (timeout: TimeSpan) =
    let info = ProcessStartInfo(python, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    for a in args do info.ArgumentList.Add a
    for k, v in environment do info.Environment.[k] <- v
    use p = Process.Start info
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    if not (p.WaitForExit timeout) then
        p.Kill true
        -1, "", $"killed after {timeout.TotalSeconds:F0} s"
    else
        p.WaitForExit()
        p.ExitCode, out.Result, err.Result

/// The first python3 that imports torch (an explicit one must), or why none does.
let findPython (explicit: string option) : Result<string, string> =
    let candidates = match explicit with Some p -> [ p ] | None -> [ "/usr/bin/python3"; "python3" ]
    let works p =
        try
            let code, _, _ = exec p [ "-c"; "import torch" ] [] (TimeSpan.FromMinutes 2.0)
            code = 0
        with _ -> false
    match candidates |> List.tryFind works with
    | Some p -> Ok p
    | None ->
        Error(
            $"""python3-torch not found ({String.Join(", ", candidates)} cannot import torch); """
            + "install it with: apt-get install -y python3-torch libopenblas0-pthread")

/// Runs the script for one shape and dtype ("f32" | "bf16"), and `gemm` = (n, runs) f32 GEMMs
/// (n = 0: none); Error carries the script's last words.
let run (python: string) (shape: PrefillShape.Shape) (dtype: string) (threads: int) (warmup: int) (runs: int) (gemm: int * int) =
    let spec =
        JsonObject(
            [ "shape", PrefillShape.toJson shape :> JsonNode
              "ids", JsonArray(PrefillShape.ids shape |> Array.map (fun i -> JsonValue.Create i :> JsonNode))
              "image_token", JsonValue.Create(CleanSight.Pipeline.World.TinyLlava.imageTokenId (PrefillShape.sizes shape))
              "dtype", JsonValue.Create dtype
              "threads", JsonValue.Create threads
              "warmup", JsonValue.Create warmup
              "runs", JsonValue.Create runs
              "gemm_n", JsonValue.Create(fst gemm)
              "gemm_runs", JsonValue.Create(snd gemm) ]
            |> Seq.map (fun (k, v) -> Collections.Generic.KeyValuePair(k, v)))
    let file = Path.Combine(Path.GetTempPath(), $"cleansight-bench-{Guid.NewGuid():N}.py")
    File.WriteAllText(file, script)
    try
        // The BLAS pools size themselves from the environment, not from torch.set_num_threads.
        let pools = [ for v in [ "OMP_NUM_THREADS"; "OPENBLAS_NUM_THREADS"; "MKL_NUM_THREADS" ] -> v, string threads ]
        let code, out, err = exec python [ file; spec.ToJsonString() ] pools (TimeSpan.FromHours 1.0)
        let last = out.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> Array.tryLast
        match code, last with
        | 0, Some line ->
            let o = JsonNode.Parse(line)
            Ok { Seconds = o.["times_s"].AsArray() |> Seq.map (fun x -> x.GetValue<float>()) |> Seq.toArray
                 Torch = o.["torch"].GetValue<string>(); Threads = o.["threads"].GetValue<int>()
                 BlasThreads = (match o.["blas_threads"] with null -> None | n -> Some(n.GetValue<int>()))
                 Blas = o.["blas"].AsArray() |> Seq.map (fun x -> x.GetValue<string>()) |> Seq.toArray
                 Attention = o.["attention"].GetValue<string>(); Python = python
                 GemmGflops = o.["gemm_gflops"].AsArray() |> Seq.map (fun x -> x.GetValue<float>()) |> Seq.toArray }
        | _ ->
            let tail = err.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> Array.tryLast |> Option.defaultValue "(no stderr)"
            Error $"the PyTorch script failed (exit {code}): {tail}"
    finally
        File.Delete file
