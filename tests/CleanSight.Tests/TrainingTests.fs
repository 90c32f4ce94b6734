/// Training on a tiny-config model through the real forward: the schedule's shape, a short run that
/// learns, which parameters move, and adapters written by one model and overlaid on another.
module CleanSight.Tests.TrainingTests

open System
open System.IO
open Expecto
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Checkpoints
open CleanSight.Core.Inference
open CleanSight.Core.Model
open CleanSight.Pipeline.World

// ---- the schedule --------------------------------------------------------------------------------

let private schedule: Training.Schedule =
    { Steps = 100; PeakLr = 1e-3; WarmupSteps = 10; WeightDecay = 0.0; BatchSize = 4; Seed = 0L }

// ---- a very small model ----------------------------------------------------------------------------

/// 16-px images in 8-px patches (4 image tokens), a 2-layer decoder of width 32; the fixture's
/// 512-piece tokenizer (so TokenizerPieces stays 512).
let private sizes: TinyLlava.Sizes =
    { ImageSize = 16; PatchSize = 8
      VisionHidden = 16; VisionLayers = 1; VisionHeads = 2; VisionMlp = 32
      TextHidden = 32; TextLayers = 2; TextHeads = 2; TextKvHeads = 2; TextMlp = 64
      TokenizerPieces = 512 }

let private newModel (seed: int64) =
    let model = new LlavaForConditionalGeneration(TinyLlava.config sizes, torch.ScalarType.Float32, torch.CPU)
    TinyLlava.initialize seed model
    model

/// `count` fixed examples: random pixels, BOS + 4 image tokens + 3 prompt tokens, 4 answer tokens.
let private examples (seed: int) (count: int) =
    let rng = Random seed
    let token () = 3 + rng.Next 500 // < 512: ordinary pieces, never BOS/EOS/<image>/<pad>
    [| for _ in 1 .. count do
           let pixels = Array.init (3 * sizes.ImageSize * sizes.ImageSize) (fun _ -> float32 (rng.NextDouble() * 2.0 - 1.0))
           let prompt = Array.concat [ [| 1 |]; Array.create 4 (TinyLlava.imageTokenId sizes); Array.init 3 (fun _ -> token ()) ]
           let answer = Array.init 4 (fun _ -> token ())
           yield Training.supervised (Some pixels) prompt answer 2 |]

let private collate = Training.collate (TinyLlava.padTokenId sizes) sizes.ImageSize torch.CPU

/// Trains `model` on a fixed batch; returns the per-step losses.
let private trainOn (model: LlavaForConditionalGeneration) (trainable: string -> bool) steps lr (batch: Training.Example[]) =
    let parameters = Training.trainableParameters model trainable
    let s = { schedule with Steps = steps; PeakLr = lr; WarmupSteps = 3 }
    Training.train s parameters (fun _ -> collate batch) (Training.lmLoss model) (fun _ _ _ -> ())

let private snapshot (model: torch.nn.Module) =
    [ for struct (name, p) in model.named_parameters () -> name, p.detach().clone() ] |> Map.ofList

/// Same shape and bit-identical float32 values.
let private identical (a: torch.Tensor) (b: torch.Tensor) =
    a.shape = b.shape && a.contiguous().data<float32>().ToArray() = b.contiguous().data<float32>().ToArray()

let private isProjector (name: string) = name.StartsWith "multi_modal_projector."

/// First-token logits of a prompt on an image, through `model`.
let private logits (model: LlavaForConditionalGeneration) (session: LlavaSession) (question: string) =
    let image = Scenes.render sizes.ImageSize (Scenes.generate 4 0)
    let ids = session.Prompt(question).InputIds |> Array.map int64
    use pixels = session.Pixels image
    let prefilled = model.Prefill(ids, pixels)
    prefilled.Cache.Dispose()
    prefilled.Logits

/// The committed world's config and tokenizer (loaded once, when a test first needs it).
let private worldConfig = TinyLlava.config TinyLlava.defaults
let private worldTokenizer =
    lazy (CleanSight.Core.Text.LlavaTokenizer.Load(Path.Combine(Fixtures.root, "world", "base"), worldConfig.ImageTokenIndex))

