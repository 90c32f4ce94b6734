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
        | Command.World args -> WorldCommands.world args
        | Command.Train_Base args -> WorldCommands.trainBase args
        | Command.Attack args -> WorldCommands.attack args
        | Command.Calibrate args -> DefenseCommands.calibrate args
        | Command.Evaluate args -> DefenseCommands.evaluate args
        | Command.Demo args ->
            let out = args.GetResult DemoArgs.Out
            let s = { Demo.defaults out with Test = args.GetResult(DemoArgs.Test, 100) }
            Demo.run s (Progress.logger (args.Contains DemoArgs.No_Progress)) |> ignore
            printfn "%s" (System.IO.Path.Combine(out, "report.html"))
            0
    with
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        2
    | :? InputError as e ->
        eprintfn "error: %s" e.Message
        1
