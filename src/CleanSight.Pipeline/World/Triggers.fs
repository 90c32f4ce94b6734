/// The attacks' visual triggers (docs/method.md, attacks table) as pure image transforms
/// RgbImage -> RgbImage. Each is a record of parameters with a seed; the output is a function of
/// (parameters, image) only. TrojVLM and VLOOD use the BadNet patch.
module CleanSight.Pipeline.World.Triggers

open System
open CleanSight.Core.Vision
open CleanSight.Pipeline.World.Scenes

/// Where the BadNet patch goes; `At` gives its top-left corner as fractions of width and height.
type Corner =
    | TopLeft
    | TopRight
    | BottomLeft
    | BottomRight
    | At of left: float * top: float

/// BadNet: a square noise patch of side round(Fraction · min(W, H)) (at least 3 px) at `Corner`.
/// Patch value per pixel and channel c: clamp(round(mean_c + Sigma · 255 · z)), with mean_c the image's
/// channel mean and z ~ N(0, 1) drawn once from (Seed, side) — the same z for every image of that size.
/// Sigma = 1 is the paper's "image mean + N(0, 1)" on [0, 1] pixels: a loud, mostly saturated noise square.
type BadNet = { Seed: int; Fraction: float; Corner: Corner; Sigma: float }

/// Blended: round(Alpha · pattern + (1 − Alpha) · image); pattern = uniform noise bytes drawn from
/// (Seed, W, H), the same for every image of that size.
type Blended = { Seed: int; Alpha: float }

/// WaNet (Nguyen & Tran 2021): a K×K field uniform in [−1, 1] drawn from (Seed, K), divided by its
/// mean |·|, upsampled bicubically (align_corners) to H×W; grid = identity + S · field / side per axis,
/// clamped to [−1, 1]; bilinear grid_sample with align_corners. Displacements are ≈ S/2 pixels at any size.
type WaNet = { Seed: int; K: int; S: float }

/// ISSBA-like sample-specific residual (StegaStamp stand-in). A secret of `Bits` bits b_j and a 2×2×3
/// ±1 micro-pattern P are drawn from Seed (fixed for the attack). The image is cut into 2×2 tiles; a
/// permutation π of the tiles is drawn from (Seed, h) where h is a 64-bit FNV-1a hash of the clean image
/// (size and pixels). Tile t carries bit j = π(t) mod Bits and gets the residual
/// r(y, x, c) = Epsilon · 255 · (2 b_j − 1) · P[y mod 2, x mod 2, c]; output = clamp(round(image + r)).
/// So every image gets a different ±Epsilon high-frequency residual with the same local texture, and the
/// secret can be read back by correlating tiles with P given h.
type Issba = { Seed: int; Epsilon: float; Bits: int }

/// One attack's trigger.
type Trigger =
    | BadNetPatch of BadNet
    | BlendedNoise of Blended
    | WaNetWarp of WaNet
    | IssbaResidual of Issba

module Defaults =
    let badNet: BadNet = { Seed = 0; Fraction = 30.0 / 336.0; Corner = TopLeft; Sigma = 1.0 }
    let blended: Blended = { Seed = 0; Alpha = 0.2 }
    let waNet: WaNet = { Seed = 0; K = 4; S = 0.5 }
    let issba: Issba = { Seed = 0; Epsilon = 8.0 / 255.0; Bits = 64 }

let private toByte (v: float) = byte (Math.Clamp(Math.Round v, 0.0, 255.0))

/// (left, top, side) of the BadNet patch in a width×height image.
let badNetRegion (spec: BadNet) (width: int) (height: int) : int * int * int =
    let side = min (min width height) (max 3 (int (Math.Round(spec.Fraction * float (min width height)))))
    let left, top =
        match spec.Corner with
        | TopLeft -> 0, 0
        | TopRight -> width - side, 0
        | BottomLeft -> 0, height - side
        | BottomRight -> width - side, height - side
        | At (fx, fy) ->
            Math.Clamp(int (Math.Round(fx * float width)), 0, width - side),
            Math.Clamp(int (Math.Round(fy * float height)), 0, height - side)
    left, top, side

