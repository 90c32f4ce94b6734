/// `cleansight generate`: one image, one question, one greedy answer — under CleanSight when given a
/// calibration file (the verdict on stderr and in --json).
module CleanSight.Pipeline.Generate

open System.IO
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Core.Text
open CleanSight.Core.Vision
open CleanSight.Pipeline.Cli
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open Argu

type GenerateOutput =
    { input_ids: int[]
      first_token_logits: float32[]
      output_ids: int64[]
      text: string }

/// CleanSight's verdict in --json.
type DefenseOutput =
    { distance: float
      threshold: float
      flagged: bool
      pruned_positions: int64[]
      visual_tokens: int
      from_layer: int }

type DefendedOutput =
    { input_ids: int[]
      output_ids: int64[]
      text: string
      cleansight: DefenseOutput }

let run (args: ParseResults<GenerateArgs>) =
    let calibrationPath = args.TryGetResult GenerateArgs.Calibration
    // With a calibration the input is prompted as its clean references were: with its template.
    let template =
        match calibrationPath, args.TryGetResult GenerateArgs.Template with
        | Some c, Some t when t <> Calibration.template c ->
            raise (InputError("--template", $"differs from the prompt template {c} was calibrated with; leave it out"))
        | Some c, _ -> Calibration.template c
        | None, t -> defaultArg t LlavaPrompt.DefaultTemplate
    let task =
        match args.TryGetResult GenerateArgs.Task with
        | None -> Dataset.Vqa
        | Some _ when calibrationPath.IsNone -> raise (InputError("--task", "only means something with --calibration"))
        | Some t ->
            match Dataset.tryParseTask t with
            | Some task -> task
            | None -> raise (InputError("--task", $"'{t}' is not vqa or caption"))
    let question = args.GetResult GenerateArgs.Prompt
    // Check the prompt before loading anything heavy.
    checkOption "--prompt" (fun () -> LlavaPrompt.Format(question, template)) |> ignore
    let maxNewTokens = atLeastOne "--max-new-tokens" (args.GetResult(GenerateArgs.Max_New_Tokens, 32))
    let options = runOptions (args.TryGetResult GenerateArgs.Device) (args.TryGetResult GenerateArgs.Dtype)
    let image = RgbImage.Load(args.GetResult GenerateArgs.Image)
    use session =
        LlavaSession.Load(args.GetResult GenerateArgs.Model, options,
                          adapter = (args.TryGetResult GenerateArgs.Adapter |> Option.toObj), template = template)
    let prompt = session.Prompt question
    match session.ContextProblem(prompt.InputIds.Length, maxNewTokens) with
    | null -> ()
    | problem -> raise (InputError("--prompt", problem))
    match calibrationPath with
    | None ->
        let generation = session.Generate(image, question, maxNewTokens)
        let text = session.Decode generation.OutputIds
        printfn "%s" text
        args.TryGetResult GenerateArgs.Json
        |> Option.iter (fun path ->
            Files.writeJson path
                { GenerateOutput.input_ids = prompt.InputIds
                  first_token_logits = generation.FirstTokenLogits
                  output_ids = generation.OutputIds
                  text = text })
    | Some c ->
        let calibration = Calibration.load c session
        let answer = Defend.answer session calibration task image question maxNewTokens
        let v = answer.Verdict
        eprintfn "%s" (Defend.describe task v)
        printfn "%s" answer.Output
        args.TryGetResult GenerateArgs.Json
        |> Option.iter (fun path ->
            Files.writeJson path
                { DefendedOutput.input_ids = prompt.InputIds
                  output_ids = answer.OutputIds
                  text = answer.Output
                  cleansight =
                    { distance = v.Distance; threshold = v.Threshold; flagged = v.Flagged; pruned_positions = v.Pruned
                      visual_tokens = v.VisualTokens; from_layer = v.FromLayer } })
    0
