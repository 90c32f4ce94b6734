/// `cleansight generate`: one image, one question, one greedy answer.
module CleanSight.Pipeline.Generate

open System.IO
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Core.Text
open CleanSight.Core.Vision
open CleanSight.Pipeline.Cli
open Argu

type GenerateOutput =
    { input_ids: int[]
      first_token_logits: float32[]
      output_ids: int64[]
      text: string }

let run (args: ParseResults<GenerateArgs>) =
    let template = args.GetResult(GenerateArgs.Template, LlavaPrompt.DefaultTemplate)
    let question = args.GetResult GenerateArgs.Prompt
    // Check the prompt before loading anything heavy.
    checkOption "--prompt" (fun () -> LlavaPrompt.Format(question, template)) |> ignore
    let maxNewTokens = atLeastOne "--max-new-tokens" (args.GetResult(GenerateArgs.Max_New_Tokens, 32))
    let dtype = checkOption "--dtype" (fun () -> RunOptions.ParseDtype(args.GetResult(GenerateArgs.Dtype, "f32")))
    let device = checkOption "--device" (fun () -> RunOptions.CheckDevice(args.GetResult(GenerateArgs.Device, "cpu")))
    let options = RunOptions(device, dtype)
    let image = RgbImage.Load(args.GetResult GenerateArgs.Image)
    use session =
        LlavaSession.Load(args.GetResult GenerateArgs.Model, options,
                          adapter = (args.TryGetResult GenerateArgs.Adapter |> Option.toObj), template = template)
    let prompt = session.Prompt question
    match session.ContextProblem(prompt.InputIds.Length, maxNewTokens) with
    | null -> ()
    | problem -> raise (InputError("--prompt", problem))
    let generation = session.Generate(image, question, maxNewTokens)
    let text = session.Decode generation.OutputIds
    printfn "%s" text
    args.TryGetResult GenerateArgs.Json
    |> Option.iter (fun path ->
        Files.writeJson path
            { input_ids = prompt.InputIds
              first_token_logits = generation.FirstTokenLogits
              output_ids = generation.OutputIds
              text = text })
    0
