/// `cleansight world | train-base | attack`: the tiny world's data, base model and backdoors.
module CleanSight.Pipeline.WorldCommands

open System
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
    let calibration = atLeastOne "--calibration" (args.GetResult(WorldArgs.Calibration, Materialize.defaultCalibration))
    let test = atLeastOne "--test" (args.GetResult(WorldArgs.Test, 200))
    let world = Materialize.resolve (args.TryGetResult WorldArgs.World)
    let out = args.GetResult WorldArgs.Out
    let manifest = Materialize.run world out calibration test log
    printfn "%s" (Path.Combine(out, "manifest.json"))
    ignore manifest
    0

/// The held-out caption CIDEr-D per caption request, as one line.
let private captionLine (model: CleanSight.Core.Model.LlavaForConditionalGeneration) (tok: LlavaTokenizer) (images: int) =
    let parts =
        BaseModel.heldOutCaptions model tok images
        |> Array.map (fun (prompt, c) -> $"\"{prompt}\" {c:F2}") |> String.concat ", "
    $"held-out caption CIDEr-D on {images} clean-test images: {parts}"

/// The base recipe with train-base's overrides (seed, steps, ViT patch size, decoder depth, heads and width, general text, conversation turns, decoder batch
/// and learning rate, projector parametrisation, LLaVA's text pre-training and alignment stages).
let recipeOf (args: ParseResults<TrainBaseArgs>) =
    let d = BaseModel.defaults
    let nonNegative option n = if n < 0 then raise (InputError(option, $"must be at least 0, got {n}")) else n
    let decoderLr = args.GetResult(TrainBaseArgs.Decoder_Lr, d.Decoder.PeakLr)
    if not (decoderLr > 0.0 && decoderLr < 1.0) then raise (InputError("--decoder-lr", $"{decoderLr} is not in (0, 1)"))
    let hidden = args.GetResult(TrainBaseArgs.Text_Hidden, d.Sizes.TextHidden)
    if hidden < 8 then raise (InputError("--text-hidden", $"must be at least 8, got {hidden}"))
    // the MLP keeps the default's ratio to the width, rounded up to a multiple of 8
    let mlp = (hidden * d.Sizes.TextMlp + d.Sizes.TextHidden * 8 - 1) / (d.Sizes.TextHidden * 8) * 8
    let heads = args.GetResult(TrainBaseArgs.Text_Heads, d.Sizes.TextHeads)
    if heads < 1 || hidden % heads <> 0 || (hidden / heads) % 2 <> 0 then
        raise (InputError("--text-heads", $"{heads} heads do not split the decoder width {hidden} into even head sizes (RoPE rotates pairs)"))
    let patch = args.GetResult(TrainBaseArgs.Patch_Size, d.Sizes.PatchSize)
    if patch < 1 || d.Sizes.ImageSize % patch <> 0 then
        raise (InputError("--patch-size", $"{patch} does not divide the image side {d.Sizes.ImageSize}"))
    let generalText =
        match args.TryGetResult TrainBaseArgs.General_Text with
        | None | Some "everyday" -> GeneralText.Everyday
        | Some "with-scene-words" -> GeneralText.WithSceneWords
        | Some "with-passages" -> GeneralText.WithPassages
        | Some other -> raise (InputError("--general-text", $"'{other}' is not everyday, with-scene-words or with-passages"))
    let grounding = args.GetResult(TrainBaseArgs.Grounding, d.Grounding)
    if not (grounding >= 0.0 && grounding < 1e6) then raise (InputError("--grounding", $"{grounding} is not a weight ≥ 0"))
    let layers = args.GetResult(TrainBaseArgs.Text_Layers, d.Sizes.TextLayers)
    if layers < 1 then raise (InputError("--text-layers", $"must be at least 1, got {layers}"))
    { d with
        Seed = int64 (args.GetResult(TrainBaseArgs.Seed, int d.Seed))
        Sizes = { d.Sizes with PatchSize = patch; TextLayers = layers; TextHeads = heads; TextKvHeads = heads; TextHidden = hidden; TextMlp = mlp }
        GeneralText = generalText
        Grounding = grounding
        Vision = { d.Vision with Steps = atLeastOne "--vision-steps" (args.GetResult(TrainBaseArgs.Vision_Steps, d.Vision.Steps)) }
        ProjectorCoordinates = if args.Contains TrainBaseArgs.Whiten_Projector then WhitenedProjector.Whitened else d.ProjectorCoordinates
        Turns = atLeastOne "--turns" (args.GetResult(TrainBaseArgs.Turns, d.Turns))
        TextPretrain = { d.TextPretrain with Steps = nonNegative "--text-pretrain-steps" (args.GetResult(TrainBaseArgs.Text_Pretrain_Steps, d.TextPretrain.Steps)) }
        Align = { d.Align with Steps = nonNegative "--align-steps" (args.GetResult(TrainBaseArgs.Align_Steps, d.Align.Steps)) }
        Decoder = { d.Decoder with Steps = atLeastOne "--decoder-steps" (args.GetResult(TrainBaseArgs.Decoder_Steps, d.Decoder.Steps))
                                   PeakLr = decoderLr
                                   BatchSize = atLeastOne "--decoder-batch" (args.GetResult(TrainBaseArgs.Decoder_Batch, d.Decoder.BatchSize)) } }

