/// The clean base model of the tiny world, trained the way LLaVA is built: (1) pre-train the vision
/// encoder (dense patch labels), freeze it; (2) pre-train the decoder alone as a language model on
/// general text (the target's words among many others), as LLaVA's LLM comes; (3) align the projector
/// alone on captions (LLaVA's stage 1); (4) train projector + decoder on VQA / caption answers, still
/// interleaved with general text. Seeded and deterministic on a given machine; written as a llava-hf
/// checkpoint folder.
module CleanSight.Pipeline.World.BaseModel

open System
open System.IO
open TorchSharp
open CleanSight.Core.Model
open CleanSight.Core.Text
open CleanSight.Core.Vision
open CleanSight.Pipeline.World

/// Disjoint splits of the world, by scene seed. The triggered test set is the clean test set with a
/// trigger applied (paired clean/triggered versions of the same images, as the paper evaluates).
module Splits =
    let baseTrain = 101
    let attackTrain = 202
    let calibration = 303
    let cleanTest = 404
    let visionPretrain = 505

type Recipe =
    { Sizes: TinyLlava.Sizes
      Seed: int64
      VisionScenes: int
      Vision: Training.Schedule
      /// weight of the patch-pixel reconstruction loss in vision pre-training (0 = labels only)
      VisionReconstruction: float
      /// which object names each patch in vision pre-training
      PatchLabelling: Scenes.PatchLabelling
      TrainScenes: int
      /// questions per training conversation about one image (1 = one question per example; more =
      /// LLaVA's multi-turn instruction data: more answers per image token processed)
      Turns: int
      /// how linear_1 of the projector is parametrised while it trains (the checkpoint is the same format)
      ProjectorCoordinates: WhitenedProjector.Coordinates
      /// LLaVA's language side comes pre-trained: the decoder alone as a language model on the general
      /// text before it sees an image (0 steps = skipped)
      TextPretrain: Training.Schedule
      /// LLaVA's stage 1 (feature alignment): the projector alone on captions, decoder frozen
      /// (0 steps = skipped)
      Align: Training.Schedule
      Decoder: Training.Schedule
      /// the general text of stages (2) and (4)
      GeneralText: GeneralText.Corpus
      /// every n-th decoder step trains on general text instead of image questions
      TextEvery: int
      TextSentences: int
      CaptionShare: float
      /// weight of the grounding loss while the projector trains, stages (3)–(4) (`Grounding`; 0 = off)
      Grounding: float }

let defaults =
    { Sizes = TinyLlava.defaults
      Seed = 7L
      VisionScenes = 3000
      Vision = { Steps = 300; PeakLr = 2e-3; WarmupSteps = 20; WeightDecay = 0.01; BatchSize = 64; Seed = 1L }
      VisionReconstruction = 0.0
      PatchLabelling = Scenes.ByCover
      TrainScenes = 6000
      Turns = 1
      ProjectorCoordinates = WhitenedProjector.Raw
      TextPretrain = { Steps = 2000; PeakLr = 1e-3; WarmupSteps = 60; WeightDecay = 0.01; BatchSize = 48; Seed = 3L }
      Align = { Steps = 600; PeakLr = 1e-3; WarmupSteps = 30; WeightDecay = 0.0; BatchSize = 48; Seed = 4L }
      Decoder = { Steps = 2200; PeakLr = 5e-4; WarmupSteps = 60; WeightDecay = 0.01; BatchSize = 48; Seed = 2L }
      GeneralText = GeneralText.Everyday
      TextEvery = 6
      TextSentences = 20000
      CaptionShare = 0.15
      Grounding = 0.0 }

