/// Where cross-modal fusion begins, measured on clean inputs only. The method notes place the detection
/// layers at "3 contiguous layers starting where cross-modal fusion begins" and, for other depths, say
/// to select them or expose the choice; this is that choice made from clean data (`calibrate --layers
/// fusion`), never from attacked data.
///
/// For each layer ℓ, D(ℓ) = KL(the last prompt token's next-token distribution ‖ the same with every
/// image token excluded from layer ℓ on): how much of what the model says comes from the image read at
/// ℓ or later. A layer's own part is D(ℓ) − D(ℓ+1); the parts add up to D(0). Fusion begins at the
/// first layer whose own part is at least half the largest.
module CleanSight.Pipeline.Defense.Fusion

open System
open TorchSharp
open CleanSight.Core.Inference
open CleanSight.Core.Vision

/// softmax of logits, in double precision.
let softmax (logits: float32[]) =
    let m = Array.max logits
    let e = logits |> Array.map (fun x -> Math.Exp(float (x - m)))
    let s = Array.sum e
    e |> Array.map (fun x -> x / s)

/// KL(p ‖ q) in nats; terms with p = 0 contribute nothing, q is floored at 1e-300.
let kl (p: float[]) (q: float[]) =
    if p.Length <> q.Length then invalidArg (nameof q) $"distributions of {p.Length} and {q.Length} outcomes"
    Array.fold2 (fun acc a b -> if a > 0.0 then acc + a * Math.Log(a / max b 1e-300) else acc) 0.0 p q

/// D(ℓ) for every layer ℓ: KL(undefended ‖ image tokens excluded from layer ℓ on) of the next-token
/// distribution at the last prompt token. One prefill per layer, plus the undefended one.
let knockout (session: LlavaSession) (image: RgbImage) (question: string) =
    use scope = torch.NewDisposeScope()
    let ids = session.Prompt(question).InputIds |> Array.map int64
    let struct (first, last) = AttentionRatio.ImageSpan(ids, int64 session.Config.ImageTokenIndex)
    let pixels = session.Pixels image
    let next (policy: IAttentionPolicy) =
        let prefilled = session.Model.Prefill(ids, pixels, policy)
        prefilled.Cache.Dispose()
        softmax prefilled.Logits
    let full = next NoPolicy.Instance
    Array.init session.Config.Text.NumHiddenLayers (fun l -> kl full (next (FixedExclusionPolicy(l, [| first .. last |]))))

/// Each layer's own part of the knockout: D(ℓ) − D(ℓ+1), with D(L) = 0 (they sum to D(0)).
let layerShares (fromOn: float[]) =
    Array.init fromOn.Length (fun l -> fromOn.[l] - (if l + 1 < fromOn.Length then fromOn.[l + 1] else 0.0))

/// The mean knockout over clean inputs, one per layer.
let meanKnockout (perInput: float[][]) =
    if perInput.Length = 0 then invalidArg (nameof perInput) "no clean inputs"
    Array.init perInput.[0].Length (fun l -> perInput |> Array.averageBy (fun d -> d.[l]))

/// Where fusion begins: the first layer whose own share is at least half the largest share.
/// (Not the largest share itself: a model may read the image at a few layers, and the method places the
/// detection layers where it *begins* to.)
let start (shares: float[]) =
    if shares.Length = 0 then invalidArg (nameof shares) "no layers"
    let largest = Array.max shares
    if not (largest > 0.0) then invalidArg (nameof shares) $"no layer takes anything from the image (largest share {largest})"
    shares |> Array.findIndex (fun s -> s >= 0.5 * largest)

/// `count` contiguous layers from `first`, moved down so they fit a decoder of `numLayers` layers.
let layersFrom (numLayers: int) (count: int) (first: int) =
    let count = max 1 (min count numLayers)
    let first = max 0 (min first (numLayers - count))
    [| first .. first + count - 1 |]

/// Clean inputs used by default to place the layers (one prefill per layer each).
let defaultSamples = 40
