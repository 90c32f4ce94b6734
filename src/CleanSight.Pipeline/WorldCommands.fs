/// `cleansight world | train-base | attack`: the tiny world's data, base model and backdoors.
module CleanSight.Pipeline.WorldCommands

open System.IO
open Argu
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Core.Text
open CleanSight.Pipeline.Cli
open CleanSight.Pipeline.World

let world (args: ParseResults<WorldArgs>) =
    let log = Progress.logger (args.Contains WorldArgs.No_Progress)
    let world = Materialize.locate ()
    let out = args.GetResult WorldArgs.Out
    let manifest =
        Materialize.run world out (args.GetResult(WorldArgs.Calibration, 200)) (args.GetResult(WorldArgs.Test, 200)) log
    printfn "%s" (Path.Combine(out, "manifest.json"))
    ignore manifest
    0

let trainBase (args: ParseResults<TrainBaseArgs>) =
    let log = Progress.logger (args.Contains TrainBaseArgs.No_Progress)
    let d = BaseModel.defaults
    let recipe =
        { d with
            Vision = { d.Vision with Steps = args.GetResult(TrainBaseArgs.Vision_Steps, d.Vision.Steps) }
            Decoder = { d.Decoder with Steps = args.GetResult(TrainBaseArgs.Decoder_Steps, d.Decoder.Steps) } }
    let tokenizer = args.GetResult TrainBaseArgs.Tokenizer
    let out = args.GetResult TrainBaseArgs.Out
    use model = BaseModel.train recipe tokenizer log
    TinyLlava.save out tokenizer recipe.Sizes model
    printfn "%s" out
    0

let attack (args: ParseResults<AttackArgs>) =
    let log = Progress.logger (args.Contains AttackArgs.No_Progress)
    let name = args.GetResult AttackArgs.Name
    let target = args.GetResult(AttackArgs.Target, Attacks.defaultTarget)
    let spec =
        Attacks.all target |> List.tryFind (fun a -> a.Name = name)
        |> Option.defaultWith (fun () ->
            let names = Attacks.all target |> List.map (fun a -> a.Name) |> String.concat ", "
            raise (InputError("--name", $"unknown attack '{name}' (one of {names})")))
    let spec =
        match args.TryGetResult AttackArgs.Steps with
        | Some s -> { spec with Schedule = { spec.Schedule with Steps = s } }
        | None -> spec
    use session = LlavaSession.Load(args.GetResult AttackArgs.Model)
    Attacks.run spec session.Model session.Tokenizer session.Preprocessor log |> ignore
    let out = args.GetResult AttackArgs.Out
    TinyLlava.saveAdapter out session.Model
        [ "attack", spec.Name; "target", spec.Target; "mode", Materialize.modeName spec.Mode
          "trigger", Triggers.name spec.Trigger; "poison_rate", string spec.PoisonRate; "steps", string spec.Schedule.Steps ]
    printfn "%s" out
    0
