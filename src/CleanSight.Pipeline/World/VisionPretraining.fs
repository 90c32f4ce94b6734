/// Stage 1 of the tiny LLaVA: pre-train the vision encoder. No CLIP can be downloaded, so our ViT
/// learns dense per-patch labels (the shape and colour of the object covering each patch, or
/// background) from the scenes; then it is frozen, as CLIP is in LLaVA.
module CleanSight.Pipeline.World.VisionPretraining

open TorchSharp
open CleanSight.Core.Model

/// One pre-training image: CLIP-normalised pixels [3, H, W] and per-patch (shape, colour) classes,
/// row-major over the patch grid, 0 = background.
type PatchExample = { Pixels: float32[]; Labels: (int * int)[] }

/// Temporary heads on the ViT's feature layer (not part of the checkpoint).
type private Heads(hidden: int64, shapes: int64, colours: int64) as this =
    inherit torch.nn.Module("patch_heads")
    let shape = torch.nn.Linear(hidden, shapes)
    let colour = torch.nn.Linear(hidden, colours)
    do this.RegisterComponents()
    member _.Shape = shape
    member _.Colour = colour

/// Trains the vision tower (only) on dense patch labels; returns the per-step losses.
let pretrain (model: LlavaForConditionalGeneration) (shapeClasses: int) (colourClasses: int)
             (examples: PatchExample[]) (schedule: Training.Schedule) (report: int -> float -> float -> unit) =
    let cfg = model.Config
    torch.manual_seed schedule.Seed |> ignore
    let heads = new Heads(int64 cfg.Vision.HiddenSize, int64 shapeClasses, int64 colourClasses)
    let parameters =
        Training.trainableParameters model (fun n -> n.StartsWith "vision_tower.")
        @ [ for p in heads.parameters () -> p ]
    let size = int64 cfg.Vision.ImageSize
    let layer = cfg.VisionHiddenStateIndices
    let batchAt step =
        let n = examples.Length
        let picked = Array.init schedule.BatchSize (fun i -> examples.[(step * schedule.BatchSize + i) % n])
        let b = int64 picked.Length
        let pixels = torch.tensor(picked |> Array.collect (fun e -> e.Pixels)).reshape(b, 3L, size, size)
        let shapes = torch.tensor(picked |> Array.collect (fun e -> e.Labels |> Array.map (fst >> int64)))
        let colours = torch.tensor(picked |> Array.collect (fun e -> e.Labels |> Array.map (snd >> int64)))
        pixels, shapes, colours
    let lossOf (pixels: torch.Tensor, shapes: torch.Tensor, colours: torch.Tensor) =
        let h = model.VisionTower.HiddenStates(pixels, layer).[0]         // [B, N+1, D]
        let patches = h.narrow(1, 1L, h.shape.[1] - 1L).reshape(-1L, h.shape.[2]) // [B·N, D]
        torch.nn.functional.cross_entropy(heads.Shape.forward patches, shapes)
        + torch.nn.functional.cross_entropy(heads.Colour.forward patches, colours)
    let losses = Training.train schedule parameters batchAt lossOf report
    for p in parameters do p.requires_grad <- false
    losses
