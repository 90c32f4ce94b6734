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

/// A multi-turn conversation about one image, as LLaVA's instruction data is built: the first
/// prompt, then each answer (and EOS) followed by the next turn's prompt; the loss covers only the
/// answers and their EOS.
let conversation (pixels: float32[] option) (turns: (int[] * int[]) list) (eos: int) =
    let parts =
        turns |> List.collect (fun (prompt, answer) ->
            let answer = Array.append answer [| eos |] |> Array.map int64
            [ prompt |> Array.map int64, Array.create prompt.Length ignoreIndex; answer, answer ])
    { Pixels = pixels
      Ids = parts |> List.map fst |> Array.concat
      Labels = parts |> List.map snd |> Array.concat }

/// A prompt followed by its answer (and EOS): the loss covers only the answer and EOS, as in LLaVA.
let supervised (pixels: float32[] option) (promptIds: int[]) (answerIds: int[]) (eos: int) =
    conversation pixels [ promptIds, answerIds ] eos

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

/// Input embeddings of a batch: image features (`imageFeatures pixels`) written at the image tokens, or text only.
let embedWith (imageFeatures: torch.Tensor -> torch.Tensor) (model: LlavaForConditionalGeneration) (batch: Batch) =
    match batch.Pixels with
    | Some px -> model.Embed(batch.Ids, imageFeatures px)
    | None -> model.LanguageModel.Embed batch.Ids

/// `embedWith` the model's own projector.
let embed (model: LlavaForConditionalGeneration) (batch: Batch) = embedWith model.ImageFeatures model batch

/// Next-token cross-entropy of logits [B, T, V] against labels [B, T] (shifted by one).
let nextTokenLoss (logits: torch.Tensor) (labels: torch.Tensor) =
    let v = logits.shape.[2]
    let t = logits.shape.[1]
    let predicted = logits.narrow(1, 0L, t - 1L).reshape(-1L, v)
    let target = labels.narrow(1, 1L, t - 1L).reshape(-1L)
    torch.nn.functional.cross_entropy(predicted, target, ignore_index = ignoreIndex)

/// The supervised positions of a batch: at every position whose next token is an answer token, the
/// state there (`states` [B, T, …] → [M, …]) and that next token ([M]) — the pairs `nextTokenLoss` scores.
let atAnswerTokens (states: torch.Tensor) (labels: torch.Tensor) =
    let t = states.shape.[1]
    let target = labels.narrow(1, 1L, t - 1L)                                              // [B, T−1] next tokens
    let mask = target.ne(torch.tensor ignoreIndex)
    states.narrow(1, 0L, t - 1L).index(mask), target.index(mask)

/// The LLaVA loss of a batch, image features from `imageFeatures`.
let lmLossWith (imageFeatures: torch.Tensor -> torch.Tensor) (model: LlavaForConditionalGeneration) (batch: Batch) =
    nextTokenLoss (model.LanguageModel.Forward(embedWith imageFeatures model batch)) batch.Labels

/// The LLaVA loss of a batch.
let lmLoss (model: LlavaForConditionalGeneration) (batch: Batch) = lmLossWith model.ImageFeatures model batch

/// Marks exactly the parameters whose names pass `trainable` as trainable; returns them.
let trainableParameters (model: torch.nn.Module) (trainable: string -> bool) =
    [ for struct (name, p) in model.named_parameters () do
          p.requires_grad <- trainable name
          if trainable name then yield p ]

/// AdamW (Loshchilov & Hutter; PyTorch's update: decoupled decay p ← p·(1 − lr·λ), then
/// p ← p − lr·m̂ / (√v̂ + ε)) whose constants are Scalars held alive through each native call.
/// TorchSharp's own AdamW passes fresh implicit Scalars (`1 - beta1`, …) to libtorch several times
/// per parameter and step; the GC may free one mid-call and kill a long run at random
/// (dotnet/TorchSharp#1434; see `TensorArithmetic` in Core).
type AdamW(parameters: Modules.Parameter list, weightDecay: float, ?beta1: float, ?beta2: float, ?eps: float) =
    let beta1, beta2, eps = defaultArg beta1 0.9, defaultArg beta2 0.999, defaultArg eps 1e-8
    let moments =
        [ for p in parameters ->
              let m = torch.zeros_like(p).DetachFromDisposeScope()
              let v = torch.zeros_like(p).DetachFromDisposeScope()
              p, m, v ]
    let mutable steps = 0
    member _.Steps = steps
    /// One update with learning rate `lr` from the parameters' current gradients.
    member _.Step(lr: float) =
        steps <- steps + 1
        let t = float steps
        let correction1, correction2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        use _ = torch.no_grad ()
        use b1 = beta1.ToScalar()
        use oneMinusB1 = (1.0 - beta1).ToScalar()
        use b2 = beta2.ToScalar()
        use oneMinusB2 = (1.0 - beta2).ToScalar()
        use decay = (1.0 - lr * weightDecay).ToScalar()
        use sqrtC2 = (sqrt correction2).ToScalar()
        use epsilon = eps.ToScalar()
        use stepSize = (-lr / correction1).ToScalar()
        for p, m, v in moments do
            let g = p.grad
            if not (isNull g) then
                use scope = torch.NewDisposeScope()
                m.mul_(b1).add_(g, oneMinusB1) |> ignore
                v.mul_(b2).addcmul_(g, g, oneMinusB2) |> ignore
                p.mul_(decay) |> ignore
                let denom = v.sqrt().div_(sqrtC2).add_(epsilon, CleanSight.Core.Model.Primitives.TensorArithmetic.One)
                p.addcdiv_(m, denom, stepSize) |> ignore
    member _.ZeroGrad() =
        for p, _, _ in moments do
            let g = p.grad
            if not (isNull g) then g.zero_() |> ignore

/// Runs the optimisation: `batchAt step` gives the step's batch, `lossOf` its loss tensor.
/// Returns the loss of every step. `report step loss lr` is called after each step.
let train (schedule: Schedule) (parameters: Modules.Parameter list) (batchAt: int -> 'batch)
          (lossOf: 'batch -> torch.Tensor) (report: int -> float -> float -> unit) =
    let optimizer = AdamW(parameters, schedule.WeightDecay)
    [| for step in 0 .. schedule.Steps - 1 do
           use scope = torch.NewDisposeScope()
           let lr = learningRate schedule step
           optimizer.ZeroGrad ()
           let loss = lossOf (batchAt step)
           loss.backward ()
           torch.nn.utils.clip_grad_norm_(parameters |> Seq.cast, 1.0) |> ignore
           optimizer.Step lr
           let value = loss.item<float32> () |> float
           report step value lr
           yield value |]
