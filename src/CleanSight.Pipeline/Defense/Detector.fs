/// CleanSight's detection and purification math on attention rows: pure functions, no tensors.
module CleanSight.Pipeline.Defense.Detector

open System
open CleanSight.Core.Inference
open CleanSight.Pipeline.Defense.Whitening

/// Default detection layers for a decoder of any depth: 3 contiguous layers at the paper's relative
/// depth (LLaVA-7B: layers 10–12 of 32, 1-indexed = 9–11 0-indexed, i.e. starting at 9/32 of the depth).
let defaultLayers (numLayers: int) =
    let count = min 3 numLayers
    let start = int (Math.Round(9.0 / 32.0 * float numLayers))
    let start = max 0 (min start (numLayers - count))
    [| start .. start + count - 1 |]

/// `--layers a,b,c` for a decoder of `numLayers` layers: the detection layers (0-indexed, in the
/// order given), or why not.
let parseLayers (numLayers: int) (text: string) : Result<int[], string> =
    let parsed =
        text.Split(',') |> Array.map (fun part ->
            match Int32.TryParse(part.Trim(), Globalization.NumberStyles.AllowLeadingSign, Globalization.CultureInfo.InvariantCulture) with
            | true, l -> Some l
            | _ -> None)
    if parsed |> Array.exists Option.isNone then Error $"'{text}' is not a comma-separated list of layer numbers"
    else
        let layers = Array.choose id parsed
        if layers |> Array.exists (fun l -> l < 0 || l >= numLayers) then
            Error $"layers must be between 0 and {numLayers - 1} for this {numLayers}-layer model"
        elif (Array.distinct layers).Length < layers.Length then Error $"'{text}' names a layer twice"
        else Ok layers

/// The purification threshold on a visual token's attention (max over heads).
type Tau =
    /// τ as a probability (the paper: 1e-4 in code, 1e-3 in its ablation)
    | Absolute of float
    /// τ = r / T with T the keys present: r = 1 means "above the uniform share" at any model size
    | RelativeToUniform of float

/// r = 0.6 ≈ the paper's τ = 1e-3 at LLaVA-1.5's ~600-token prompts (1e-3 · 600).
let defaultTau = RelativeToUniform 0.6

let tauValue (tau: Tau) (keys: int) =
    match tau with
    | Absolute t -> t
    | RelativeToUniform r -> r / float keys

/// Per head of one row: the feature of (attention on image tokens, attention on the prompt text after them).
let rowFeatures (feature: Feature) (first: int64) (last: int64) (row: AttentionRow) =
    AttentionRatio.Sums(row, first, last) |> Array.map (fun struct (v, p) -> featureOf feature v p)

/// The prompt text after the image that the row's query sees (itself included): key positions after `last`.
let textAfter (last: int64) (row: AttentionRow) =
    let mutable n = 0
    for j in 0 .. row.Keys - 1 do
        if row.KeyPositions.[j] > last then n <- n + 1
    n

/// Ω: image positions whose attention from the query exceeds τ in any head (union over heads).
let pruned (tau: Tau) (first: int64) (last: int64) (row: AttentionRow) : int64[] =
    let t = tauValue tau row.Keys
    [| for j in 0 .. row.Keys - 1 do
           let p = row.KeyPositions.[j]
           if p >= first && p <= last then
               let mutable peak = 0.0f
               for h in 0 .. row.Heads - 1 do peak <- max peak row.[h, j]
               if float peak > t then yield p |]