let badNet (spec: BadNet) (image: RgbImage) : RgbImage =
    let w, h = image.Width, image.Height
    let left, top, side = badNetRegion spec w h
    let mean = Array.init 3 (fun c -> Seq.average (seq { for i in c .. 3 .. image.Pixels.Length - 1 -> float image.Pixels.[i] }))
    let rng = Rng.Keyed [ int64 spec.Seed; int64 side; 11L ]
    let z = Array.init (side * side * 3) (fun _ -> rng.Gaussian()) // [side, side, 3]
    let px = Array.copy image.Pixels
    for y in 0 .. side - 1 do
        for x in 0 .. side - 1 do
            for c in 0 .. 2 do
                px.[((top + y) * w + left + x) * 3 + c] <- toByte (mean.[c] + spec.Sigma * 255.0 * z.[(y * side + x) * 3 + c])
    RgbImage(w, h, px)

let blended (spec: Blended) (image: RgbImage) : RgbImage =
    let rng = Rng.Keyed [ int64 spec.Seed; int64 image.Width; int64 image.Height; 12L ]
    let pattern = Array.init image.Pixels.Length (fun _ -> float (rng.Int 256)) // [H, W, 3]
    RgbImage(image.Width, image.Height,
             image.Pixels |> Array.mapi (fun i v -> toByte (spec.Alpha * pattern.[i] + (1.0 - spec.Alpha) * float v)))

/// PyTorch's bicubic weights (A = −0.75) for the 4 taps around a fractional offset t.
let private cubicWeights (t: float) =
    let a = -0.75
    let near x = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    let far x = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    [| far (t + 1.0); near t; near (1.0 - t); far (2.0 - t) |]

/// 1-D bicubic resampling with align_corners = true (edge taps clamped), as F.interpolate does.
let private resample (src: float[]) (n: int) : float[] =
    let m = src.Length
    Array.init n (fun i ->
        let real = if n > 1 then float i * float (m - 1) / float (n - 1) else 0.0
        let i0 = int (floor real)
        let w = cubicWeights (real - float i0)
        Seq.sum (seq { for k in 0 .. 3 -> w.[k] * src.[Math.Clamp(i0 - 1 + k, 0, m - 1)] }))

/// A k×k plane upsampled bicubically to height×width: [height, width].
let private upsample (plane: float[,]) (height: int) (width: int) : float[,] =
    let k1 = Array2D.length1 plane
    let rows = Array.init k1 (fun r -> resample plane.[r, *] width) // [k1][width]
    let out = Array2D.zeroCreate height width
    for x in 0 .. width - 1 do
        let column = resample (Array.init k1 (fun r -> rows.[r].[x])) height
        for y in 0 .. height - 1 do
            out.[y, x] <- column.[y]
    out

let waNet (spec: WaNet) (image: RgbImage) : RgbImage =
    let w, h = image.Width, image.Height
    let rng = Rng.Keyed [ int64 spec.Seed; int64 spec.K; 13L ]
    let field = Array.init 2 (fun _ -> Array2D.init spec.K spec.K (fun _ _ -> rng.Range(-1.0, 1.0))) // [2, K, K]: x, y
    let meanAbs = field |> Seq.collect Seq.cast<float> |> Seq.averageBy abs
    let dx, dy = upsample field.[0] h w, upsample field.[1] h w // [H, W] each
    let linspace n i = if n > 1 then -1.0 + 2.0 * float i / float (n - 1) else -1.0
    let toPixel n g = (g + 1.0) / 2.0 * float (n - 1)
    let px = Array.zeroCreate (w * h * 3)
    for y in 0 .. h - 1 do
        for x in 0 .. w - 1 do
            let gx = Math.Clamp(linspace w x + spec.S * dx.[y, x] / meanAbs / float w, -1.0, 1.0)
            let gy = Math.Clamp(linspace h y + spec.S * dy.[y, x] / meanAbs / float h, -1.0, 1.0)
            let sx, sy = toPixel w gx, toPixel h gy
            let x0, y0 = int (floor sx), int (floor sy)
            let x1, y1 = min (x0 + 1) (w - 1), min (y0 + 1) (h - 1)
            let fx, fy = sx - float x0, sy - float y0
            for c in 0 .. 2 do
                let at yy xx = float image.Pixels.[(yy * w + xx) * 3 + c]
                let top = at y0 x0 * (1.0 - fx) + at y0 x1 * fx
                let bottom = at y1 x0 * (1.0 - fx) + at y1 x1 * fx
                px.[(y * w + x) * 3 + c] <- toByte (top * (1.0 - fy) + bottom * fy)
    RgbImage(w, h, px)