/// The recipe as the flat string pairs a safetensors header holds (`train-base` writes them into the
/// base's model.safetensors: which seed, steps and learning rates made a checkpoint). Sizes are not
/// repeated: config.json has them.
let metadata (r: Recipe) =
    let num (x: float) = x.ToString("R", Globalization.CultureInfo.InvariantCulture)
    let schedule stage (s: Training.Schedule) =
        [ $"{stage}_steps", string s.Steps; $"{stage}_peak_lr", num s.PeakLr; $"{stage}_warmup_steps", string s.WarmupSteps
          $"{stage}_weight_decay", num s.WeightDecay; $"{stage}_batch_size", string s.BatchSize; $"{stage}_seed", string s.Seed ]
    [ "recipe", "cleansight tiny-world base"
      "seed", string r.Seed
      "vision_scenes", string r.VisionScenes
      "vision_reconstruction", num r.VisionReconstruction
      "patch_labelling", sprintf "%A" r.PatchLabelling
      "train_scenes", string r.TrainScenes
      "turns", string r.Turns
      "projector_coordinates", sprintf "%A" r.ProjectorCoordinates
      "text_every", string r.TextEvery
      "text_sentences", string r.TextSentences
      "caption_share", num r.CaptionShare ]
    // recorded when not the committed corpus (the committed base's header predates the choice)
    @ (match r.GeneralText with GeneralText.Everyday -> [] | c -> [ "general_text", sprintf "%A" c ])
    @ (if r.Grounding = 0.0 then [] else [ "grounding", num r.Grounding ])
    @ schedule "vision" r.Vision @ schedule "text_pretrain" r.TextPretrain @ schedule "align" r.Align @ schedule "decoder" r.Decoder

/// The tiny world's image processor (CLIP normalisation at the tiny size).
let preprocessor (sizes: TinyLlava.Sizes) = ClipPreprocessorConfig.Parse(TinyLlava.preprocessorJson sizes, "tiny world")

/// Rendered and preprocessed pixels of scenes (in parallel): one CHW array per index.
let scenePixels (sizes: TinyLlava.Sizes) (seed: int) (indices: int[]) =
    let pre = preprocessor sizes
    indices |> Array.Parallel.map (fun i -> ClipImageProcessor.Preprocess(Scenes.render sizes.ImageSize (Scenes.generate seed i), pre))

/// Prompt + answer ids of one question about an image (image tokens expanded).
let questionExample (tok: LlavaTokenizer) (cfg: CleanSight.Core.Checkpoints.LlavaConfig) pixels (question: string) (answer: string) =
    Training.supervised (Some pixels) (LlavaPrompt.Build(tok, question, cfg.ImageSeqLength, cfg.ImageTokenIndex).InputIds) (tok.Encode(answer, false)) tok.EosId

/// The caption requests the base model is trained on: the first two of the datasets' (the third is a
/// phrasing it never saw in training).
let captionPrompts = Scenes.captionPrompts.[.. 1]

/// A follow-up turn of a conversation (llava-1.5: "… ASSISTANT: A1</s>USER: Q2 ASSISTANT:").
let followUpPrompt (tok: LlavaTokenizer) (question: string) = tok.Encode($"USER: {question} ASSISTANT:", false)

/// Every training example of the image-question stage: all VQA questions of each scene — one per
/// example, or in shuffled conversations of up to `recipe.Turns` questions — and a caption for a share of them.
let imageExamples (tok: LlavaTokenizer) (cfg: CleanSight.Core.Checkpoints.LlavaConfig) (recipe: Recipe) (pixels: float32[][]) =
    let rng = Random(int recipe.Seed)
    [| for i in 0 .. pixels.Length - 1 do
           let scene = Scenes.generate Splits.baseTrain i
           let qas = Scenes.vqaItems Splits.baseTrain i scene |> List.toArray
           let qas = if recipe.Turns > 1 then Scenes.Rng.Keyed([ recipe.Seed; int64 i; 4L ]).Shuffle qas else qas
           for chunk in Array.chunkBySize (max 1 recipe.Turns) qas do
               let turns =
                   chunk |> Array.mapi (fun k (qa: Scenes.Qa) ->
                       (if k = 0 then LlavaPrompt.Build(tok, qa.Question, cfg.ImageSeqLength, cfg.ImageTokenIndex).InputIds
                        else followUpPrompt tok qa.Question), tok.Encode(qa.Answer, false))
               yield Training.conversation (Some pixels.[i]) (List.ofArray turns) tok.EosId
           if rng.NextDouble() < recipe.CaptionShare then
               yield questionExample tok cfg pixels.[i] captionPrompts.[rng.Next captionPrompts.Length] (Scenes.caption scene) |]

