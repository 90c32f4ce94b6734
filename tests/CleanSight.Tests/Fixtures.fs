/// Where the tests find their inputs. The tiny llava-hf checkpoint is a committed copy of
/// ../shared/fixtures/tiny-llava-hf; the real LLaMA tokenizer is read from ../shared (never copied:
/// Meta's licence), and tests that need it are skipped when it is absent.
module CleanSight.Tests.Fixtures

open System
open System.IO

let private repoRoot =
    let rec up (dir: DirectoryInfo) =
        if isNull dir then failwith "cannot find the repository root (CleanSight.sln) above the test binary"
        elif File.Exists(Path.Combine(dir.FullName, "CleanSight.sln")) then dir.FullName
        else up dir.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

let root = repoRoot

/// The tiny llava-hf checkpoint (2 fp16 shards, GQA, 16 image tokens) with expected.json.
let tinyLlava = Path.Combine(repoRoot, "tests", "fixtures", "tiny-llava-hf")

/// ../shared/fixtures/llama-tokenizer beside the repository, when present.
let llamaTokenizerDir =
    [ Path.Combine(repoRoot, "..", "shared", "fixtures", "llama-tokenizer")
      Path.Combine(repoRoot, "..", "..", "shared", "fixtures", "llama-tokenizer") ]
    |> List.map Path.GetFullPath
    |> List.tryFind (fun d -> File.Exists(Path.Combine(d, "tokenizer.model")))

/// This run's temporary folders live under one folder, removed when the run ends (Main).
let tempRoot = Path.Combine(Path.GetTempPath(), "cleansight-tests", $"run-{Environment.ProcessId}-{Guid.NewGuid():N}")

/// A fresh empty temporary folder.
let tempDir () =
    let dir = Path.Combine(tempRoot, Guid.NewGuid().ToString("N"))
    Directory.CreateDirectory dir |> ignore
    dir

/// A copy of the tiny checkpoint in a fresh temporary folder, for tests that damage it.
let tinyLlavaCopy () =
    let dir = tempDir ()
    for f in Directory.GetFiles tinyLlava do
        File.Copy(f, Path.Combine(dir, Path.GetFileName f))
    dir

let private cliGate = obj ()

/// Runs the `cleansight` CLI in-process; returns (exit code, stdout, stderr). It redirects the
/// console, which is process-wide: runs take turns (a report test running in parallel may force
/// another module's lazy run), else one would read another's output.
let runCli (args: string list) =
    lock cliGate (fun () ->
        let out, err = new StringWriter(), new StringWriter()
        let oldOut, oldErr = Console.Out, Console.Error
        Console.SetOut out
        Console.SetError err
        try
            let code = CleanSight.Pipeline.Program.main (Array.ofList args)
            code, out.ToString(), err.ToString()
        finally
            Console.SetOut oldOut
            Console.SetError oldErr)
