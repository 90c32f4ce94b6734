/// The `cleansight` command line: an Argu schema per command, each parsed into a run.
module CleanSight.Pipeline.Cli

open Argu

type GenerateArgs =
    | [<Mandatory>] Model of dir: string
    | [<Mandatory>] Image of file: string
    | [<Mandatory>] Prompt of text: string
    | Max_New_Tokens of n: int
    | Json of out: string
    | Adapter of file: string
    | Template of text: string
    | Device of name: string
    | Dtype of name: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "llava-hf checkpoint folder (safetensors)"
            | Image _ -> "image file"
            | Prompt _ -> "question; the llava-1.5 template is applied"
            | Max_New_Tokens _ -> "greedy token budget (default 32)"
            | Json _ -> "also write input_ids, first_token_logits, output_ids and text to this JSON file"
            | Adapter _ -> "projector adapter (safetensors of multi_modal_projector.*) overlaid on the model"
            | Template _ -> "prompt template with one <image> and one {question} (default: llava-1.5)"
            | Device _ -> "torch device (default cpu)"
            | Dtype _ -> "compute dtype: f32 (default), bf16, f16"

[<RequireQualifiedAccess>]
type Command =
    | [<CliPrefix(CliPrefix.None)>] Generate of ParseResults<GenerateArgs>
    interface IArgParserTemplate with
        member c.Usage =
            match c with
            | Generate _ -> "answer a question about an image with a llava-hf checkpoint"

let parser = ArgumentParser.Create<Command>(programName = "cleansight")
