/// Every defense the evaluation compares, as one closed union: pixel-space baselines are image
/// transforms before preprocessing; the others are attention policies inside the one prefill.
module CleanSight.Pipeline.Defense.Defenses

open System
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense

type Defense =
    | NoDefense
    /// Gaussian blur, radius 0.7·0.06·min(H, W), blended 0.7 blur + 0.3 image
    | Blur
    /// spatial transform: horizontal flip, shrink to t = 0.7 and pad, rotate 10°
    | ST
    /// CleanSight's purification on every input, no detection
    | PruneAll
    /// exclude a random 90 % of the image tokens from the last detection layer on
    | RandomPrune
    /// make every query's attention on the image tokens uniform from the last detection layer on
    /// (no detection): each keeps its visual share, no token can steal it
    | UniformVisual
    /// FastV: at layer K keep the top R of image tokens by head-averaged last-token attention
    | FastV of k: int * keep: float
    /// detection + purification
    | CleanSight

let name = function
    | NoDefense -> "none" | Blur -> "blur" | ST -> "st" | PruneAll -> "prune-all" | RandomPrune -> "random-prune"
    | UniformVisual -> "uniform" | FastV _ -> "fastv" | CleanSight -> "cleansight"

let all = [ NoDefense; Blur; ST; PruneAll; RandomPrune; UniformVisual; FastV(2, 0.5); CleanSight ]

let parse (s: string) =
    match all |> List.tryFind (fun d -> name d = s.Trim().ToLowerInvariant()) with
    | Some d -> d
    | None -> invalidArg "defense" $"""unknown defense '{s}' (one of {all |> List.map name |> String.concat ", "})"""

// ---- pixel-space baselines ---------------------------------------------------------------------

let private gaussianBlur (sigma: float) (image: RgbImage) =
    let w, h = image.Width, image.Height
    let radius = max 1 (int (Math.Ceiling(3.0 * sigma)))
    let kernel = Array.init (2 * radius + 1) (fun i -> exp (-(float (i - radius) ** 2.0) / (2.0 * sigma * sigma)))
    let total = Array.sum kernel
    let kernel = kernel |> Array.map (fun k -> k / total)
    let src = image.Pixels |> Array.map float
    let pass (data: float[]) horizontal =
        Array.init data.Length (fun idx ->
            let c = idx % 3
            let x = (idx / 3) % w
            let y = idx / 3 / w
            let mutable acc = 0.0
            for i in -radius .. radius do
                let xx, yy = (if horizontal then Math.Clamp(x + i, 0, w - 1), y else x, Math.Clamp(y + i, 0, h - 1))
                acc <- acc + kernel.[i + radius] * data.[(yy * w + xx) * 3 + c]
            acc)
    pass (pass src true) false

let private toImage (w: int) (h: int) (values: float[]) =
    RgbImage(w, h, values |> Array.map (fun v -> byte (Math.Clamp(Math.Round v, 0.0, 255.0))))

/// The paper's Blur baseline.
let blur (image: RgbImage) =
    let sigma = 0.7 * 0.06 * float (min image.Width image.Height)
    let blurred = gaussianBlur sigma image
    toImage image.Width image.Height (Array.map2 (fun b (o: byte) -> 0.7 * b + 0.3 * float o) blurred image.Pixels)

/// The paper's ST baseline (flip, shrink-and-pad by t = 0.7, rotate): inverse-mapped, bilinear.
let spatialTransform (image: RgbImage) =
    let w, h = image.Width, image.Height
    let t, angle = 0.7, 10.0 * Math.PI / 180.0
    let mean = Array.init 3 (fun c -> Seq.init (w * h) (fun i -> float image.Pixels.[i * 3 + c]) |> Seq.average)
    let cx, cy = float (w - 1) / 2.0, float (h - 1) / 2.0
    let sample (x: float) (y: float) c =
        if x < 0.0 || y < 0.0 || x > float (w - 1) || y > float (h - 1) then mean.[c]
        else
            let x0, y0 = int (floor x), int (floor y)
            let x1, y1 = min (x0 + 1) (w - 1), min (y0 + 1) (h - 1)
            let fx, fy = x - float x0, y - float y0
            let p (xx: int) (yy: int) = float image.Pixels.[(yy * w + xx) * 3 + c]
            (1.0 - fy) * ((1.0 - fx) * p x0 y0 + fx * p x1 y0) + fy * ((1.0 - fx) * p x0 y1 + fx * p x1 y1)
    toImage w h (Array.init (w * h * 3) (fun idx ->
        let c = idx % 3
        let x, y = float ((idx / 3) % w) - cx, float (idx / 3 / w) - cy
        // output → source: un-rotate, un-shrink, un-flip
        let rx = (cos angle * x + sin angle * y) / t
        let ry = (-sin angle * x + cos angle * y) / t
        sample (cx - rx) (cy + ry) c))

