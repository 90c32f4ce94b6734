// Does a frozen vision tower keep a trigger? Pre-trains the tiny world's ViT (as `train-base` does,
// with an optional patch-pixel reconstruction loss), then for each attack's trigger trains a
// projector-shaped probe (per-token MLP, max over tokens) to tell triggered from clean images of
// the clean-test split, and reports held-out probe accuracy per ViT layer. A projector-only backdoor
// can only fire on what this probe can see.
//   dotnet fsi scripts/trigger-probe.fsx [RECONSTRUCTION_WEIGHT=0] [VISION_STEPS=300]
#load "load.fsx"

open TorchSharp
open CleanSight.Core.Model
open CleanSight.Core.Vision
open CleanSight.Pipeline.World

let argv = fsi.CommandLineArgs |> Array.skip 1
let reconstruction = argv |> Array.tryItem 0 |> Option.map float |> Option.defaultValue 0.0
let visionSteps = argv |> Array.tryItem 1 |> Option.map int |> Option.defaultValue 300
let recipe = { BaseModel.defaults with VisionReconstruction = reconstruction; Vision = { BaseModel.defaults.Vision with Steps = visionSteps } }
let sizes = recipe.Sizes
let cfg = TinyLlava.config sizes
torch.manual_seed recipe.Seed |> ignore
let model = new LlavaForConditionalGeneration(cfg, torch.ScalarType.Float32, torch.CPU)
TinyLlava.initialize recipe.Seed model

let sw = System.Diagnostics.Stopwatch.StartNew()
let losses =
    BaseModel.pretrainVision recipe model (fun step loss _ -> if step % 100 = 0 then printfn "vision step %d loss %.4f" step loss)
printfn "vision pre-training (reconstruction %.2f, %d steps): %.0f s, final loss %.4f" reconstruction visionSteps sw.Elapsed.TotalSeconds (Array.last losses)

let pre = BaseModel.preprocessor sizes
let size = int64 sizes.ImageSize
let nTrain, nTest = 600, 200
let images = Array.init (nTrain + nTest) (fun i -> Scenes.render sizes.ImageSize (Scenes.generate BaseModel.Splits.cleanTest i))
let layers = [ sizes.VisionLayers; sizes.VisionLayers - 1 ]
let features (imgs: RgbImage[]) layer =
    use _ = torch.no_grad ()
    let pixels = torch.tensor(imgs |> Array.collect (fun im -> ClipImageProcessor.Preprocess(im, pre))).reshape(int64 imgs.Length, 3L, size, size)
    let h = model.VisionTower.HiddenStates(pixels, [| layer |]).[0]
    h.narrow(1, 1L, h.shape.[1] - 1L).detach ()                                           // [B, N, D]

let probe (clean: torch.Tensor) (triggered: torch.Tensor) =
    torch.manual_seed 11L |> ignore
    let d = clean.shape.[2]
    let mlp = torch.nn.Sequential(torch.nn.Linear(d, 64L), torch.nn.GELU(), torch.nn.Linear(64L, 1L))
    let opt = torch.optim.Adam(mlp.parameters (), 3e-3)
    let x = torch.cat([| clean.narrow(0, 0L, int64 nTrain); triggered.narrow(0, 0L, int64 nTrain) |], 0L)
    let y = torch.cat([| torch.zeros(int64 nTrain); torch.ones(int64 nTrain) |], 0L)
    let score (x: torch.Tensor) = mlp.forward(x).squeeze(-1L).amax([| 1L |])          // max over tokens
    for _ in 1 .. 400 do
        opt.zero_grad ()
        let loss = torch.nn.functional.binary_cross_entropy_with_logits(score x, y)
        loss.backward ()
        opt.step () |> ignore
    use _ = torch.no_grad ()
    let tc = score (clean.narrow(0, int64 nTrain, int64 nTest))
    let tt = score (triggered.narrow(0, int64 nTrain, int64 nTest))
    let count (t: torch.Tensor) keep = t.data<float32>().ToArray() |> Array.filter keep |> Array.length
    let correct = count tc (fun v -> v < 0.0f) + count tt (fun v -> v > 0.0f)
    float correct / float (2 * nTest)

/// The four triggers as the attacks use them (TrojVLM and VLOOD reuse BadNet's patch).
let triggers =
    Attacks.all Attacks.defaultTarget
    |> List.filter (fun a -> List.contains a.Name [ "badnet"; "blended"; "wanet"; "issba" ])
    |> List.map (fun a -> a.Name, a.Trigger)
for layer in layers do
    let clean = features images layer
    let accs =
        triggers |> List.map (fun (name, t) ->
            let triggered = features (images |> Array.map (Triggers.apply t)) layer
            sprintf "%s %.3f" name (probe clean triggered))
    printfn "ViT hidden state %d: held-out probe accuracy (chance 0.5): %s" layer (String.concat ", " accs)