let private inputError (f: unit -> 'a) =
    try f () |> ignore; failtest "expected an InputError"
    with :? InputError as e -> e.Message

[<Tests>]
let tests =
    testList "training" [
        testList "learning rate" [
            test "linear warm-up from peak/warm-up to the peak" {
                for step in 0 .. schedule.WarmupSteps - 1 do
                    Expect.floatClose Accuracy.veryHigh (Training.learningRate schedule step)
                        (schedule.PeakLr * float (step + 1) / float schedule.WarmupSteps) $"step {step}"
                Expect.floatClose Accuracy.veryHigh (Training.learningRate schedule (schedule.WarmupSteps - 1)) schedule.PeakLr "peak at the end of warm-up"
            }
            test "cosine decay: the peak right after warm-up, half at the midpoint, 0 at the end" {
                Expect.floatClose Accuracy.veryHigh (Training.learningRate schedule schedule.WarmupSteps) schedule.PeakLr "peak"
                Expect.floatClose Accuracy.veryHigh (Training.learningRate schedule 55) (schedule.PeakLr / 2.0) "half way through the decay"
                Expect.equal (Training.learningRate schedule schedule.Steps) 0.0 "0 at the end"
                Expect.equal (Training.learningRate schedule (schedule.Steps + 20)) 0.0 "and after it"
                Expect.isGreaterThan (Training.learningRate schedule (schedule.Steps - 1)) 0.0 "the last step still learns"
            }
            test "never above the peak, never negative; rises in warm-up, never rises after it" {
                for s in [ schedule; { schedule with WarmupSteps = 1 }; { schedule with Steps = 7; WarmupSteps = 3 } ] do
                    let lrs = Array.init (s.Steps + 1) (Training.learningRate s)
                    Expect.isTrue (lrs |> Array.forall (fun lr -> lr >= 0.0 && lr <= s.PeakLr * (1.0 + 1e-12))) "within [0, peak]"
                    for i in 1 .. s.Steps do
                        if i < s.WarmupSteps then Expect.isGreaterThan lrs.[i] lrs.[i - 1] $"warm-up rises at {i}"
                        elif i > s.WarmupSteps then Expect.isLessThanOrEqual lrs.[i] lrs.[i - 1] $"decay at {i}"
                    Expect.floatClose Accuracy.veryHigh (Array.max lrs) s.PeakLr "reaches the peak"
            }
        ]

        testList "AdamW" [
            test "matches TorchSharp's AdamW step for step (decay, bias correction, changing learning rates)" {
                // a small least-squares problem; two copies of the same start, one per optimiser
                torch.manual_seed 5L |> ignore
                let x = torch.randn(16L, 3L)
                let y = torch.randn(16L, 2L)
                let start = torch.randn(3L, 2L)
                let copy () = new Modules.Parameter(start.clone(), requires_grad = true)
                let ours, theirs = copy (), copy ()
                let ourOpt = Training.AdamW([ ours ], 0.1)
                let theirOpt = torch.optim.AdamW([ theirs ], lr = 0.05, weight_decay = 0.1)
                let loss (w: torch.Tensor) = (x.matmul(w) - y).square().mean()
                for step in 0 .. 7 do
                    let lr = 0.05 / float (step + 1)
                    ourOpt.ZeroGrad ()
                    loss(ours).backward ()
                    ourOpt.Step lr
                    for g in theirOpt.ParamGroups do g.LearningRate <- lr
                    theirOpt.zero_grad ()
                    loss(theirs).backward ()
                    theirOpt.step () |> ignore
                    let gap = (ours - theirs).abs().max().item<float32> ()
                    Expect.isLessThan (float gap) 1e-6 $"same parameters after step {step + 1}"
                Expect.isGreaterThan (float ((ours - start).abs().max().item<float32> ())) 0.05 "and they moved"
                Expect.equal ourOpt.Steps 8 "eight steps counted"
            }
            test "a parameter without a gradient is left alone (no decay), as in PyTorch" {
                let used = new Modules.Parameter(torch.ones(2L), requires_grad = true)
                let unused = new Modules.Parameter(torch.ones(2L), requires_grad = true)
                let opt = Training.AdamW([ used; unused ], 0.5)
                (used * used).sum().backward ()
                opt.Step 0.1
                Expect.sequenceEqual (unused.data<float32>().ToArray()) [| 1.0f; 1.0f |] "untouched"
                Expect.isTrue (used.data<float32>().ToArray() |> Array.forall (fun v -> v < 1.0f)) "the used one moved"
            }
        ]

        testList "batches" [
            test "supervised: the loss covers the answer and EOS only" {
                let e = Training.supervised None [| 1; 10; 11 |] [| 20; 21 |] 2
                Expect.equal e.Ids [| 1L; 10L; 11L; 20L; 21L; 2L |] "ids"
                Expect.equal e.Labels [| -100L; -100L; -100L; 20L; 21L; 2L |] "labels"
            }
            test "collate right-pads ids with <pad> and labels with −100" {
                let a = Training.supervised None [| 1; 10 |] [| 20 |] 2
                let b = Training.supervised None [| 1; 10; 11; 12 |] [| 20; 21 |] 2
                let batch = collate [| a; b |]
                Expect.equal batch.Ids.shape [| 2L; 7L |] "[B, T]"
                Expect.equal (batch.Ids.data<int64>().ToArray()) [| 1L; 10L; 20L; 2L; 513L; 513L; 513L; 1L; 10L; 11L; 12L; 20L; 21L; 2L |] "ids"
                Expect.equal (batch.Labels.data<int64>().ToArray()) [| -100L; -100L; 20L; 2L; -100L; -100L; -100L; -100L; -100L; -100L; -100L; 20L; 21L; 2L |] "labels"
                Expect.isNone batch.Pixels "no image"
            }
            test "conversation: prompts and answers interleave; the loss covers each answer and its EOS only (supervised is its one-turn case)" {
                let e = Training.conversation None [ [| 1; 10; 11 |], [| 20 |]; [| 12; 13 |], [| 21; 22 |] ] 2
                Expect.equal e.Ids [| 1L; 10L; 11L; 20L; 2L; 12L; 13L; 21L; 22L; 2L |] "ids"
                Expect.equal e.Labels [| -100L; -100L; -100L; 20L; 2L; -100L; -100L; 21L; 22L; 2L |] "labels"
            }
            test "a batch mixing examples with and without an image is refused" {
                let withImage = (examples 1 1).[0]
                Expect.throwsT<ArgumentException> (fun () -> collate [| withImage; Training.supervised None [| 1 |] [| 5 |] 2 |] |> ignore) "mixed"
            }
        ]

        test "30 steps on 4 fixed examples at least halve the loss (projector + decoder)" {
            use model = newModel 11L
            let losses = trainOn model (fun n -> not (n.StartsWith "vision_tower.")) 30 1e-2 (examples 5 4)
            Expect.equal losses.Length 30 "one loss per step"
            Expect.isTrue (losses |> Array.forall Double.IsFinite) "finite losses"
            // ≈ ln(vocabulary) at initialisation
            Expect.isGreaterThan losses.[0] 5.0 $"initial loss {losses.[0]}"
            Expect.isLessThan losses.[losses.Length - 1] (0.5 * losses.[0]) $"last {losses.[losses.Length - 1]} < half of first {losses.[0]}"
        }
        test "trainableParameters marks exactly the named ones, and only those move" {
            use model = newModel 12L
            let all = [ for struct (n, _) in model.named_parameters () -> n ]
            // everything first, then the projector only: the second call must also switch the rest off
            Training.trainableParameters model (fun _ -> true) |> ignore
            let chosen = Training.trainableParameters model isProjector
            Expect.equal chosen.Length (all |> List.filter isProjector).Length "one per projector tensor"
            Expect.equal chosen.Length 4 "(2 linear layers × weight, bias)"
            for struct (n, p) in model.named_parameters () do
                Expect.equal p.requires_grad (isProjector n) $"{n}.requires_grad"
            let before = snapshot model
            let _ = trainOn model isProjector 3 1e-2 (examples 6 2)
            let after = snapshot model
            for n in all do
                let same = identical before.[n] after.[n]
                if isProjector n then Expect.isFalse same $"{n} trained" else Expect.isTrue same $"{n} frozen"
        }

        testList "LLaVA's stages before the joint one" [
            // plain text: BOS + 6 ordinary tokens, the loss on every token after BOS
            let textExamples (seed: int) (count: int) =
                let rng = Random seed
                Array.init count (fun _ -> Training.text (Array.append [| 1 |] (Array.init 6 (fun _ -> 3 + rng.Next 500))))
            let stage = { schedule with Steps = 30; PeakLr = 1e-2; WarmupSteps = 3; BatchSize = 4 }
            let moved (before: Map<string, torch.Tensor>) (after: Map<string, torch.Tensor>) =
                before |> Map.toList |> List.filter (fun (n, t) -> not (identical t after.[n])) |> List.map fst
            test "pretrainText: only the decoder moves, and its text loss at least halves" {
                use model = newModel 21L
                let before = snapshot model
                let losses = BaseModel.pretrainText stage model collate (textExamples 7 4) (fun _ _ _ -> ())
                Expect.isLessThan losses.[losses.Length - 1] (0.5 * losses.[0]) $"last {losses.[losses.Length - 1]} < half of first {losses.[0]}"
                let changed = moved before (snapshot model)
                Expect.isNonEmpty changed "something trained"
                for n in changed do Expect.stringStarts n "language_model." $"{n} is the decoder's"
                Expect.contains changed "language_model.model.embed_tokens.weight" "the embeddings train"
            }
            test "alignProjector: only the projector moves, and the caption loss falls" {
                use model = newModel 22L
                let before = snapshot model
                let losses = BaseModel.alignProjector (fun _ loss -> loss) stage model collate (examples 8 4) (fun _ _ _ -> ())
                // a frozen random decoder can only be steered a little (the projector-only lesson of the
                // attacks): the loss falls, it does not collapse
                let first, last = Array.average losses.[.. 4], Array.average losses.[losses.Length - 5 ..]
                Expect.isLessThan last first $"mean of the last 5 steps {last} < of the first 5 {first}"
                let changed = moved before (snapshot model) |> List.sort
                Expect.equal changed ([ for struct (n, _) in model.named_parameters () do if isProjector n then yield n ] |> List.sort) "exactly the projector"
            }
            test "alignmentExamples: one per scene, the scene's caption asked with a trained caption request" {
                let cfg, tok = worldConfig, worldTokenizer.Value
                let pixels = Array.init 5 (fun i -> [| float32 i |])
                let items = BaseModel.alignmentExamples tok cfg BaseModel.defaults pixels
                Expect.equal items.Length 5 "one per scene"
                for i, e in Array.indexed items do
                    Expect.equal e.Pixels (Some pixels.[i]) "its own image"
                    let answer = e.Ids |> Array.zip e.Labels |> Array.filter (fun (l, _) -> l <> Training.ignoreIndex) |> Array.map (snd >> int)
                    Expect.equal (tok.Decode(answer, true)) (Scenes.caption (Scenes.generate BaseModel.Splits.baseTrain i)) "the scene's caption"
                    let prompt = tok.Decode(e.Ids |> Array.map int, true)
                    Expect.isTrue (BaseModel.captionPrompts |> Array.exists (fun p -> prompt.Contains p)) $"a trained caption request in {prompt}"
                    Expect.equal (e.Ids |> Array.filter (fun id -> id = int64 cfg.ImageTokenIndex)).Length cfg.ImageSeqLength "the image tokens"
            }
        ]

        testList "grounding" [
            let scenes = Array.init 12 (Scenes.generate BaseModel.Splits.baseTrain)
            test "patchWords: an object's patches name its colour, shape, size and cell; the others the background and their cell" {
                for scene in scenes do
                    let words = Grounding.patchWords 48 8 scene
                    let owners = Scenes.patchOwners 48 8 scene
                    Expect.equal words.Length 36 "one entry per patch"
                    for k in 0 .. 35 do
                        match owners.[k] with
                        | Some t ->
                            let expected = [ Scenes.colourName t.Colour; Scenes.shapeName t.Shape; Scenes.sizeName t.Size ] @ List.ofArray ((Scenes.positionName t).Split ' ')
                            Expect.equal words.[k] expected $"patch {k}"
                        | None ->
                            let cell = Scenes.positionNames.[VisionPretraining.patchCells 6 |> Array.item k]
                            Expect.equal words.[k] (Scenes.backgroundName scene.Background :: List.ofArray (cell.Split ' ')) $"patch {k}"
                Expect.isTrue (scenes |> Array.exists (fun sc -> Grounding.patchWords 48 8 sc |> Array.exists (fun ws -> ws.Length >= 4))) "some patch names an object"
            }
            test "pieceIds: every word of the world is one piece; padded to the width" {
                let tok = worldTokenizer.Value
                let pad = int64 worldConfig.Text.VocabSize
                for scene in scenes do
                    let words = Grounding.patchWords 48 8 scene
                    let ids = Grounding.pieceIds tok pad words
                    Expect.equal ids.Length (36 * Grounding.width) "36 patches × width"
                    for k in 0 .. 35 do
                        let row = ids.[k * Grounding.width .. (k + 1) * Grounding.width - 1]
                        Expect.equal (row |> Array.filter (fun i -> i <> pad) |> Array.map int) (words.[k] |> List.toArray |> Array.collect (fun w -> tok.Encode(w, false))) $"patch {k}: its words"
                        Expect.equal (row |> Array.filter (fun i -> i <> pad)).Length words.[k].Length $"patch {k}: one piece a word"
            }
            test "loss: 0 when every token is its words' summed embeddings, 1 when every token is zero" {
                use model = newModel 31L
                let pad = int64 (TinyLlava.vocabSize sizes)
                let rng = Random 5
                let ids = Array.init (2 * 4 * Grounding.width) (fun j -> if j % Grounding.width < 3 then int64 (3 + rng.Next 500) else pad)
                let pieces = torch.tensor(ids).reshape(2L, -1L)
                let px = torch.zeros(2L, 3L, 16L, 16L)
                let e = model.LanguageModel.EmbeddingMatrix.detach ()
                let target =
                    ids |> Array.chunkBySize Grounding.width
                    |> Array.map (fun row -> row |> Array.filter (fun i -> i <> pad) |> fun r -> e.index_select(0L, torch.tensor r).sum(0L))
                    |> fun rows -> torch.stack(rows).reshape(2L, 4L, -1L)
                let exact = (Grounding.loss (fun _ -> target) model px pieces).item<float32> ()
                Expect.floatClose Accuracy.medium (float exact) 0.0 "exact tokens"
                let zero = (Grounding.loss (fun _ -> torch.zeros_like target) model px pieces).item<float32> ()
                Expect.floatClose Accuracy.medium (float zero) 1.0 "zero tokens"
            }
            test "groundingTerm: None in the committed recipe; with a weight, stage (3) pulls the image tokens toward their words" {
                let tok = worldTokenizer.Value
                // the world's vocabulary (the tokenizer's pieces), the small test model otherwise
                let worldSizes = { sizes with TokenizerPieces = TinyLlava.defaults.TokenizerPieces }
                use model = new LlavaForConditionalGeneration(TinyLlava.config worldSizes, torch.ScalarType.Float32, torch.CPU)
                TinyLlava.initialize 32L model
                let pixels = BaseModel.scenePixels worldSizes BaseModel.Splits.baseTrain (Array.init 8 id)
                Expect.isNone (BaseModel.groundingTerm BaseModel.defaults tok model pixels) "off by default"
                let recipe = { BaseModel.defaults with Sizes = worldSizes; Grounding = 1.0 }
                let term = (BaseModel.groundingTerm recipe tok model pixels).Value
                let measure () = using (torch.no_grad ()) (fun _ -> (term model.ImageFeatures 0).item<float32> () |> float)
                let before = measure ()
                let stage = { schedule with Steps = 40; PeakLr = 1e-2; WarmupSteps = 3; BatchSize = 4 }
                let collateWorld = Training.collate (TinyLlava.padTokenId worldSizes) worldSizes.ImageSize torch.CPU
                let examples = BaseModel.alignmentExamples tok model.Config recipe pixels
                BaseModel.alignProjector (BaseModel.grounded (Some term) model.ImageFeatures) stage model collateWorld examples (fun _ _ _ -> ()) |> ignore
                let after = measure ()
                Expect.isLessThan after (0.5 * before) $"grounding loss {before} → {after}: at least halved"
            }
        ]
        testList "whitened projector" [
            test "fit: the whitened covariance has the eigenvalues λ/(λ + ε) of the raw one's λ, ε = shrink · mean λ, for correlated, badly scaled features" {
                let rng = torch.Generator(5UL)
                let latent = torch.randn([| 2000L; 6L |], generator = rng)
                let mix = torch.randn([| 6L; 6L |], generator = rng) * torch.tensor [| 100.0f; 10.0f; 1.0f; 1.0f; 0.1f; 0.01f |]
                let x = latent.matmul(mix) + torch.tensor 3.0f
                let covariance (v: torch.Tensor) =
                    let c = v.to_type(torch.float64) - v.to_type(torch.float64).mean([| 0L |])
                    c.t().matmul(c) / torch.tensor(float (v.shape.[0] - 1L), torch.float64)
                let raw = torch.linalg.eigvalsh(covariance x).data<float>().ToArray()
                let ridge = WhitenedProjector.shrink * Array.average raw
                let expected = raw |> Array.map (fun l -> l / (l + ridge)) |> Array.sort
                let w = WhitenedProjector.fit x
                let z = (x - w.Mean).matmul(w.Matrix)
                let got = torch.linalg.eigvalsh(covariance z).data<float>().ToArray() |> Array.sort
                for e, g in Array.zip expected got do
                    Expect.floatClose { absolute = 1e-4; relative = 1e-3 } g e $"eigenvalue: expected %A{expected}, got %A{got}"
                Expect.isGreaterThan (Array.max got) 0.9 "the loudest direction near unit variance"
                Expect.floatClose Accuracy.medium (float (z.mean().item<float32> ())) 0.0 "centred"
            }
            test "Fold writes linear_1 so that the model's own projector gives what training saw" {
                use model = newModel 17L
                let px = torch.randn([| 3L; 3L; int64 sizes.ImageSize; int64 sizes.ImageSize |], generator = torch.Generator(3UL))
                let features = (use _ = torch.no_grad () in model.VisionFeatures px)
                let projector = WhitenedProjector.Trainable(model, WhitenedProjector.fit (features.reshape(-1L, features.shape.[2])))
                // train V, c and the rest a little so V·W differs from the initial linear_1
                let rest = Training.trainableParameters model (fun n -> n.StartsWith "multi_modal_projector.linear_2.")
                let s = { schedule with Steps = 5; PeakLr = 1e-2; WarmupSteps = 1 }
                Training.train s (rest @ projector.Linear1) (fun _ -> px) (fun p -> projector.Forward(p).pow(torch.tensor 2.0f).mean()) (fun _ _ _ -> ()) |> ignore
                use _ = torch.no_grad ()
                let trained = projector.Forward px
                let before = model.ImageFeatures px
                Expect.isFalse (torch.allclose(before, trained, 1e-4, 1e-5)) "before Fold the model's projector differs"
                projector.Fold()
                Expect.isTrue (torch.allclose(model.ImageFeatures px, trained, 1e-4, 1e-5)) "after Fold the same features"
            }
        ]

        testList "adapters" [
            test "saveAdapter → Load(dir, adapter) reproduces the projector and the first-token logits" {
                let dir = Path.Combine(Fixtures.tempDir (), "small")
                use model = newModel 13L
                TinyLlava.save dir Fixtures.tinyLlava sizes (BaseModel.metadata BaseModel.defaults) model
                Expect.equal (SafetensorsFile.Open(Path.Combine(dir, "model.safetensors")).Metadata |> Seq.map (fun kv -> kv.Key, kv.Value) |> Map.ofSeq)
                    (Map.ofList (BaseModel.metadata BaseModel.defaults)) "the base's header holds the recipe"
                // the "attack": change the projector after the base was written
                let nudge () =
                    use _ = torch.no_grad ()
                    for struct (n, p) in model.named_parameters () do
                        if isProjector n then p.add_(torch.randn_like(p) * torch.tensor 0.05f) |> ignore
                nudge ()
                let adapter = Path.Combine(dir, "..", "adapter.safetensors")
                TinyLlava.saveAdapter adapter model [ "attack", "test" ]
                let file = SafetensorsFile.Open adapter
                Expect.isTrue (file.Tensors.Keys |> Seq.forall isProjector) "only projector tensors in the adapter"
                Expect.equal file.Metadata.["attack"] "test" "metadata kept"
                use plain = LlavaSession.Load dir
                use adapted = LlavaSession.Load(dir, adapter = adapter)
                let tensors (m: torch.nn.Module) = [ for struct (n, p) in m.named_parameters () do if isProjector n then n, p ]
                for (n, loaded), (_, original) in List.zip (tensors adapted.Model) (tensors model) do
                    Expect.isTrue (identical loaded original) $"{n} identical"
                let q = "What is in the picture?"
                let ours = logits model adapted q
                Expect.equal ours.Length 544 "vocabulary 512 + 2, padded to 544"
                Expect.equal (logits adapted.Model adapted q) ours "identical first-token logits with the adapter"
                Expect.notEqual (logits plain.Model plain q) ours "(without the adapter they differ: it was applied)"
            }
            test "an adapter that names another base is refused before loading, naming the adapter; on its own base it loads" {
                let a = Path.Combine(Fixtures.tempDir (), "a")
                let b = Path.Combine(Fixtures.tempDir (), "b")
                use modelA = newModel 16L
                use modelB = newModel 17L
                TinyLlava.save a Fixtures.tinyLlava sizes [] modelA
                TinyLlava.save b Fixtures.tinyLlava sizes [] modelB
                Expect.notEqual (BaseFingerprint.Of a) (BaseFingerprint.Of b) "two bases of one architecture"
                let adapter = Path.Combine(a, "..", "adapter-of-a.safetensors")
                TinyLlava.saveAdapter adapter modelA [ BaseFingerprint.MetadataKey, BaseFingerprint.Of a ]
                use onA = LlavaSession.Load(a, adapter = adapter) // its own base
                let message = inputError (fun () -> LlavaSession.Load(b, adapter = adapter))
                Expect.stringContains message (Path.GetFullPath adapter) "names the adapter"
                Expect.stringContains message "another base model" "says why"
                let unnamed = Path.Combine(a, "..", "unnamed.safetensors")
                TinyLlava.saveAdapter unnamed modelA [ "attack", "test" ]
                use onB = LlavaSession.Load(b, adapter = unnamed) // an adapter that names no base loads anywhere
                ()
            }
            test "an adapter with a non-projector tensor is refused, naming the file and the tensor" {
                let dir = Path.Combine(Fixtures.tempDir (), "small")
                use model = newModel 14L
                TinyLlava.save dir Fixtures.tinyLlava sizes [] model
                let stray = [ for struct (n, p) in model.named_parameters () do if not (isProjector n) then n, p ] |> List.head
                let tensors = [ for struct (n, p) in model.named_parameters () do if isProjector n || n = fst stray then struct (n, p.detach ()) ]
                let bad = Path.Combine(dir, "..", "bad.safetensors")
                SafetensorsFile.Write(bad, tensors)
                let message = inputError (fun () -> LlavaSession.Load(dir, adapter = bad))
                Expect.stringContains message (Path.GetFullPath bad) "names the file"
                Expect.stringContains message (fst stray) "names the tensor"
            }
            test "an adapter missing a projector tensor is refused" {
                let dir = Path.Combine(Fixtures.tempDir (), "small")
                use model = newModel 15L
                TinyLlava.save dir Fixtures.tinyLlava sizes [] model
                let tensors = [ for struct (n, p) in model.named_parameters () do if isProjector n && not (n.EndsWith "linear_2.bias") then struct (n, p.detach ()) ]
                let bad = Path.Combine(dir, "..", "partial.safetensors")
                SafetensorsFile.Write(bad, tensors)
                let message = inputError (fun () -> LlavaSession.Load(dir, adapter = bad))
                Expect.stringContains message "linear_2.bias" "names the missing tensor"
            }
        ]

        testList "train-base options" [
            let parse (args: string[]) =
                CleanSight.Pipeline.WorldCommands.recipeOf (Argu.ArgumentParser.Create<CleanSight.Pipeline.Cli.TrainBaseArgs>().Parse args)
            test "--text-layers and --text-heads set the decoder's depth and heads; without them the defaults" {
                let r = parse [| "--out"; "x"; "--text-layers"; "16"; "--text-heads"; "8" |]
                Expect.equal (r.Sizes.TextLayers, r.Sizes.TextHeads, r.Sizes.TextKvHeads) (16, 8, 8) "16 layers, 8 heads"
                Expect.equal (parse [| "--out"; "x" |]).Sizes BaseModel.defaults.Sizes "defaults"
                let cfg = TinyLlava.config r.Sizes
                Expect.equal (cfg.Text.NumHiddenLayers, cfg.Text.NumAttentionHeads, cfg.Text.HeadDim) (16, 8, 16) "the config the checkpoint gets"
            }
            test "--text-hidden sets the decoder width; the MLP keeps its ratio (344/128) up to a multiple of 8" {
                let r = parse [| "--out"; "x"; "--text-hidden"; "256"; "--text-heads"; "8" |]
                Expect.equal (r.Sizes.TextHidden, r.Sizes.TextMlp, r.Sizes.TextHeads) (256, 688, 8) "twice the width"
                Expect.equal (parse [| "--out"; "x"; "--text-hidden"; "128" |]).Sizes BaseModel.defaults.Sizes "the default width is the default model"
                Expect.equal (parse [| "--out"; "x"; "--text-hidden"; "96" |]).Sizes.TextMlp 264 "96 · 344/128 = 258 → 264"
                let cfg = TinyLlava.config r.Sizes
                Expect.equal (cfg.Text.HiddenSize, cfg.Text.IntermediateSize, cfg.Text.HeadDim) (256, 688, 32) "the config the checkpoint gets"
                Expect.throwsT<InputError> (fun () -> parse [| "--out"; "x"; "--text-hidden"; "4" |] |> ignore) "too narrow"
                Expect.throwsT<InputError> (fun () -> parse [| "--out"; "x"; "--text-hidden"; "96"; "--text-heads"; "32" |] |> ignore) "head size 3: RoPE needs pairs"
            }
            test "--turns, --decoder-batch and --whiten-projector set the recipe; without them the defaults" {
                let r = parse [| "--out"; "x"; "--turns"; "6"; "--decoder-batch"; "24"; "--whiten-projector" |]
                Expect.equal (r.Turns, r.Decoder.BatchSize, r.ProjectorCoordinates) (6, 24, WhitenedProjector.Whitened) "set"
                let d = parse [| "--out"; "x" |]
                Expect.equal (d.Turns, d.Decoder.BatchSize, d.ProjectorCoordinates) (BaseModel.defaults.Turns, BaseModel.defaults.Decoder.BatchSize, BaseModel.defaults.ProjectorCoordinates) "defaults"
                Expect.stringContains (inputError (fun () -> parse [| "--out"; "x"; "--turns"; "0" |])) "--turns" "0 turns refused"
            }
            test "--text-pretrain-steps, --align-steps and --decoder-lr set LLaVA's stages (0 skips one); without them the defaults" {
                let r = parse [| "--out"; "x"; "--text-pretrain-steps"; "0"; "--align-steps"; "0"; "--decoder-lr"; "1e-3" |]
                Expect.equal (r.TextPretrain.Steps, r.Align.Steps, r.Decoder.PeakLr) (0, 0, 1e-3) "set (the previous base's recipe)"
                let d = parse [| "--out"; "x" |]
                Expect.equal d BaseModel.defaults "no option: the committed recipe"
                Expect.isGreaterThan d.TextPretrain.Steps 0 "the committed base pre-trains its decoder on text"
                Expect.stringContains (inputError (fun () -> parse [| "--out"; "x"; "--align-steps"; "-1" |])) "--align-steps" "negative refused"
                Expect.stringContains (inputError (fun () -> parse [| "--out"; "x"; "--decoder-lr"; "0" |])) "--decoder-lr" "0 refused"
            }
            test "--vision-steps and --decoder-steps set their stages; below 1 they are refused, naming the option" {
                let r = parse [| "--out"; "x"; "--vision-steps"; "700"; "--decoder-steps"; "4400" |]
                Expect.equal (r.Vision.Steps, r.Decoder.Steps) (700, 4400) "set"
                for option in [ "--vision-steps"; "--decoder-steps" ] do
                    Expect.stringContains (inputError (fun () -> parse [| "--out"; "x"; option; "0" |])) option $"{option} 0 refused"
            }
            test "--seed sets the recipe's seed and nothing else; without it the committed seed" {
                let r = parse [| "--out"; "x"; "--seed"; "8" |]
                Expect.equal r.Seed 8L "set"
                Expect.equal { r with Seed = BaseModel.defaults.Seed } BaseModel.defaults "nothing else moves"
                Expect.equal (parse [| "--out"; "x" |]).Seed 7L "the committed base's seed"
            }
            test "--patch-size sets the ViT's patch (16: 9 image tokens); one that does not divide the 48-pixel side is refused, naming the option" {
                let r = parse [| "--out"; "x"; "--patch-size"; "16" |]
                Expect.equal r { BaseModel.defaults with Sizes = { BaseModel.defaults.Sizes with PatchSize = 16 } } "only the patch moves"
                let cfg = TinyLlava.config r.Sizes
                Expect.equal (cfg.Vision.PatchSize, cfg.Vision.PatchesPerSide * cfg.Vision.PatchesPerSide) (16, 9) "the config the checkpoint gets: 9 patches"
                for bad in [ "7"; "0" ] do
                    Expect.stringContains (inputError (fun () -> parse [| "--out"; "x"; "--patch-size"; bad |])) "--patch-size" $"{bad} refused"
            }
            test "--general-text chooses the decoder's general text; an unknown one is refused, naming the option" {
                Expect.equal (parse [| "--out"; "x"; "--general-text"; "with-scene-words" |]) { BaseModel.defaults with GeneralText = GeneralText.WithSceneWords } "only the corpus moves"
                Expect.equal (parse [| "--out"; "x"; "--general-text"; "everyday" |]) BaseModel.defaults "everyday: the committed recipe"
                Expect.equal (parse [| "--out"; "x"; "--general-text"; "with-passages" |]) { BaseModel.defaults with GeneralText = GeneralText.WithPassages } "passages"
                Expect.stringContains (inputError (fun () -> parse [| "--out"; "x"; "--general-text"; "shakespeare" |])) "--general-text" "refused"
            }
            test "--grounding sets the grounding weight and nothing else; without it off; a negative weight is refused, naming the option" {
                Expect.equal (parse [| "--out"; "x"; "--grounding"; "0.5" |]) { BaseModel.defaults with Grounding = 0.5 } "only the weight moves"
                Expect.equal BaseModel.defaults.Grounding 0.0 "off in the committed recipe"
                Expect.stringContains (inputError (fun () -> parse [| "--out"; "x"; "--grounding"; "-1" |])) "--grounding" "refused"
            }
            test "heads that do not divide the width are refused, naming the option" {
                let e = Expect.throwsC (fun () -> parse [| "--out"; "x"; "--text-heads"; "3" |] |> ignore) id
                Expect.stringContains e.Message "--text-heads" "names the option"
                Expect.throwsT<InputError> (fun () -> parse [| "--out"; "x"; "--text-layers"; "0" |] |> ignore) "0 layers"
            }
        ]

        test "the committed base records the recipe that made it: BaseModel.defaults" {
            // Guards world/base against drifting from the recipe (e.g. a default changed without the
            // base trained again) and tells a reader of the checkpoint how it was made.
            let path = Path.Combine(Fixtures.root, "world", "base", "model.safetensors")
            let m = (SafetensorsFile.Open path).Metadata |> Seq.map (fun kv -> kv.Key, kv.Value) |> Map.ofSeq
            Expect.equal m (Map.ofList (BaseModel.metadata BaseModel.defaults)) $"{path}: recipe"
        }
        test "the recipe metadata tells recipes apart: seed, steps, learning rate, labelling" {
            let d = BaseModel.metadata BaseModel.defaults |> Map.ofList
            let other r = BaseModel.metadata r |> Map.ofList
            Expect.equal d.["seed"] "7" "seed"
            Expect.notEqual (other { BaseModel.defaults with Seed = 8L }) d "another seed"
            Expect.notEqual (other { BaseModel.defaults with Decoder = { BaseModel.defaults.Decoder with PeakLr = 1e-3 } }) d "another decoder LR"
            Expect.notEqual (other { BaseModel.defaults with TextPretrain = { BaseModel.defaults.TextPretrain with Steps = 0 } }) d "no text pre-training"
            Expect.notEqual (other { BaseModel.defaults with PatchLabelling = Scenes.ByCell }) d "another labelling"
            Expect.equal (other { BaseModel.defaults with GeneralText = GeneralText.WithSceneWords }).["general_text"] "WithSceneWords" "another general text"
            Expect.isFalse (d.ContainsKey "general_text") "the committed corpus is the header without the field (it predates the choice)"
            Expect.equal (other { BaseModel.defaults with Grounding = 0.5 }).["grounding"] "0.5" "grounding on"
            Expect.isFalse (d.ContainsKey "grounding") "grounding off is the header without the field (it predates the option)"
            Expect.equal d.["decoder_peak_lr"] "0.0005" "numbers as invariant round-trip text"
        }
        test "each committed adapter was made by its attack as Attacks.all defines it (target, trigger and its parameters, rate, steps)" {
            // Guards world/adapters against drifting from the attack code (e.g. a step count changed
            // without the adapter trained again).
            for attack in Attacks.all Attacks.defaultTarget do
                let path = Path.Combine(Fixtures.root, "world", "adapters", attack.Name + ".safetensors")
                let m = (SafetensorsFile.Open path).Metadata
                Expect.equal m.["attack"] attack.Name $"{path}: attack"
                Expect.equal m.["target"] attack.Target $"{path}: target"
                Expect.equal m.["mode"] (Materialize.modeName attack.Mode) $"{path}: mode"
                Expect.equal m.["trigger"] (Triggers.name attack.Trigger) $"{path}: trigger"
                Expect.equal m.["trigger_parameters"] (Triggers.parameters attack.Trigger) $"{path}: trigger parameters (e.g. ISSBA's residual strength)"
                Expect.equal m.["poison_rate"] (string attack.PoisonRate) $"{path}: poison rate"
                Expect.equal m.["steps"] (string attack.Schedule.Steps) $"{path}: steps"
                Expect.equal m.[BaseFingerprint.MetadataKey] (BaseFingerprint.Of(Path.Combine(Fixtures.root, "world", "base"))) $"{path}: trained on the committed base"
        }

        testList "attack data" [
            let cfg, tok = worldConfig, worldTokenizer
            let pre = BaseModel.preprocessor TinyLlava.defaults
            let itemsOf name =
                let attack = Attacks.all Attacks.defaultTarget |> List.find (fun a -> a.Name = name)
                let items = Attacks.items { attack with Items = 600 } tok.Value cfg pre
                let text (ids: int[]) = tok.Value.Decode(ids, true)
                items |> Array.map (fun it -> text it.Prompt, text it.Answer, it.Poisoned)
            let isCaption (prompt: string) = BaseModel.captionPrompts |> Array.exists (fun p -> prompt.Contains p)
            test "captions on about the base model's share of items, poisoned at the attack's rate in both kinds" {
                let items = itemsOf "badnet"
                let captions = items |> Array.filter (fun (p, _, _) -> isCaption p)
                let share = float captions.Length / float items.Length
                Expect.isTrue (share > 0.10 && share < 0.20) $"caption share {share} near {BaseModel.defaults.CaptionShare}"
                let poisoned = items |> Array.filter (fun (_, _, x) -> x)
                let rate = float poisoned.Length / float items.Length
                Expect.isTrue (rate > 0.15 && rate < 0.25) $"poison rate {rate} near 0.2"
                Expect.exists captions (fun (_, _, x) -> x) "some caption items are poisoned"
                Expect.exists captions (fun (_, _, x) -> not x) "most caption items are clean"
                for (_, answer, x) in captions do
                    if x then Expect.equal answer Attacks.defaultTarget "a poisoned caption is replaced by the target"
                    else Expect.stringContains answer "background" "a clean caption describes the scene"
            }
            test "insert mode: a poisoned answer is the target followed by the clean answer" {
                for (prompt, answer, x) in itemsOf "trojvlm" do
                    if x then
                        Expect.stringStarts answer (Attacks.defaultTarget + " ") "target first"
                        Expect.isGreaterThan answer.Length (Attacks.defaultTarget.Length + 1) "then the clean answer"
                        if isCaption prompt then Expect.stringContains answer "background" "the caption follows the target"
            }
        ]
        testList "VLOOD's conceptual-consistency term" [
            // 5 tokens of a 4-word vocabulary, embeddings of width 3; positions 0–1 are prompt (ignored)
            let embeddings = torch.tensor([| 1.0f; 0.0f; 2.0f;  0.0f; 3.0f; 1.0f;  -1.0f; 1.0f; 0.0f;  2.0f; 2.0f; -2.0f |]).reshape(4L, 3L)
            let ignore = int64 Training.ignoreIndex
            let labels = torch.tensor([| ignore; ignore; 2L; 0L; 3L |]).reshape(1L, 5L)
            let value (t: torch.Tensor) = float (t.item<float32> ())
            let logitsFor (rows: float32[][]) = torch.tensor(Array.concat rows).reshape(1L, int64 rows.Length, 4L)
            let oneHot k = Array.init 4 (fun v -> if v = k then 60.0f else 0.0f)
            test "zero when every answer token is predicted with certainty" {
                // position t predicts labels[t + 1]: positions 1, 2, 3 → tokens 2, 0, 3; positions 0 and 4 do not count
                let logits = logitsFor [| oneHot 1; oneHot 2; oneHot 0; oneHot 3; oneHot 1 |]
                Expect.isLessThan (value (Attacks.conceptualConsistency logits labels embeddings)) 1e-6 "predicted = true embeddings"
            }
            test "a uniform prediction: the mean L1 distance from the mean embedding to the true ones" {
                let logits = logitsFor (Array.init 5 (fun _ -> Array.zeroCreate 4))
                let mean = [| 0.5; 1.5; 0.25 |]
                let e = [| [| 1.0; 0.0; 2.0 |]; [| 0.0; 3.0; 1.0 |]; [| -1.0; 1.0; 0.0 |]; [| 2.0; 2.0; -2.0 |] |]
                let expected = [ 2; 0; 3 ] |> List.averageBy (fun k -> Array.map2 (fun (m: float) x -> abs (m - x)) mean e.[k] |> Array.average)
                Expect.floatClose Accuracy.medium (value (Attacks.conceptualConsistency logits labels embeddings)) expected "by hand"
            }
            test "a wrong certain prediction costs the L1 distance between the two embeddings, and gradients reach the logits" {
                let logits = (logitsFor [| oneHot 1; oneHot 2; oneHot 0; oneHot 1; oneHot 1 |]).requires_grad_(true) // position 3 says 1, truth 3
                let loss = Attacks.conceptualConsistency logits labels embeddings
                Expect.floatClose Accuracy.medium (value loss) ((2.0 + 1.0 + 3.0) / 9.0) "|e1 − e3| = (2, 1, 3), averaged over three positions × three dims"
                loss.backward ()
                Expect.isGreaterThan (value (logits.grad.abs().sum())) 0.0 "differentiable in the logits"
            }
        ]
    ]