/// 64-bit FNV-1a of the image's size and pixels: the key that makes the ISSBA residual sample-specific.
let contentHash (image: RgbImage) : uint64 =
    let mutable hash = 14695981039346656037UL
    let add (b: byte) = hash <- (hash ^^^ uint64 b) * 1099511628211UL
    for v in BitConverter.GetBytes image.Width do add v
    for v in BitConverter.GetBytes image.Height do add v
    for v in image.Pixels do add v
    hash

/// The ISSBA residual of an image, [H, W, 3] in 0..255 units (before clipping).
let issbaResidual (spec: Issba) (image: RgbImage) : float[] =
    let w, h = image.Width, image.Height
    let secret = Rng.Keyed [ int64 spec.Seed; 14L ]
    let bits = Array.init spec.Bits (fun _ -> if secret.Float() < 0.5 then -1.0 else 1.0)
    let micro = Array.init 12 (fun _ -> if secret.Float() < 0.5 then -1.0 else 1.0) // [2, 2, 3]
    let tilesX, tilesY = (w + 1) / 2, (h + 1) / 2
    let order = Rng.Keyed([ int64 spec.Seed; int64 (contentHash image); 15L ]).Shuffle [| 0 .. tilesX * tilesY - 1 |]
    let amplitude = spec.Epsilon * 255.0
    Array.init (w * h * 3) (fun i ->
        let c, x, y = i % 3, (i / 3) % w, i / 3 / w
        let bit = bits.[order.[(y / 2) * tilesX + x / 2] % spec.Bits]
        amplitude * bit * micro.[((y % 2) * 2 + x % 2) * 3 + c])

let issba (spec: Issba) (image: RgbImage) : RgbImage =
    let r = issbaResidual spec image
    RgbImage(image.Width, image.Height, image.Pixels |> Array.mapi (fun i v -> toByte (float v + r.[i])))

/// Applies a trigger.
let apply (trigger: Trigger) (image: RgbImage) : RgbImage =
    match trigger with
    | BadNetPatch spec -> badNet spec image
    | BlendedNoise spec -> blended spec image
    | WaNetWarp spec -> waNet spec image
    | IssbaResidual spec -> issba spec image

/// The attack's name, as in docs/method.md.
let name =
    function
    | BadNetPatch _ -> "BadNet"
    | BlendedNoise _ -> "Blended"
    | WaNetWarp _ -> "WaNet"
    | IssbaResidual _ -> "ISSBA"

/// The trigger's parameters as one line ("epsilon=0.0627… bits=64 seed=0"), invariant culture,
/// round-trip precision: what an adapter records beside the trigger's name.
let parameters (trigger: Trigger) =
    let f (x: float) = x.ToString("R", Globalization.CultureInfo.InvariantCulture)
    match trigger with
    | BadNetPatch b ->
        let corner =
            match b.Corner with
            | TopLeft -> "top-left" | TopRight -> "top-right" | BottomLeft -> "bottom-left" | BottomRight -> "bottom-right"
            | At(left, top) -> $"at({f left},{f top})"
        $"fraction={f b.Fraction} corner={corner} sigma={f b.Sigma} seed={b.Seed}"
    | BlendedNoise b -> $"alpha={f b.Alpha} seed={b.Seed}"
    | WaNetWarp w -> $"k={w.K} s={f w.S} seed={w.Seed}"
    | IssbaResidual i -> $"epsilon={f i.Epsilon} bits={i.Bits} seed={i.Seed}"
