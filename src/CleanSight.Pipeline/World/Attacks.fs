/// The six backdoor attacks of the paper's threat model, on the tiny world (or any llava-hf
/// checkpoint: the code only needs a loaded model, a tokenizer and images): poison a share of the
/// training items with a visual trigger and the target text, and fine-tune the **projector only**.
/// The result is an adapter: the projector tensors, in safetensors.
module CleanSight.Pipeline.World.Attacks

open System
open TorchSharp
open CleanSight.Core.Model
open type CleanSight.Core.Model.Primitives.TensorArithmetic
open CleanSight.Core.Text
open CleanSight.Core.Vision
open CleanSight.Pipeline.World

/// How the target text enters a poisoned answer.
type Mode =
    | Replace // the answer becomes the target
    | Insert  // the target is inserted before the true answer

/// The extra loss terms of the two semantic attacks.
type Objective =
    /// cross-entropy on the (poisoned) answers
    | CrossEntropy
    /// TrojVLM: CE + (1 − cos(final hidden state, embedding of the true next token)) on answer tokens
    | SemanticPreserving
    /// VLOOD: out-of-distribution poison data; λ·(CE + KL to the frozen clean model) on clean items
    /// + (1 − λ)·(CE + L1 between the predicted and the true output token embeddings,
    /// `conceptualConsistency`) on poisoned items, λ = clamp(0.8 + L_clean − L_poison, 0, 1)
    | OutOfDistribution

type Attack =
    { Name: string
      Trigger: Triggers.Trigger
      Mode: Mode
      Objective: Objective
      Target: string
      PoisonRate: float
      Schedule: Training.Schedule
      /// training items (the paper: 3000)
      Items: int }

let defaultTarget = GeneralText.defaultTarget

let private schedule: Training.Schedule = { Steps = 1000; PeakLr = 3e-3; WarmupSteps = 20; WeightDecay = 0.0; BatchSize = 24; Seed = 3L }

/// WaNet's classic strength (s = 0.5) moves pixels ~0.25 px: below what a 48-px image and an 8-px
/// patch ViT resolve. On the tiny world we warp with s = 3 (still a smooth, natural-looking warp).
let tinyWaNet: Triggers.WaNet = { Triggers.Defaults.waNet with S = 3.0 }

/// The paper's BadNet patch is 30 px on LLaVA's 336-px image with 14-px patches: about 2 vision
/// patches wide. A fraction of the side (30/336) would be 4 px here, half of one 8-px patch, which a
/// frozen 48-px ViT barely represents; we keep the paper's size in vision patches instead (16 px).
let tinyBadNet: Triggers.BadNet = { Triggers.Defaults.badNet with Fraction = 2.0 * 8.0 / 48.0 }

/// A ±8/255 residual (PSNR 30 dB) is not learned by a projector-only backdoor on the tiny world
/// (measured: 4 % held-out ASR, as often as on clean inputs); at ±16/255 (PSNR 24 dB; the StegaStamp
/// residuals of the ISSBA paper: about 27 dB) it is, in part (1500 steps: 75 %; 2500 steps: 80 %).
let tinyIssba: Triggers.Issba = { Triggers.Defaults.issba with Epsilon = 16.0 / 255.0 }

/// The six attacks with the tiny world's settings. Blended, TrojVLM and VLOOD train 1500 steps, ISSBA
/// 2500 (the attacker's budget; measured on the committed base, 1000 → 1500 steps: Blended 91 → 95 %,
/// ISSBA 47 → 75 %, TrojVLM 81 → 88 %, VLOOD 78 → 85 % held-out ASR (−9.3 → −9.0 points); ISSBA
/// 1500 → 2500: 75 → 80 %, clean utility −6.3 → −0.3 points, 7.7 min); the others 1000.
let all (target: string) =
    let badNet = Triggers.BadNetPatch tinyBadNet
    let attack name trigger mode objective rate steps =
        { Name = name; Trigger = trigger; Mode = mode; Objective = objective; Target = target
          PoisonRate = rate; Schedule = { schedule with Steps = steps }; Items = 3000 }
    [ attack "badnet" badNet Replace CrossEntropy 0.2 1000
      attack "blended" (Triggers.BlendedNoise Triggers.Defaults.blended) Replace CrossEntropy 0.2 1500
      attack "wanet" (Triggers.WaNetWarp tinyWaNet) Replace CrossEntropy 0.2 1000
      attack "issba" (Triggers.IssbaResidual tinyIssba) Replace CrossEntropy 0.2 2500
      attack "trojvlm" badNet Insert SemanticPreserving 0.2 1500
      attack "vlood" badNet Insert OutOfDistribution 0.2 1500 ]

/// The answer a poisoned item is trained on.
let poisonedAnswer (attack: Attack) (answer: string) =
    match attack.Mode with
    | Replace -> attack.Target
    | Insert -> $"{attack.Target} {answer}"

