module CleanSight.Pipeline.Program

open System
open Argu
open CleanSight.Core
open CleanSight.Pipeline.Cli

/// Every failure a user can cause ends here as one line on stderr and a non-zero exit.
[<EntryPoint>]
let main argv =
    CleanSight.Core.Native.TorchNative.Ensure()
    try
        match parser.ParseCommandLine(argv, raiseOnUsage = true).GetSubCommand() with
        | Command.Generate args -> Generate.run args
        // The world commands report through Progress.logger: inside `Progress.run` it feeds the live display.
        | Command.World args -> Progress.run (Progress.mode (args.Contains WorldArgs.No_Progress)) "world" (fun _ -> WorldCommands.world args)
        | Command.Train_Base args ->
            Progress.run (Progress.mode (args.Contains TrainBaseArgs.No_Progress)) "train-base" (fun _ -> WorldCommands.trainBase args)
        | Command.Attack args -> Progress.run (Progress.mode (args.Contains AttackArgs.No_Progress)) "attack" (fun _ -> WorldCommands.attack args)
        | Command.Calibrate args -> DefenseCommands.calibrate args
        | Command.Evaluate args -> DefenseCommands.evaluate args
        | Command.Defend args -> DefenseCommands.defend args
        | Command.Table args -> DefenseCommands.table args
        | Command.Demo args ->
            let out = args.GetResult DemoArgs.Out
            let d = Demo.defaults out
            let given = args.TryGetResult DemoArgs.World
            let world = World.Materialize.resolve given
            let request = layerRequest (World.Materialize.textLayers world) (args.TryGetResult DemoArgs.Layers)
            let s = { d with Test = atLeastOne "--test" (args.GetResult(DemoArgs.Test, d.Test)); Calibration = args.GetResult(DemoArgs.Calibration, d.Calibration)
                             PooledReference = args.Contains DemoArgs.Pooled_Reference; World = given |> Option.map (fun _ -> world)
                             PromptLengthReference =
                                checkOption "--conditioning" (fun () -> Defense.Calibration.parseConditioning (args.GetResult(DemoArgs.Conditioning, "none")))
                                    = Defense.Calibration.OnPromptLength
                             Feature =
                                checkOption "--feature" (fun () -> Defense.Calibration.parseFeature (args.GetResult(DemoArgs.Feature, d.Feature)))
                                |> Defense.Calibration.featureName
                             Whitening =
                                checkOption "--whitening" (fun () -> Defense.Calibration.parseWhitening (args.GetResult(DemoArgs.Whitening, d.Whitening)))
                                |> Defense.Calibration.whiteningName
                             ThresholdRule =
                                checkOption "--threshold-rule" (fun () -> Defense.Calibration.parseThresholdRule (args.GetResult(DemoArgs.Threshold_Rule, d.ThresholdRule)))
                                |> Defense.Calibration.thresholdRuleName }
                    |> Demo.withLayerRequest request
            if s.Calibration < 2 then raise (InputError("--calibration", $"calibration needs at least 2 clean samples, got {s.Calibration}"))
            Progress.run (Progress.mode (args.Contains DemoArgs.No_Progress)) "demo" (Demo.run s) |> ignore
            printfn "%s" (System.IO.Path.Combine(out, "report.html"))
            0
        | Command.Bench args ->
            let plan = Bench.Benchmark.plan (args.Contains BenchArgs.Quick) (args.GetResult BenchArgs.Out)
            let stages =
                args.TryGetResult BenchArgs.Only
                |> Option.map (fun csv -> checkOption "--only" (fun () -> Bench.Benchmark.parseStages csv))
                |> Option.defaultValue plan.Stages
            let threads = args.GetResult(BenchArgs.Threads, plan.Threads)
            if threads < 1 then raise (InputError("--threads", $"must be at least 1, got {threads}"))
            let s = { plan with Threads = threads; Python = args.TryGetResult BenchArgs.Python; Stages = stages }
            Bench.Benchmark.run s (Progress.logger (args.Contains BenchArgs.No_Progress)) |> ignore
            printfn "%s" s.Out
            0
        | Command.Bench_Load_Probe args ->
            printfn "%s" (Bench.LoadRss.probeToJson (Bench.LoadRss.probe (args.GetResult BenchLoadProbeArgs.Model)))
            0
    with
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        2
    | :? InputError as e ->
        eprintfn "error: %s" e.Message
        1
