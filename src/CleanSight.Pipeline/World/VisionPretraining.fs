/// Stage 1 of the tiny LLaVA: pre-train the vision encoder. No CLIP can be downloaded, so our ViT
/// learns dense per-patch labels (the shape, colour and size of the object covering each patch — or,
/// as a recipe option, `Scenes.PatchLabelling`, of the patch's grid cell — or background, and the
/// cell of the 3×3 grid the patch lies in) from the scenes; then it is frozen,
/// as CLIP is in LLaVA. The cell label keeps absolute position in the features, as CLIP's do: the
/// decoder sees image tokens at a distance that varies with the question's length, so RoPE alone
/// cannot tell it where a token lies in the image (measured: without it, 10–17 % of position
/// questions right; with it, 52 %).
module CleanSight.Pipeline.World.VisionPretraining

open TorchSharp
open CleanSight.Core.Model
open CleanSight.Core.Model.Primitives

/// One pre-training image: CLIP-normalised pixels [3, H, W] and per-patch (shape, colour) and size
/// classes, row-major over the patch grid, 0 = background.
type PatchExample = { Pixels: float32[]; Labels: (int * int)[]; Sizes: int[] }

/// Size classes: background, small, large.
let sizeClasses = 3

/// The 3×3-grid cell of each patch of an n×n patch grid, row-major.
let patchCells (n: int) = Array.init (n * n) (fun k -> (k / n * 3 / n) * 3 + (k % n * 3 / n))

/// The pixels of each patch: [B, 3, H, W] → [B, N, 3·P·P] (patches row-major, as the ViT's tokens).
let patchPixels (patch: int64) (pixels: torch.Tensor) =
    let b, c, h, w = pixels.shape.[0], pixels.shape.[1], pixels.shape.[2], pixels.shape.[3]
    pixels.reshape(b, c, h / patch, patch, w / patch, patch)
        .permute(0L, 2L, 4L, 1L, 3L, 5L)
        .reshape(b, (h / patch) * (w / patch), c * patch * patch)

/// Temporary heads on the ViT's feature layer (not part of the checkpoint).
type private Heads(hidden: int64, shapes: int64, colours: int64, patchValues: int64) as this =
    inherit torch.nn.Module("patch_heads")
    let shape = torch.nn.Linear(hidden, shapes)
    let colour = torch.nn.Linear(hidden, colours)
    let size = torch.nn.Linear(hidden, int64 sizeClasses)
    let cell = torch.nn.Linear(hidden, 9L)
    let pixels = torch.nn.Linear(hidden, patchValues)
    do this.RegisterComponents()
    member _.Shape = shape
    member _.Colour = colour
    member _.Size = size
    member _.Cell = cell
    member _.Pixels = pixels

/// Trains the vision tower (only) on dense patch labels and, weighted by `reconstruction` (0 = off),
/// on reconstructing each patch's pixels from its token (mean squared error on the normalised
/// pixels); returns the per-step losses.
let pretrain (model: LlavaForConditionalGeneration) (shapeClasses: int) (colourClasses: int) (reconstruction: float)
             (examples: PatchExample[]) (schedule: Training.Schedule) (report: int -> float -> float -> unit) =
    let cfg = model.Config
    torch.manual_seed schedule.Seed |> ignore
    let patch = int64 cfg.Vision.PatchSize
    let heads = new Heads(int64 cfg.Vision.HiddenSize, int64 shapeClasses, int64 colourClasses, 3L * patch * patch)
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
        let sizes = torch.tensor(picked |> Array.collect (fun e -> e.Sizes |> Array.map int64))
        let grid = int (sqrt (float picked.[0].Sizes.Length))
        let cells = torch.tensor(Array.replicate picked.Length (patchCells grid |> Array.map int64) |> Array.concat)
        pixels, shapes, colours, sizes, cells
    let lossOf (pixels: torch.Tensor, shapes: torch.Tensor, colours: torch.Tensor, sizes: torch.Tensor, cells: torch.Tensor) =
        let h = model.VisionTower.HiddenStates(pixels, layer).[0]         // [B, N+1, D]
        let patches = h.narrow(1, 1L, h.shape.[1] - 1L).reshape(-1L, h.shape.[2]) // [B·N, D]
        let labels =
            [ torch.nn.functional.cross_entropy(heads.Shape.forward patches, shapes)
              torch.nn.functional.cross_entropy(heads.Colour.forward patches, colours)
              torch.nn.functional.cross_entropy(heads.Size.forward patches, sizes)
              torch.nn.functional.cross_entropy(heads.Cell.forward patches, cells) ]
            |> List.reduce (fun a b -> TensorArithmetic.Add(a, b))
        if reconstruction = 0.0 then labels
        else
            let target = (patchPixels patch pixels).reshape(patches.shape.[0], -1L)        // [B·N, 3·P·P]
            use weight = reconstruction.ToScalar()
            TensorArithmetic.Add(labels, torch.nn.functional.mse_loss(heads.Pixels.forward patches, target).mul(weight))
    let losses = Training.train schedule parameters batchAt lossOf report
    for p in parameters do p.requires_grad <- false
    losses
