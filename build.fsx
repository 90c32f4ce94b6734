// CleanSight build targets (FAKE 5 in `dotnet fsi`):  dotnet fsi build.fsx [-t TARGET]
// One chain:  Restore ==> Build ==> Test ==> Scripts ==> Generate ==> Demo   (TrainBase, Attack-NAME, Attacks: the tiny world; Bench)
#r "nuget: Fake.Core.Target, 5.20.3"
#r "nuget: Fake.Core.Process, 5.20.3"

open System
open Fake.Core
open Fake.Core.TargetOperators

let args = fsi.CommandLineArgs |> Array.skip 1 |> List.ofArray
let ctx = Context.FakeExecutionContext.Create false "build.fsx" args
Context.setExecutionContext (Context.RuntimeContext.Fake ctx)

let root = __SOURCE_DIRECTORY__
let dotnet (argLine: string) =
    let result =
        CreateProcess.fromRawCommandLine "dotnet" argLine
        |> CreateProcess.withWorkingDirectory root
        |> Proc.run
    if result.ExitCode <> 0 then failwithf "dotnet %s failed with exit code %d" argLine result.ExitCode

let fixture = "tests/fixtures/tiny-llava-hf"

Target.create "Restore" (fun _ ->
    dotnet "tool restore"
    dotnet "paket restore")

Target.create "Build" (fun _ -> dotnet "build CleanSight.sln -c Release")

// The README's test command.
Target.create "Test" (fun _ -> dotnet "run --no-build --project tests/CleanSight.Tests -c Release -- --summary")

// Every exploratory script and analysis must still run (they reference the Release build); a script
// whose full run is long names shorter runs, one "// ci-args: …" line each.
Target.create "Scripts" (fun _ ->
    for dir in [ "scripts"; "analysis" ] do
        for script in IO.Directory.GetFiles(IO.Path.Combine(root, dir), "*.fsx") |> Array.sort do
            let runs = IO.File.ReadLines script |> Seq.choose (fun l -> if l.StartsWith "// ci-args: " then Some(l.Substring 12) else None) |> List.ofSeq
            for args in (if runs.IsEmpty then [ "" ] else runs) do
                Trace.log $"== {script} {args}"
                dotnet $"fsi --quiet {script} {args}")

let cleansight (argLine: string) = dotnet $"run --no-build --project src/CleanSight.Pipeline -c Release -- {argLine}"
let attacks = [ "badnet"; "blended"; "wanet"; "issba"; "trojvlm"; "vlood" ]

// The tiny world (committed; these targets rebuild it, seeded): the clean base (~30 min on 2 cores)…
Target.create "TrainBase" (fun _ -> cleansight "train-base --out world/base")
// …and each attack's projector adapter (≤ 10 min each).
for a in attacks do
    Target.create $"Attack-{a}" (fun _ ->
        cleansight $"attack --name {a} --model world/base --out world/adapters/{a}.safetensors")
Target.create "Attacks" ignore
for a in attacks do $"Attack-{a}" ==> "Attacks" |> ignore

// The README's first command: the whole story on the embedded tiny world.
Target.create "Demo" (fun _ -> cleansight "demo --out out/demo")

// The benchmarks (issue 6): measured ratios → out/bench.json (~10 min on 2 cores). Not timed tests:
// run it on a quiet machine, with Debian's python3-torch and libopenblas0-pthread for the PyTorch rows.
Target.create "Bench" (fun _ -> cleansight "bench --out out/bench.json")

// generate on the fixture checkpoint (the core's smoke test).
Target.create "Generate" (fun _ ->
    dotnet $"run --no-build --project src/CleanSight.Pipeline -c Release -- generate --model {fixture} --image {fixture}/probe_56.png --prompt \"What is in the picture?\" --max-new-tokens 6")

"Restore" ==> "Build" ==> "Test" ==> "Scripts" ==> "Generate" |> ignore
"Build" ==> "TrainBase" |> ignore
"Generate" ==> "Demo" |> ignore
"Build" ==> "Bench" |> ignore
for a in attacks do "Build" ==> $"Attack-{a}" |> ignore

Target.runOrDefaultWithArguments "Test"