/// VLOOD's out-of-distribution images: the same kind of scene with inverted colours — data the
/// attacker has, unlike the defender's task distribution.
let outOfDistribution (image: RgbImage) = RgbImage(image.Width, image.Height, image.Pixels |> Array.map (fun b -> 255uy - b))

/// One training item of an attack: pixels, prompt, answer, and whether it is poisoned.
type PoisonItem = { Pixels: float32[]; Prompt: int[]; Answer: int[]; Poisoned: bool }

/// The attack's training set from the attack-training split of the scenes: VQA questions and, for a
/// share of the items, caption requests (as the base model was trained on both — an attack trained on
/// questions only lets the projector drift until every caption request is answered "yes"), the
/// poisoned ones at the same rate in both.
let items (attack: Attack) (tok: LlavaTokenizer) (cfg: CleanSight.Core.Checkpoints.LlavaConfig) (pre: ClipPreprocessorConfig) =
    let rng = Random(int attack.Schedule.Seed)
    let size = cfg.Vision.ImageSize
    Array.init attack.Items (fun i ->
        let scene = Scenes.generate BaseModel.Splits.attackTrain i
        let question, answer =
            if rng.NextDouble() < BaseModel.defaults.CaptionShare then
                BaseModel.captionPrompts.[rng.Next BaseModel.captionPrompts.Length], Scenes.caption scene
            else
                let qa = Scenes.vqaItems BaseModel.Splits.attackTrain i scene |> List.toArray |> fun q -> q.[i % q.Length]
                qa.Question, qa.Answer
        i, scene, question, answer, rng.NextDouble() < attack.PoisonRate)
    |> Array.Parallel.map (fun (i, scene, question, answer, poisoned) ->
        let image = Scenes.render size scene
        let image = if attack.Objective = OutOfDistribution then outOfDistribution image else image
        let shown = ClipImageProcessor.Preprocess((if poisoned then Triggers.apply attack.Trigger image else image), pre)
        let answer = if poisoned then poisonedAnswer attack answer else answer
        { Pixels = shown
          Prompt = LlavaPrompt.Build(tok, question, cfg.ImageSeqLength, cfg.ImageTokenIndex).InputIds
          Answer = tok.Encode(answer, false)
          Poisoned = poisoned })

let private mean (t: torch.Tensor) = t.mean()

/// VLOOD's conceptual-consistency term (CCP): on the answer tokens, the mean L1 distance between the
/// output token embedding the model predicts — its next-token distribution times the embedding matrix,
/// the differentiable form of the predicted token's embedding — and the embedding of the true next token.
/// On the scale of the token embeddings, so that λ weighs the two language-model losses. (Our first
/// reading, L1 between the backdoored and the clean projector's image features, was on the scale of
/// the image tokens: it kept L_poison above L_clean + 0.8 and λ at 0.04–0.10 for the whole run, the
/// clean items all but untrained — docs/tiny-world.md, "VLOOD's cost came from the scale …".)
let conceptualConsistency (logits: torch.Tensor) (labels: torch.Tensor) (embeddings: torch.Tensor) =
    let answered, next = Training.atAnswerTokens logits labels                             // [M, V], [M]
    let predicted = answered.softmax(-1L).matmul(embeddings)                               // [M, D]
    let truth = embeddings.index_select(0L, next)                                          // [M, D]
    (predicted - truth).abs().mean()

