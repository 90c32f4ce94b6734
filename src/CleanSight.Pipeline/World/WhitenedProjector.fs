/// Training the projector in whitened vision-feature coordinates — a preconditioner, not a change of
/// architecture. The frozen ViT's features are badly conditioned (the committed base's: 8 of 64
/// directions hold 94 % of the variance), and AdamW moves every weight by about the learning rate, so a
/// direction of the features is learnt at a speed that grows with its spread. The hypothesis this
/// tests: the decoder reads the loud attributes and not the quiet ones (with a ViT trained 300 steps it
/// reads colour and position but not shape; trained 1500 steps, shape but no longer colour) because the
/// projector is ill-conditioned. Measured: it is not — whitened, the decoder still loses colour (docs/tiny-world.md,
/// "The ViT's training, and conversations"); kept as a `train-base` option (`--whiten-projector`), off by default.
/// linear_1 is trained as V on z = (x − μ)·W (W = ZCA whitening, ridge-shrunk), then folded back:
/// linear_1.weight = V·W, linear_1.bias = c − V·W·μ — the saved checkpoint is a plain llava-hf one.
module CleanSight.Pipeline.World.WhitenedProjector

open TorchSharp
open CleanSight.Core.Model

/// How the projector's first layer is parametrised during training.
type Coordinates =
    | Raw
    | Whitened

/// Ridge of the whitening, as a share of the mean eigenvalue: directions of much smaller spread
/// (noise) are not blown up to unit variance.
let shrink = 0.1

/// ZCA whitening of feature rows: μ [D] and the symmetric W [D, D] = U·diag(1/√(λ + ε))·Uᵀ of the
/// covariance, ε = `shrink`·mean(λ).
type Whitener = { Mean: torch.Tensor; Matrix: torch.Tensor }

let fit (features: torch.Tensor) = // [N, D]
    use _ = torch.no_grad ()
    let x = features.to_type(torch.float64)
    let mean = x.mean([| 0L |])
    let centred = x - mean
    let cov = centred.t().matmul(centred) / torch.tensor(float (features.shape.[0] - 1L), torch.float64)
    let struct (eigenvalues, eigenvectors) = torch.linalg.eigh cov
    let ridge = eigenvalues.mean() * torch.tensor(shrink, torch.float64)
    let scale = CleanSight.Core.Model.Primitives.TensorArithmetic.Add(eigenvalues, ridge).rsqrt()
    let matrix = (eigenvectors * scale.unsqueeze 0L).matmul(eigenvectors.t())
    { Mean = mean.to_type(features.dtype).DetachFromDisposeScope()
      Matrix = matrix.to_type(features.dtype).DetachFromDisposeScope() }

/// The projector of `model` with linear_1 trainable in whitened coordinates: `Linear1` (V, c) trains
/// in linear_1's place (linear_2 trains as itself) through `Forward`; `Fold` writes linear_1 back.
type Trainable(model: LlavaForConditionalGeneration, whitener: Whitener) =
    let named = dict [ for struct (n, p) in model.named_parameters () -> n, p ]
    let linear1W, linear1B = named.["multi_modal_projector.linear_1.weight"], named.["multi_modal_projector.linear_1.bias"]
    let linear2W, linear2B = named.["multi_modal_projector.linear_2.weight"], named.["multi_modal_projector.linear_2.bias"]
    // V starts as linear_1's initial weight: the same N(0, 0.02) draw, now on unit-variance inputs.
    let v = torch.nn.Parameter(linear1W.detach().clone())
    let c = torch.nn.Parameter(linear1B.detach().clone())
    member _.Linear1 = [ v; c ]
    /// pixels [B, 3, H, W] → projected image features [B, N, Dt], as `model.ImageFeatures` after `Fold`.
    member _.Forward(pixels: torch.Tensor) =
        let z = (model.VisionFeatures pixels - whitener.Mean).matmul(whitener.Matrix) // [B, N, Dv]
        torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(z, v, c)), linear2W, linear2B)
    /// Writes linear_1 = V·W, bias c − V·W·μ into the model.
    member _.Fold() =
        use _ = torch.no_grad ()
        let w = v.matmul(whitener.Matrix)
        linear1W.copy_(w) |> ignore
        linear1B.copy_(c - w.matmul(whitener.Mean)) |> ignore
