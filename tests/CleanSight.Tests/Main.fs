module CleanSight.Tests.Main

open Expecto
open Expecto.Impl

/// Expecto's own printer, keeping the summary for the plain closing line CI reads.
let mutable private last: TestRunSummary option = None
let private printer =
    let standard = TestPrinters.defaultPrinter
    { standard with summary = fun config summary -> last <- Some summary; standard.summary config summary }

[<EntryPoint>]
let main argv =
    CleanSight.Core.Native.TorchNative.Ensure()
    TorchSharp.torch.set_num_threads 2
    let quiet = System.Console.IsOutputRedirected || not (isNull (System.Environment.GetEnvironmentVariable "CI"))
    let code =
        try Tests.runTestsInAssemblyWithCLIArgs [ yield CLIArguments.Printer printer; if quiet then yield CLIArguments.No_Spinner ] argv
        finally
            if System.IO.Directory.Exists Fixtures.tempRoot then System.IO.Directory.Delete(Fixtures.tempRoot, true)
    last |> Option.iter (fun s ->
        // After Expecto's coloured output: a fresh line, then "N passed, N failed, N skipped" alone.
        printfn "\n%d passed, %d failed, %d skipped" s.passed.Length (s.failed.Length + s.errored.Length) s.ignored.Length)
    code
