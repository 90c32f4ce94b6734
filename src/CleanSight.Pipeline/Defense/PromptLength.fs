/// A clean reference that follows the prompt's length (`calibrate --conditioning prompt-length`).
/// The more text follows the image, the less of the last prompt token's attention the image gets: with
/// one mean and σ per feature the shortest clean questions look anomalous (measured at layer 0 of the
/// tiny world: they are most of the clean false positives). Per feature j, over the clean samples,
/// with z = ln(text tokens after the image, the last prompt token included):
///   mean    m_j(z) = a_j + b_j·z                 least squares of x_j on z
///   scale   s_j(z) = exp(c_j + e_j·clamp(z))      least squares of ln(|x_j − m_j(z)| + ε_j) on z
///   output  u_j    = (x_j − m_j(z)) / s_j(z)      what the reference's whitening then standardises
/// ε_j = 1e-6·(mean |residual_j| + 1e-6·(1 + mean |x_j|)) keeps the logarithm finite for a constant
/// feature (as the whitening's ε). z is clamped to the clean samples' range for the scale only: a
/// log-linear spread is not extrapolated, the mean line is. With every prompt of one length both
/// slopes are 0 and u is x shifted and scaled per feature, which the distances do not see.
module CleanSight.Pipeline.Defense.PromptLength

open System

/// The fitted lines, one entry per feature [p].
type Model =
    { MeanIntercept: float[]   // a
      MeanSlope: float[]       // b
      ScaleIntercept: float[]  // c
      ScaleSlope: float[]      // e
      MinLog: float            // the clean samples' least z
      MaxLog: float }          // …and greatest z
    member m.Dimension = m.MeanIntercept.Length

/// z of a prompt with `textTokens` tokens after the image (at least 1: the last prompt token).
let logLength (textTokens: int) =
    if textTokens < 1 then invalidArg (nameof textTokens) $"a prompt has at least 1 text token after the image, got {textTokens}"
    log (float textTokens)

/// Least squares y ≈ intercept + slope·z; slope 0 when z does not vary (the mean of n equal values
/// may differ from them in the last bit: a variance at rounding level is no variance).
let private line (z: float[]) (y: float[]) =
    let zm, ym = Array.average z, Array.average y
    let vz = z |> Array.averageBy (fun v -> (v - zm) ** 2.0)
    let slope = if vz <= 1e-20 * (1.0 + zm * zm) then 0.0 else (Array.map2 (fun zi yi -> (zi - zm) * (yi - ym)) z y |> Array.average) / vz
    ym - slope * zm, slope

/// Fits the lines on clean samples: `textTokens` [n], `features` [n][p].
let fit (textTokens: int[]) (features: float[][]) : Model =
    let n = if isNull features then 0 else features.Length
    if n < 2 then invalidArg (nameof features) $"fitting a prompt-length model needs at least 2 clean samples, got {n}"
    if textTokens.Length <> n then invalidArg (nameof textTokens) $"{textTokens.Length} prompt lengths for {n} samples"
    let z = textTokens |> Array.map logLength
    let p = features.[0].Length
    let column j = features |> Array.map (fun (row: float[]) -> row.[j])
    let means = Array.init p (fun j -> line z (column j))
    let scales =
        Array.init p (fun j ->
            let a, b = means.[j]
            let x = column j
            let residual = Array.map2 (fun zi xi -> abs (xi - (a + b * zi))) z x
            let eps = 1e-6 * (Array.average residual + 1e-6 * (1.0 + Array.averageBy abs x))
            line z (residual |> Array.map (fun r -> log (r + eps))))
    { MeanIntercept = Array.map fst means; MeanSlope = Array.map snd means
      ScaleIntercept = Array.map fst scales; ScaleSlope = Array.map snd scales
      MinLog = Array.min z; MaxLog = Array.max z }

/// u: the features of a prompt with `textTokens` tokens after the image, relative to the clean lines.
let condition (m: Model) (textTokens: int) (x: float[]) : float[] =
    if isNull x || x.Length <> m.Dimension then
        invalidArg (nameof x) $"the sample has {(if isNull x then 0 else x.Length)} features, the prompt-length model {m.Dimension}"
    let z = logLength textTokens
    let zs = Math.Clamp(z, m.MinLog, m.MaxLog)
    Array.init x.Length (fun j ->
        (x.[j] - (m.MeanIntercept.[j] + m.MeanSlope.[j] * z)) / exp (m.ScaleIntercept.[j] + m.ScaleSlope.[j] * zs))

/// The features a reference measures: conditioned on the prompt's length when there is a model, else as they are.
let apply (model: Model option) (textTokens: int) (x: float[]) =
    match model with
    | Some m -> condition m textTokens x
    | None -> x