/// The image a defense shows the model.
let transform (defense: Defense) (image: RgbImage) =
    match defense with
    | Blur -> blur image
    | ST -> spatialTransform image
    | _ -> image

// ---- attention policies ------------------------------------------------------------------------

/// Excludes `positions` from `layer` on, observing nothing else.
type private Exclude(layer: int, choose: AttentionRow -> int64[]) =
    let mutable chosen: int64[] = [||]
    member _.Chosen = chosen
    interface IAttentionPolicy with
        member _.Observes l = l = layer
        member _.OnAttention row =
            chosen <- choose row
            chosen :> Collections.Generic.IReadOnlyCollection<int64>

/// FastV's choice: the image tokens outside the top `keep` share by head-averaged attention.
let fastV (keep: float) (first: int64) (last: int64) (row: AttentionRow) =
    let visual = [| for j in 0 .. row.Keys - 1 do if row.KeyPositions.[j] >= first && row.KeyPositions.[j] <= last then j |]
    let score j = Seq.init row.Heads (fun h -> float row.[h, j]) |> Seq.average
    let kept = int (Math.Round(keep * float visual.Length))
    visual |> Array.sortByDescending score |> Array.skip kept |> Array.map (fun j -> row.KeyPositions.[j]) |> Array.sort

/// A random `share` of the image positions, seeded per sample.
let randomChoice (share: float) (seed: int) (first: int64) (last: int64) =
    let rng = Random(seed)
    let positions = [| first .. last |] |> Array.sortBy (fun _ -> rng.Next())
    positions.[.. int (Math.Round(share * float positions.Length)) - 1] |> Array.sort

/// What a policy-based defense did to one input.
type Outcome = { Distance: float option; Flagged: bool; Pruned: int64[] }

/// The attention policy of a defense for one input of `task`, and a way to read what it did afterwards.
let policy (defense: Defense) (calibration: Calibration.Calibration) (task: Dataset.Task) (first: int64) (last: int64) (sampleSeed: int)
    : IAttentionPolicy * (unit -> Outcome) =
    let s = calibration.Settings
    let lastLayer = Array.max s.Layers
    let cleanSight force detection =
        let p = CleanSightPolicy.Policy(s.Layers, s.Feature, s.Tau, first, last, detection, force)
        p :> IAttentionPolicy, (fun () -> { Distance = p.Verdict.Distance; Flagged = p.Verdict.Flagged; Pruned = p.Verdict.Pruned })
    let nothingDone () = { Distance = None; Flagged = false; Pruned = [||] }
    let exclude layer choose =
        let p = Exclude(layer, choose)
        p :> IAttentionPolicy, (fun () -> { Distance = None; Flagged = false; Pruned = p.Chosen })
    match defense with
    | CleanSight ->
        cleanSight false (Some(Calibration.detection calibration task))
    | PruneAll -> cleanSight true None
    | RandomPrune -> exclude lastLayer (fun _ -> randomChoice 0.9 sampleSeed first last)
    | UniformVisual -> UniformAttentionPolicy(lastLayer, [| first .. last |]) :> IAttentionPolicy, nothingDone
    | FastV(k, keep) -> exclude k (fastV keep first last)
    | NoDefense | Blur | ST -> NoPolicy.Instance :> IAttentionPolicy, nothingDone