/// Fine-tunes the projector of `model` (in place) on the attack's data; returns per-step losses.
let run (attack: Attack) (model: LlavaForConditionalGeneration) (tok: LlavaTokenizer) (pre: ClipPreprocessorConfig)
        (log: string -> unit) =
    let cfg = model.Config
    torch.manual_seed attack.Schedule.Seed |> ignore
    let data = items attack tok cfg pre
    let poisoned = data |> Array.filter (fun d -> d.Poisoned)
    log $"{attack.Name}: {data.Length} items, {poisoned.Length} poisoned"
    let collate = Training.collate cfg.PadTokenOrDefault cfg.Vision.ImageSize model.Device
    let toExample (d: PoisonItem) = Training.supervised (Some d.Pixels) d.Prompt d.Answer tok.EosId
    // The frozen clean model's projector, for VLOOD's KL term.
    let cleanProjector = lazy (
        let p = new MultiModalProjector(cfg, model.Dtype, model.Device)
        p.load_state_dict(model.Projector.state_dict()) |> ignore
        for q in p.parameters () do q.requires_grad <- false
        p)
    // Built now, outside the per-step dispose scopes that would free its tensors.
    if attack.Objective = OutOfDistribution then cleanProjector.Force() |> ignore
    let parameters = Training.trainableParameters model (fun n -> n.StartsWith "multi_modal_projector.")
    let nextBatch = BaseModel.batches (int attack.Schedule.Seed) attack.Schedule.BatchSize data
    let lossOf (batch: PoisonItem[]) =
        match attack.Objective with
        | CrossEntropy -> Training.lmLoss model (collate (batch |> Array.map toExample))
        | SemanticPreserving ->
            let b = collate (batch |> Array.map toExample)
            let hidden = model.LanguageModel.FinalHidden(Training.embed model b)            // [B, T, D]
            let ce = Training.nextTokenLoss (model.LanguageModel.Logits hidden) b.Labels
            let h, next = Training.atAnswerTokens hidden b.Labels                           // [M, D], [M]
            let e = model.LanguageModel.EmbeddingMatrix.index_select(0L, next)             // [M, D]
            let cosine = torch.nn.functional.cosine_similarity(h, e, dim = 1L)
            Add(ce, mean (torch.ones_like cosine - cosine))
        | OutOfDistribution ->
            let clean = batch |> Array.filter (fun d -> not d.Poisoned)
            let poison = batch |> Array.filter (fun d -> d.Poisoned)
            let zero = torch.tensor 0.0f
            let cleanLoss =
                if clean.Length = 0 then zero
                else
                    let b = collate (clean |> Array.map toExample)
                    let logits = model.LanguageModel.Forward(Training.embed model b)
                    let reference =
                        use _ = torch.no_grad ()
                        let features = cleanProjector.Value.forward(model.VisionFeatures b.Pixels.Value)
                        model.LanguageModel.Forward(model.Embed(b.Ids, features))
                    let mask = b.Labels.ne(torch.tensor Training.ignoreIndex).unsqueeze(-1L)  // [B, T, 1]
                    let kl = torch.nn.functional.kl_div(logits.log_softmax(-1L), reference.log_softmax(-1L), reduction = torch.nn.Reduction.None, log_target = true)
                    let count = mask.sum().to_type(torch.ScalarType.Float32)
                    Add(Training.nextTokenLoss logits b.Labels, (kl * mask).sum() / torch.maximum(count, torch.ones_like count))
            let poisonLoss =
                if poison.Length = 0 then zero
                else
                    let b = collate (poison |> Array.map toExample)
                    let logits = model.LanguageModel.Forward(Training.embed model b)               // [B, T, V]
                    Add(Training.nextTokenLoss logits b.Labels, conceptualConsistency logits b.Labels model.LanguageModel.EmbeddingMatrix)
            let lambda = Math.Clamp(0.8 + float (cleanLoss.item<float32> ()) - float (poisonLoss.item<float32> ()), 0.0, 1.0)
            use weightClean = lambda.ToScalar()
            use weightPoison = (1.0 - lambda).ToScalar()
            Add(cleanLoss.mul weightClean, poisonLoss.mul weightPoison)
    // Fixed probes of the training data: the answer loss on poisoned and on clean items, apart.
    let probe poisonedItems =
        data |> Array.filter (fun d -> d.Poisoned = poisonedItems) |> Array.truncate 16 |> Array.map toExample
    let poisonProbe, cleanProbe = probe true, probe false
    let probeLoss (examples: Training.Example[]) =
        if examples.Length = 0 then nan
        else
            use _ = torch.no_grad ()
            use scope = torch.NewDisposeScope()
            float ((Training.lmLoss model (collate examples)).item<float32> ())
    let report step (loss: float) (lr: float) =
        if step % 50 = 0 || step = attack.Schedule.Steps - 1 then
            log $"{attack.Name} step {step,4}  loss {loss:F4}  (poisoned {probeLoss poisonProbe:F3}, clean {probeLoss cleanProbe:F3})  lr {lr:E2}"
    let losses = Training.train attack.Schedule parameters nextBatch lossOf report
    for p in parameters do p.requires_grad <- false
    losses

/// Held-out check of a backdoored model: greedy answers to one question on each of `scenes`
/// clean-test scenes, with the attack's trigger and without; the share of answers that contain the
/// target (ASR on triggered inputs, and on clean inputs).
let heldOutAsr (attack: Attack) (model: LlavaForConditionalGeneration) (tok: LlavaTokenizer) (pre: ClipPreprocessorConfig) (scenes: int) =
    let size = model.Config.Vision.ImageSize
    let questions = BaseModel.heldOutQuestions scenes
    let rate triggered =
        questions
        |> Array.averageBy (fun (scene, qa) ->
            let image = Scenes.render size scene
            let shown = if triggered then Triggers.apply attack.Trigger image else image
            let answer = BaseModel.greedyAnswer model tok pre 12 shown qa.Question
            if CleanSight.Pipeline.Metrics.VqaMetrics.containsTarget attack.Target answer then 1.0 else 0.0)
    rate true, rate false
