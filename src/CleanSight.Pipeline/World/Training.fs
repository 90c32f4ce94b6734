/// Training on the tiny world with TorchSharp: AdamW with warm-up + cosine decay, batches of
/// tokenised examples, the LLaVA language-modelling loss on answer tokens only.
module CleanSight.Pipeline.World.Training

open System
open TorchSharp
open CleanSight.Core.Model

/// Optimiser and schedule (immutable; seeds and step counts are parameters, never globals).
type Schedule =
    { Steps: int
      PeakLr: float
      WarmupSteps: int
      WeightDecay: float
      BatchSize: int
      Seed: int64 }

/// Linear warm-up to the peak, then cosine decay to zero.
let learningRate (s: Schedule) (step: int) =
    if step < s.WarmupSteps then s.PeakLr * float (step + 1) / float s.WarmupSteps
    else
        let progress = float (step - s.WarmupSteps) / float (max 1 (s.Steps - s.WarmupSteps))
        0.5 * s.PeakLr * (1.0 + Math.Cos(Math.PI * min 1.0 progress))

/// One training sequence: ids with the image tokens expanded (if any), labels = −100 where no loss.
type Example =
    { Pixels: float32[] option // [3, H, W] CHW
      Ids: int64[]
      Labels: int64[] }

let ignoreIndex = -100L

/// A prompt followed by its answer (and EOS): the loss covers only the answer and EOS, as in LLaVA.
let supervised (pixels: float32[] option) (promptIds: int[]) (answerIds: int[]) (eos: int) =
    let answer = Array.append answerIds [| eos |] |> Array.map int64
    { Pixels = pixels
      Ids = Array.append (promptIds |> Array.map int64) answer
      Labels = Array.append (Array.create promptIds.Length ignoreIndex) answer }

/// Plain text (language-model pre-training): the loss covers every token after BOS.
let text (ids: int[]) =
    let ids = ids |> Array.map int64
    { Pixels = None; Ids = ids; Labels = Array.append [| ignoreIndex |] ids.[1..] }

/// A batch as tensors: right-padded ids [B, T], labels [B, T] (−100 on padding), pixels [B, 3, H, W].
/// Right padding is harmless under causal attention: real tokens never see the pads.
type Batch =
    { Ids: torch.Tensor
      Labels: torch.Tensor
      Pixels: torch.Tensor option }

let collate (padId: int) (imageSize: int) (device: torch.Device) (examples: Example[]) =
    let t = examples |> Array.map (fun e -> e.Ids.Length) |> Array.max
    let pad (xs: int64[]) (v: int64) = Array.append xs (Array.create (t - xs.Length) v)
    let ids = examples |> Array.collect (fun e -> pad e.Ids (int64 padId))
    let labels = examples |> Array.collect (fun e -> pad e.Labels ignoreIndex)
    let b = int64 examples.Length
    let pixels =
        if examples |> Array.forall (fun e -> e.Pixels.IsSome) then
            let flat = examples |> Array.collect (fun e -> e.Pixels.Value)
            Some(torch.tensor(flat, device = device).reshape(b, 3L, int64 imageSize, int64 imageSize))
        elif examples |> Array.exists (fun e -> e.Pixels.IsSome) then
            invalidArg "examples" "a batch mixes examples with and without an image"
        else None
    { Ids = torch.tensor(ids, device = device).reshape(b, int64 t)
      Labels = torch.tensor(labels, device = device).reshape(b, int64 t)
      Pixels = pixels }

/// Input embeddings of a batch: image features written at the image tokens, or text only.
let embed (model: LlavaForConditionalGeneration) (batch: Batch) =
    match batch.Pixels with
    | Some px -> model.Embed(batch.Ids, model.ImageFeatures px)
    | None -> model.LanguageModel.Embed batch.Ids

/// Next-token cross-entropy of logits [B, T, V] against labels [B, T] (shifted by one).
let nextTokenLoss (logits: torch.Tensor) (labels: torch.Tensor) =
    let v = logits.shape.[2]
    let t = logits.shape.[1]
    let predicted = logits.narrow(1, 0L, t - 1L).reshape(-1L, v)
    let target = labels.narrow(1, 1L, t - 1L).reshape(-1L)
    torch.nn.functional.cross_entropy(predicted, target, ignore_index = ignoreIndex)

/// The LLaVA loss of a batch.
let lmLoss (model: LlavaForConditionalGeneration) (batch: Batch) =
    nextTokenLoss (model.LanguageModel.Forward(embed model batch)) batch.Labels

/// Marks exactly the parameters whose names pass `trainable` as trainable; returns them.
let trainableParameters (model: torch.nn.Module) (trainable: string -> bool) =
    [ for struct (name, p) in model.named_parameters () do
          p.requires_grad <- trainable name
          if trainable name then yield p ]

/// Runs the optimisation: `batchAt step` gives the step's batch, `lossOf` its loss tensor.
/// Returns the loss of every step. `report step loss lr` is called after each step.
let train (schedule: Schedule) (parameters: Modules.Parameter list) (batchAt: int -> 'batch)
          (lossOf: 'batch -> torch.Tensor) (report: int -> float -> float -> unit) =
    let optimizer = torch.optim.AdamW(parameters, lr = schedule.PeakLr, weight_decay = schedule.WeightDecay)
    [| for step in 0 .. schedule.Steps - 1 do
           use scope = torch.NewDisposeScope()
           let lr = learningRate schedule step
           for g in optimizer.ParamGroups do g.LearningRate <- lr
           optimizer.zero_grad ()
           let loss = lossOf (batchAt step)
           loss.backward ()
           torch.nn.utils.clip_grad_norm_(parameters |> Seq.cast, 1.0) |> ignore
           optimizer.step () |> ignore
           let value = loss.item<float32> () |> float
           report step value lr
           yield value |]