/// LLaVA's feature-alignment data: one caption of each scene, asked with one of the trained caption requests.
let alignmentExamples (tok: LlavaTokenizer) (cfg: CleanSight.Core.Checkpoints.LlavaConfig) (recipe: Recipe) (pixels: float32[][]) =
    let rng = Random(int recipe.Seed + 1)
    pixels |> Array.mapi (fun i px ->
        questionExample tok cfg px captionPrompts.[rng.Next captionPrompts.Length] (Scenes.caption (Scenes.generate Splits.baseTrain i)))

/// A deterministic stream of batches: a fresh seeded shuffle of the examples per epoch.
let batches (seed: int) (batchSize: int) (examples: 'a[]) =
    let epoch = Collections.Generic.Dictionary<int, int[]>()
    fun (step: int) ->
        let start = step * batchSize
        Array.init batchSize (fun k ->
            let i = start + k
            let e = i / examples.Length
            if not (epoch.ContainsKey e) then
                let order = Array.init examples.Length id
                let rng = Random(seed * 7919 + e)
                for j in order.Length - 1 .. -1 .. 1 do
                    let r = rng.Next(j + 1)
                    let t = order.[j]
                    order.[j] <- order.[r]
                    order.[r] <- t
                epoch.[e] <- order
            examples.[epoch.[e].[i % examples.Length]])

/// Stage (1): pre-trains the vision tower of `model` on the recipe's vision scenes (dense patch labels,
/// and patch pixels when `VisionReconstruction` > 0), then freezes it; returns the per-step losses.
let pretrainVision (recipe: Recipe) (model: LlavaForConditionalGeneration) (report: int -> float -> float -> unit) =
    let sizes = recipe.Sizes
    let indices = Array.init recipe.VisionScenes id
    let px = scenePixels sizes Splits.visionPretrain indices
    let patch: VisionPretraining.PatchExample[] =
        indices |> Array.map (fun i ->
            let scene = Scenes.generate Splits.visionPretrain i
            { Pixels = px.[i]
              Labels = Scenes.patchLabelsBy recipe.PatchLabelling sizes.ImageSize sizes.PatchSize scene
              Sizes = Scenes.patchSizesBy recipe.PatchLabelling sizes.ImageSize sizes.PatchSize scene })
    VisionPretraining.pretrain model (Scenes.shapes.Length + 1) (Scenes.colours.Length + 1) recipe.VisionReconstruction patch recipe.Vision report

/// Images per step of the grounding loss.
let groundingBatch = 16

/// The grounding term of a recipe on the training scenes' `pixels`: `imageFeatures → step → the
/// recipe's weight times the grounding loss of that step`, its images a seeded draw of
/// `groundingBatch` scenes; None when the recipe has grounding off.
let groundingTerm (recipe: Recipe) (tok: LlavaTokenizer) (model: LlavaForConditionalGeneration) (pixels: float32[][]) =
    if recipe.Grounding = 0.0 then None
    else
        let sizes = recipe.Sizes
        let pad = int64 model.Config.Text.VocabSize
        let pieces =
            Array.init pixels.Length id
            |> Array.Parallel.map (fun i -> Grounding.patchWords sizes.ImageSize sizes.PatchSize (Scenes.generate Splits.baseTrain i))
            |> Array.map (Grounding.pieceIds tok pad)
        let next = batches (int recipe.Seed + 5) groundingBatch (Array.init pixels.Length id)
        let side = int64 sizes.ImageSize
        Some(fun (imageFeatures: torch.Tensor -> torch.Tensor) (step: int) ->
            let picked = next step
            let px = torch.tensor(picked |> Array.collect (fun i -> pixels.[i])).reshape(int64 picked.Length, 3L, side, side)
            let ids = torch.tensor(picked |> Array.collect (fun i -> pieces.[i])).reshape(int64 picked.Length, -1L)
            use weight = recipe.Grounding.ToScalar()
            (Grounding.loss imageFeatures model px ids).mul weight)

/// `loss` plus, when there is a grounding term (`groundingTerm`), its value at `step`.
let grounded (term: ((torch.Tensor -> torch.Tensor) -> int -> torch.Tensor) option) imageFeatures step (loss: torch.Tensor) =
    match term with
    | None -> loss
    | Some f -> CleanSight.Core.Model.Primitives.TensorArithmetic.Add(loss, f imageFeatures step)

/// Trains only the parameters whose names start with `prefix` on shuffled batches of `examples`
/// (`extra step loss` gives each step's loss from its language-modelling loss); the per-step losses.
let private trainOnlyWith (extra: (int -> torch.Tensor -> torch.Tensor)) (prefix: string) (schedule: Training.Schedule) (model: LlavaForConditionalGeneration)
                          (collate: Training.Example[] -> Training.Batch) (examples: Training.Example[]) report =
    let next = batches (int schedule.Seed) schedule.BatchSize examples
    let parameters = Training.trainableParameters model (fun n -> n.StartsWith prefix)
    Training.train schedule parameters (fun step -> step, collate (next step)) (fun (step, b) -> extra step (Training.lmLoss model b)) report

let private trainOnly prefix schedule model collate examples report =
    trainOnlyWith (fun _ loss -> loss) prefix schedule model collate examples report

/// Stage (2): the decoder alone (embeddings, layers, head) as a language model on text examples.
let pretrainText schedule model collate (textExamples: Training.Example[]) report =
    trainOnly "language_model." schedule model collate textExamples report

/// Stage (3), LLaVA's feature alignment: the projector alone on caption examples, decoder frozen
/// (plus `extra step loss`: the grounding term when the recipe has one).
let alignProjector extra schedule model collate (captionExamples: Training.Example[]) report =
    trainOnlyWith extra "multi_modal_projector." schedule model collate captionExamples report

/// Trains the base model from scratch; `log` receives progress lines.
let train (recipe: Recipe) (tokenizerDir: string) (log: string -> unit) =
    let sizes = recipe.Sizes
    let cfg = TinyLlava.config sizes
    torch.manual_seed recipe.Seed |> ignore
    let model = new LlavaForConditionalGeneration(cfg, torch.ScalarType.Float32, torch.CPU)
    TinyLlava.initialize recipe.Seed model
    let report what (schedule: Training.Schedule) every = fun step (loss: float) (lr: float) ->
        if step % every = 0 || step = schedule.Steps - 1 then log $"{what} step {step,5}  loss {loss:F4}  lr {lr:E2}"

    // (1) the vision encoder on dense patch labels
    pretrainVision recipe model (report "vision" recipe.Vision 25) |> ignore

    let tok = LlavaTokenizer.Load(tokenizerDir, cfg.ImageTokenIndex)
    let textData = GeneralText.corpusOf recipe.GeneralText (int recipe.Seed) recipe.TextSentences |> Array.map (fun s -> Training.text (tok.Encode(s, true)))
    let collate = Training.collate (TinyLlava.padTokenId sizes) sizes.ImageSize torch.CPU

    // (2) as LLaVA's language model comes: the decoder alone on general text
    if recipe.TextPretrain.Steps > 0 then
        pretrainText recipe.TextPretrain model collate textData (report "text" recipe.TextPretrain 100) |> ignore

    let pixels = scenePixels sizes Splits.baseTrain (Array.init recipe.TrainScenes id)
    let grounding = groundingTerm recipe tok model pixels

    // (3) LLaVA's stage 1: the projector alone learns to caption, decoder frozen
    if recipe.Align.Steps > 0 then
        alignProjector (grounded grounding model.ImageFeatures) recipe.Align model collate
                       (alignmentExamples tok cfg recipe pixels) (report "align" recipe.Align 50) |> ignore

    // (4) projector + decoder, vision frozen
    let imageData = imageExamples tok cfg recipe pixels
    log $"decoder data: {imageData.Length} image questions, {textData.Length} sentences"
    let nextImage = batches 1 recipe.Decoder.BatchSize imageData
    let nextText = batches 2 recipe.Decoder.BatchSize textData
    let batchAt step = if step % recipe.TextEvery = recipe.TextEvery - 1 then collate (nextText step) else collate (nextImage step)
    // (parameters, image features of a batch, what to do after training) per parametrisation of linear_1
    let parameters, imageFeatures, finish =
        match recipe.ProjectorCoordinates with
        | WhitenedProjector.Raw ->
            Training.trainableParameters model (fun n -> not (n.StartsWith "vision_tower.")), model.ImageFeatures, ignore
        | WhitenedProjector.Whitened ->
            let whitener =
                use _ = torch.no_grad ()
                let sample = pixels |> Array.truncate 1000
                let px = torch.tensor(Array.concat sample).reshape(int64 sample.Length, 3L, int64 sizes.ImageSize, int64 sizes.ImageSize)
                let features = model.VisionFeatures px // [B, N, Dv]
                WhitenedProjector.fit (features.reshape(-1L, features.shape.[2]))
            let projector = WhitenedProjector.Trainable(model, whitener)
            // linear_1 itself stands still: V and c train in its place
            let rest = Training.trainableParameters model (fun n -> not (n.StartsWith "vision_tower." || n.StartsWith "multi_modal_projector.linear_1."))
            rest @ projector.Linear1, projector.Forward, projector.Fold
    Training.train recipe.Decoder parameters (fun step -> step, batchAt step)
                   (fun (step, b) -> grounded grounding imageFeatures step (Training.lmLossWith imageFeatures model b))
                   (report "decoder" recipe.Decoder 50) |> ignore
    finish ()
    for p in model.parameters () do p.requires_grad <- false
    model

/// One question per scene of a split, cycling through each scene's questions (so every kind is asked).
let questionsOf (split: int) (scenes: int) =
    Array.init scenes (fun i ->
        let scene = Scenes.generate split i
        let qas = Scenes.vqaItems split i scene |> List.toArray
        scene, qas.[i % qas.Length])

/// `questionsOf` the clean-test split.
let heldOutQuestions (scenes: int) = questionsOf Splits.cleanTest scenes

/// The greedy answer of `model` to a question about an image (decoded, special tokens skipped).
let greedyAnswer (model: LlavaForConditionalGeneration) (tok: LlavaTokenizer) (pre: ClipPreprocessorConfig)
                 (maxNewTokens: int) (image: RgbImage) (question: string) =
    let cfg = model.Config
    let size = int64 cfg.Vision.ImageSize
    use px = torch.tensor(ClipImageProcessor.Preprocess(image, pre)).reshape(3L, size, size)
    let ids = LlavaPrompt.Build(tok, question, cfg.ImageSeqLength, cfg.ImageTokenIndex).InputIds |> Array.map int64
    tok.Decode(CleanSight.Core.Inference.Generator.Greedy(model, ids, px, maxNewTokens).OutputIds |> Array.map int, true)

/// Held-out check of a trained model: `heldOutQuestions`, greedy answers, the official VQA accuracy —
/// overall and per question kind.
let heldOutAccuracy (model: LlavaForConditionalGeneration) (tok: LlavaTokenizer) (scenes: int) =
    let size = model.Config.Vision.ImageSize
    let pre = preprocessor { TinyLlava.defaults with ImageSize = size }
    let scored =
        heldOutQuestions scenes
        |> Array.map (fun (scene, qa) ->
            let answer = greedyAnswer model tok pre 8 (Scenes.render size scene) qa.Question
            let truth = CleanSight.Pipeline.Metrics.VqaMetrics.normalize qa.Answer
            qa.Kind, CleanSight.Pipeline.Metrics.VqaMetrics.accuracy (Array.create 10 truth) answer)
    let overall = scored |> Array.averageBy snd
    let byKind = scored |> Array.groupBy fst |> Array.map (fun (k, xs) -> k, Array.averageBy snd xs)
    overall, byKind

/// Held-out captioning check: for each caption request of the datasets, the greedy captions of the
/// first `scenes` clean-test scenes scored by CIDEr-D against each scene's reference captions.
let heldOutCaptions (model: LlavaForConditionalGeneration) (tok: LlavaTokenizer) (scenes: int) =
    let size = model.Config.Vision.ImageSize
    let pre = preprocessor { TinyLlava.defaults with ImageSize = size }
    let shown =
        Array.init scenes (fun i ->
            let scene = Scenes.generate Splits.cleanTest i
            Scenes.render size scene, Scenes.captions scene |> List.toArray)
    Scenes.captionPrompts
    |> Array.map (fun prompt ->
        let items = shown |> Array.map (fun (image, references) -> greedyAnswer model tok pre 24 image prompt, references)
        prompt, CleanSight.Pipeline.Metrics.Cider.cider items)
