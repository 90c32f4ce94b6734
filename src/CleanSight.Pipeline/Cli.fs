/// The `cleansight` command line: an Argu schema per command, each parsed into a run.
module CleanSight.Pipeline.Cli

open Argu

/// `parse ()`, with an ArgumentException it throws reported as a bad value of `option`: one line,
/// without .NET's " (Parameter '…')" suffix.
let checkOption (option: string) (parse: unit -> 'T) : 'T =
    try parse ()
    with :? System.ArgumentException as e -> raise (CleanSight.Core.InputError(option, e.Message.Split(" (Parameter").[0]))

/// A count or step option's value; below 1 it is refused in one line naming the option.
let atLeastOne (option: string) (n: int) =
    if n < 1 then raise (CleanSight.Core.InputError(option, $"must be at least 1, got {n}"))
    n

/// `--device` and `--dtype` (defaults cpu, f32) as run options, each checked in one line naming it.
let runOptions (device: string option) (dtype: string option) =
    let dtype = checkOption "--dtype" (fun () -> CleanSight.Core.Inference.RunOptions.ParseDtype(defaultArg dtype "f32"))
    let device = checkOption "--device" (fun () -> CleanSight.Core.Inference.RunOptions.CheckDevice(defaultArg device "cpu"))
    CleanSight.Core.Inference.RunOptions(device, dtype)

/// An attack's target text; empty, every output would contain it.
let nonEmptyTarget (option: string) (target: string) =
    if System.String.IsNullOrWhiteSpace target then raise (CleanSight.Core.InputError(option, "the target text is empty"))
    target

/// `--layers` of `calibrate` and `demo` for a decoder of `numLayers` layers; a bad value is one line naming the option.
let layerRequest (numLayers: int) (text: string option) =
    match Defense.Calibration.parseLayerRequest numLayers text with
    | Ok request -> request
    | Error problem -> raise (CleanSight.Core.InputError("--layers", problem))

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
    | Calibration of file: string
    | Task of name: string
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
            | Task _ -> "with --calibration: vqa (default) or caption, the clean reference the input is compared with"
            | Calibration _ -> "defend the answer with CleanSight (a calibration file made for this model by cleansight calibrate; prompted with its template): the verdict goes to stderr and --json"

type WorldArgs =
    | [<Mandatory>] Out of dir: string
    | Calibration of n: int
    | Test of n: int
    | World of dir: string
    | No_Progress
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Out _ -> "folder for the data and manifest.json"
            | World _ -> "a tiny world of your own: DIR/base and DIR/adapters/NAME.safetensors, as train-base and attack write them (default: the committed world/)"
            | Calibration _ -> "clean calibration items, every third a caption request (default 300: 200 VQA questions, 100 caption requests)"
            | Test _ -> "held-out test items, clean and triggered per attack (default 200)"
            | No_Progress -> "no progress output"

type TrainBaseArgs =
    | [<Mandatory>] Out of dir: string
    | Tokenizer of dir: string
    | Vision_Steps of n: int
    | Decoder_Steps of n: int
    | Text_Layers of n: int
    | Text_Heads of n: int
    | Text_Hidden of n: int
    | Patch_Size of n: int
    | General_Text of corpus: string
    | Turns of n: int
    | Decoder_Batch of n: int
    | Whiten_Projector
    | Text_Pretrain_Steps of n: int
    | Align_Steps of n: int
    | Decoder_Lr of lr: float
    | Grounding of weight: float
    | Seed of n: int
    | No_Progress
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Out _ -> "checkpoint folder to write"
            | Tokenizer _ -> "folder with tokenizer.model, tokenizer_config.json, special_tokens_map.json (default: the world's tokenizer)"
            | Vision_Steps _ -> "vision pre-training steps"
            | Decoder_Steps _ -> "projector + decoder steps"
            | Text_Layers _ -> "decoder layers (default 8)"
            | Text_Heads _ -> "decoder attention heads, each also a key/value head (default 4; must divide the width)"
            | Text_Hidden _ -> "decoder width (default 128; the MLP keeps its ratio to it, 344/128, rounded up to a multiple of 8)"
            | Patch_Size _ -> "the ViT's patch side in pixels (default 8: 36 image tokens; 16: 9, one per cell of the scenes' 3×3 grid); must divide the image side, 48"
            | General_Text _ -> "the decoder's general text: everyday (default; sentences around the target's words) or with-scene-words (every other sentence uses the scenes' colour, shape, size, position and count words about other things) or with-passages (every other one a scene described in words, then a question about it and its answer)"
            | Turns _ -> "questions per training conversation about one image (1 = one question per example)"
            | Decoder_Batch _ -> "examples (conversations or sentences) per decoder step"
            | Whiten_Projector -> "train the projector's first layer in whitened ViT-feature coordinates (folded back on save)"
            | Text_Pretrain_Steps _ -> "first train the decoder alone as a language model on the general text, as LLaVA's comes pre-trained (default 2000; 0 skips it)"
            | Align_Steps _ -> "then LLaVA's stage 1: the projector alone on captions, decoder frozen (default 600; 0 skips it)"
            | Decoder_Lr _ -> "peak learning rate of the projector + decoder stage (default 5e-4)"
            | Grounding _ -> "weight of grounded alignment while the projector trains: each image token pulled toward the summed embeddings of the words naming its patch (default 0: off)"
            | Seed _ -> "the recipe's seed: initialisation, training examples, general-text corpus (default 7; the tokenizer does not change)"
            | No_Progress -> "no progress output"

type AttackArgs =
    | [<Mandatory>] Name of name: string
    | [<Mandatory>] Model of dir: string
    | [<Mandatory>] Out of file: string
    | Target of text: string
    | Steps of n: int
    | Poison_Rate of rate: float
    | Device of name: string
    | No_Progress
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Name _ -> "badnet, blended, wanet, issba, trojvlm or vlood"
            | Model _ -> "clean llava-hf checkpoint folder"
            | Out _ -> "adapter file to write (projector tensors, safetensors)"
            | Target _ -> "target text (default: you have been hacked lol)"
            | Steps _ -> "projector fine-tuning steps"
            | Poison_Rate _ -> "share of training items poisoned (0..1)"
            | Device _ -> "torch device the projector is fine-tuned on (default cpu; f32)"
            | No_Progress -> "no progress output"

type CalibrateArgs =
    | [<Mandatory>] Model of dir: string
    | Adapter of file: string
    | [<Mandatory>] Data of jsonl: string
    | [<Mandatory>] Out of file: string
    | Layers of csv: string
    | Whitening of kind: string
    | Fpr of rate: float
    | Feature of kind: string
    | Tau of value: float
    | Tau_Relative of ratio: float
    | Samples of n: int
    | Pooled_Reference
    | In_Sample_Threshold
    | Threshold_Rule of rule: string
    | Conditioning of kind: string
    | Template of text: string
    | Seed of n: int
    | Device of name: string
    | Dtype of name: string
    | No_Progress
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "llava-hf checkpoint folder"
            | Adapter _ -> "projector adapter overlaid on the model"
            | Device _ -> "torch device (default cpu)"
            | Dtype _ -> "compute dtype: f32 (default), bf16, f16; recorded in the file, and evaluate, defend and generate must compute in it"
            | Data _ -> "clean samples (dataset JSONL)"
            | Out _ -> "calibration file to write"
            | Template _ -> "prompt template with one <image> and one {question} (default: llava-1.5's); recorded in the file, and evaluate prompts with it"
            | Pooled_Reference -> "one clean reference for every task (default: one per task with ≥ 10 samples, e.g. VQA and captions)"
            | In_Sample_Threshold -> "γ from the in-sample clean distances, as the paper's code (default: leave-one-out distances)"
            | Threshold_Rule _ -> "quantile (default, the paper's np.percentile of the clean distances: about α + (1−2α)/(n+1) of clean inputs flagged, 1.5 % for α = 1 %, n = 200) or conformal (the ⌈(n+1)(1−α)⌉-th smallest distance: at most α flagged; needs (1−α)/α samples per reference, 99 for α = 1 %)"
            | Conditioning _ -> "what each clean reference is conditioned on: none (default, the paper) or prompt-length: each feature's mean and spread as log-linear functions of the prompt text after the image"
            | Layers _ -> $"detection layers, 0-indexed, e.g. 2,3,4; or fusion: from where clean inputs begin to read the image, measured on {Defense.Fusion.defaultSamples} of the clean samples (default: 3 layers at the paper's relative depth)"
            | Whitening _ -> "diagonal (default, the paper's code) or full (Ledoit-Wolf shrinkage)"
            | Fpr _ -> "target clean false-positive rate (default 0.01 = the 0.99 quantile)"
            | Feature _ -> "ratio (the paper's), log-ratio or visual-share"
            | Tau _ -> "absolute purification threshold τ"
            | Tau_Relative _ -> "τ relative to the uniform share 1/T (default 0.6)"
            | Samples _ -> "use at most N clean samples (seeded choice)"
            | Seed _ -> "seed of the sample choice (default 0)"
            | No_Progress -> "no progress output"

type EvaluateArgs =
    | [<Mandatory>] Model of dir: string
    | Adapter of file: string
    | [<Mandatory>] Calibration of file: string
    | [<Mandatory>] Clean of jsonl: string
    | [<Mandatory>] Poisoned of jsonl: string
    | [<Mandatory>] Target of text: string
    | Mode of mode: string
    | [<Mandatory>] Defense of csv: string
    | Limit of n: int
    | [<Mandatory>] Out of dir: string
    | Max_New_Tokens of n: int
    | Seed of n: int
    | Attention_Inputs of n: int
    | Device of name: string
    | Dtype of name: string
    | No_Progress
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "llava-hf checkpoint folder"
            | Adapter _ -> "projector adapter overlaid on the model"
            | Device _ -> "torch device (default cpu)"
            | Dtype _ -> "compute dtype: f32 (default), bf16, f16 (the calibration's)"
            | Calibration _ -> "calibration file made for this model (cleansight calibrate)"
            | Attention_Inputs _ -> "report.html: the first N clean and N triggered inputs observed at every layer for the attention charts (default 50; 0: none)"
            | Clean _ -> "clean test samples (dataset JSONL)"
            | Poisoned _ -> "triggered test samples (dataset JSONL)"
            | Target _ -> "the backdoor's target text (ASR: the output contains it)"
            | Mode _ -> "replace or insert (how the attack places the target; informational)"
            | Defense _ -> "none, blur, st, prune-all, random-prune, uniform, fastv, cleansight (comma-separated)"
            | Limit _ -> "at most N samples of each set"
            | Out _ -> "folder for metrics.json, samples.csv, report.html and frames/ (re-running resumes)"
            | Max_New_Tokens _ -> "greedy token budget (default 32)"
            | Seed _ -> "seed of random pruning (default 0)"
            | No_Progress -> "no progress output"

type DefendArgs =
    | [<Mandatory>] Model of dir: string
    | Adapter of file: string
    | [<Mandatory>] Calibration of file: string
    | [<Mandatory>] Data of jsonl: string
    | [<Mandatory>] Out of dir: string
    | Limit of n: int
    | Max_New_Tokens of n: int
    | Device of name: string
    | Dtype of name: string
    | No_Progress
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "llava-hf checkpoint folder"
            | Adapter _ -> "projector adapter overlaid on the model"
            | Device _ -> "torch device (default cpu)"
            | Dtype _ -> "compute dtype: f32 (default), bf16, f16 (the calibration's)"
            | Calibration _ -> "calibration file made for this model (cleansight calibrate)"
            | Data _ -> "the inputs to answer (dataset JSONL; \"answers\" may be absent)"
            | Out _ -> "folder for defended.csv (re-running resumes), report.html and frames/"
            | Limit _ -> "at most the first N inputs"
            | Max_New_Tokens _ -> "greedy token budget (default 32)"
            | No_Progress -> "no progress output"

type TableArgs =
    | [<MainCommand; Mandatory>] Folders of dir: string list
    | Names of csv: string
    | Out of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Folders _ -> "evaluate folders (each with its metrics.json; a demo's are DIR/eval/NAME), one row each, in this order"
            | Names _ -> "the rows' names, comma-separated, one per folder (default: each folder's name)"
            | Out _ -> "also write table.md, table.csv and report.html (chart 5 of all the folders) here"

type DemoArgs =
    | [<Mandatory>] Out of dir: string
    | Test of n: int
    | Calibration of n: int
    | Layers of csv: string
    | Pooled_Reference
    | Conditioning of kind: string
    | Feature of kind: string
    | Whitening of kind: string
    | Threshold_Rule of rule: string
    | World of dir: string
    | No_Progress
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Out _ -> "folder for report.html, frames/, manifest.json"
            | World _ -> "a tiny world of your own: DIR/base and DIR/adapters/NAME.safetensors, as train-base and attack write them (default: the committed world/)"
            | Test _ -> "test samples per set (default 100)"
            | Calibration _ -> "clean calibration samples per attack, every third a caption request (default 300: 200 VQA questions, 100 caption requests)"
            | Layers _ -> "CleanSight's detection layers, 0-indexed, e.g. 0; or fusion: from where each model's clean inputs begin to read the image (default: 3 layers at the paper's relative depth)"
            | Pooled_Reference -> "calibrate one clean reference for every task (default: one per task)"
            | Conditioning _ -> "what each clean reference is conditioned on: none (default, the paper) or prompt-length: each feature's mean and spread as log-linear functions of the prompt text after the image"
            | Feature _ -> "CleanSight's feature: ratio (default, the paper's), log-ratio or visual-share"
            | Whitening _ -> "CleanSight's whitening: diagonal (default, the paper's code) or full (Ledoit-Wolf shrinkage)"
            | Threshold_Rule _ -> "how γ is read off the clean distances: quantile (default, the paper's) or conformal (holds the 1 % FPR; needs 99 calibration samples per task)"
            | No_Progress -> "no progress output"

type BenchArgs =
    | [<Mandatory>] Out of file: string
    | Quick
    | Threads of n: int
    | Python of path: string
    | Only of csv: string
    | No_Progress
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Out _ -> "JSON file for the ratios, the numbers behind them and the machine"
            | Quick -> "small sizes and few repeats (about a minute): a smoke run, not a measurement"
            | Threads _ -> "torch threads, ours and PyTorch's (default: logical cores)"
            | Python _ -> "python3 with torch for the PyTorch side (default: /usr/bin/python3, then python3)"
            | Only _ -> "stages to run: world, prefill, load (comma-separated; default all)"
            | No_Progress -> "no progress output"

type BenchLoadProbeArgs =
    | [<Mandatory>] Model of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "sharded F16 checkpoint folder written by bench"

[<RequireQualifiedAccess>]
type Command =
    | [<CliPrefix(CliPrefix.None)>] Generate of ParseResults<GenerateArgs>
    | [<CliPrefix(CliPrefix.None)>] World of ParseResults<WorldArgs>
    | [<CliPrefix(CliPrefix.None); CustomCommandLine("train-base")>] Train_Base of ParseResults<TrainBaseArgs>
    | [<CliPrefix(CliPrefix.None)>] Attack of ParseResults<AttackArgs>
    | [<CliPrefix(CliPrefix.None)>] Calibrate of ParseResults<CalibrateArgs>
    | [<CliPrefix(CliPrefix.None)>] Evaluate of ParseResults<EvaluateArgs>
    | [<CliPrefix(CliPrefix.None)>] Defend of ParseResults<DefendArgs>
    | [<CliPrefix(CliPrefix.None)>] Table of ParseResults<TableArgs>
    | [<CliPrefix(CliPrefix.None)>] Demo of ParseResults<DemoArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<Hidden; CliPrefix(CliPrefix.None); CustomCommandLine("bench-load-probe")>] Bench_Load_Probe of ParseResults<BenchLoadProbeArgs>
    interface IArgParserTemplate with
        member c.Usage =
            match c with
            | Generate _ -> "answer a question about an image with a llava-hf checkpoint"
            | World _ -> "write the embedded tiny world's held-out data and manifest"
            | Train_Base _ -> "train the tiny world's clean base model (about 30 min on 2 cores)"
            | Attack _ -> "backdoor a model's projector with one of the six attacks"
            | Calibrate _ -> "fit CleanSight's clean reference and threshold on clean samples"
            | Evaluate _ -> "measure attacks × defenses: ASR, utility, detection, cost"
            | Defend _ -> "answer your own inputs under CleanSight: flag, purify, answer (defended.csv)"
            | Table _ -> "the attacks × defenses table (the paper's Table 1) of several evaluate folders, as Markdown"
            | Demo _ -> "the whole story on the embedded tiny world, as report.html"
            | Bench _ -> "measure the defense's cost, prefill speed against PyTorch, load memory: ratios as JSON"
            | Bench_Load_Probe _ -> "(bench's child process) load a checkpoint, print peak RSS as JSON"

let parser = ArgumentParser.Create<Command>(programName = "cleansight")