let trainBase (args: ParseResults<TrainBaseArgs>) =
    let log = Progress.logger (args.Contains TrainBaseArgs.No_Progress)
    let recipe = recipeOf args
    // without --tokenizer: the world tokenizer, in a temporary folder that save copies into --out
    let temporary =
        if args.Contains TrainBaseArgs.Tokenizer then None
        else
            let dir = Directory.CreateTempSubdirectory("cleansight-world-tokenizer-").FullName
            WorldTokenizer.write dir
            Some dir
    let tokenizer = temporary |> Option.defaultWith (fun () -> args.GetResult TrainBaseArgs.Tokenizer)
    try
        let pieces = (LlavaTokenizer.Load tokenizer).SentencePieceVocabSize
        let recipe = { recipe with Sizes = { recipe.Sizes with TokenizerPieces = pieces } }
        log $"tokenizer: {tokenizer} ({pieces} pieces)"
        let out = args.GetResult TrainBaseArgs.Out
        use model = BaseModel.train recipe tokenizer log
        TinyLlava.save out tokenizer recipe.Sizes (BaseModel.metadata recipe) model
        let tok = LlavaTokenizer.Load out
        let overall, byKind = BaseModel.heldOutAccuracy model tok 300
        let kinds = byKind |> Array.map (fun (k, a) -> $"{k} {100.0 * a:F0}%%") |> String.concat ", "
        // the measured results go to stdout, with or without --no-progress; the path written last
        printfn "%s" $"held-out VQA accuracy {100.0 * overall:F1}%% on 300 clean-test questions ({kinds})"
        printfn "%s" (captionLine model tok 100)
        printfn "%s" out
        0
    finally
        temporary |> Option.iter (fun dir -> Directory.Delete(dir, true))

let attack (args: ParseResults<AttackArgs>) =
    let log = Progress.logger (args.Contains AttackArgs.No_Progress)
    let name = args.GetResult AttackArgs.Name
    let target = nonEmptyTarget "--target" (args.GetResult(AttackArgs.Target, Attacks.defaultTarget))
    let spec =
        Attacks.all target |> List.tryFind (fun a -> a.Name = name)
        |> Option.defaultWith (fun () ->
            let names = Attacks.all target |> List.map (fun a -> a.Name) |> String.concat ", "
            raise (InputError("--name", $"unknown attack '{name}' (one of {names})")))
    let spec =
        match args.TryGetResult AttackArgs.Steps with
        | Some s -> { spec with Schedule = { spec.Schedule with Steps = atLeastOne "--steps" s } }
        | None -> spec
    let spec =
        match args.TryGetResult AttackArgs.Poison_Rate with
        | Some r when r > 0.0 && r <= 1.0 -> { spec with PoisonRate = r }
        | Some r -> raise (InputError("--poison-rate", $"{r} is not in (0, 1]"))
        | None -> spec
    let options = runOptions (args.TryGetResult AttackArgs.Device) None
    use session = LlavaSession.Load(args.GetResult AttackArgs.Model, options)
    Attacks.run spec session.Model session.Tokenizer session.Preprocessor log |> ignore
    let asr, cleanAsr = Attacks.heldOutAsr spec session.Model session.Tokenizer session.Preprocessor 100
    // the measured results go to stdout, with or without --no-progress; the path written last
    printfn "%s" $"{spec.Name}: held-out ASR {100.0 * asr:F0}%% on 100 triggered clean-test images, {100.0 * cleanAsr:F0}%% on the same images clean"
    let overall, _ = BaseModel.heldOutAccuracy session.Model session.Tokenizer 300
    printfn "%s" $"{spec.Name}: held-out clean VQA accuracy {100.0 * overall:F1}%% on 300 clean-test questions"
    printfn "%s" $"{spec.Name}: {captionLine session.Model session.Tokenizer 100}"
    let out = args.GetResult AttackArgs.Out
    TinyLlava.saveAdapter out session.Model
        [ "attack", spec.Name; "target", spec.Target; "mode", Materialize.modeName spec.Mode
          "trigger", Triggers.name spec.Trigger; "trigger_parameters", Triggers.parameters spec.Trigger
          "poison_rate", string spec.PoisonRate; "steps", string spec.Schedule.Steps
          CleanSight.Core.Checkpoints.BaseFingerprint.MetadataKey, CleanSight.Core.Checkpoints.BaseFingerprint.Of(session.Directory) ]
    printfn "%s" out
    0
