/// The detection math, pure: from clean attention-ratio features to a reference (mean and a
/// whitening), from a sample to its distance d, and from clean distances to a threshold γ.
/// Rows are samples, columns are features (LLaVA-7B: 3 layers × 32 heads = 96).
///   diagonal: d = ‖(x − μ)/σ‖₂            σ = population std + ε   (the authors' code)
///   full:     d = ‖Σ^{-1/2}(x − μ)‖₂      Σ = (1−s)·S + s·(tr S / p)·I, S the population
///                                          covariance, s the shrinkage (Ledoit–Wolf or fixed)
/// ε = 1e-6·(mean std + 1e-6·(1 + mean |μ|)): a millionth of the typical feature scale, so it is
/// invisible for real features, yet positive when every feature is constant. Σ's eigenvalues are
/// floored at ε², the same smallest variance the diagonal whitening allows. Constant features thus
/// give large but finite distances, never NaN or ∞.
module CleanSight.Pipeline.Defense.Whitening

open System
open MathNet.Numerics.LinearAlgebra

/// How the covariance is shrunk toward (tr S / p)·I before inversion.
type Shrinkage =
    /// Ledoit & Wolf (2004) optimal intensity, as sklearn's `ledoit_wolf`. Positive for n ≥ 3
    /// samples in general position; exactly 0 for n = 2 (the two centred samples are ±v, so the
    /// estimated noise of S is 0), which leaves Σ singular when p > 1: only the ε² eigenvalue floor
    /// then keeps the whitener finite. Use ≥ 3 clean samples, or `Fixed`, when p > n.
    | LedoitWolf
    /// A given intensity in [0, 1]; 0 = the plain sample covariance.
    | Fixed of float

/// Which distance the reference measures.
type Whitening =
    | Diagonal
    | Full of shrinkage: Shrinkage

/// A fitted clean reference.
type Reference =
    { Whitening: Whitening
      Samples: int                  // n clean samples it was fitted on
      Mean: float[]                 // μ [p]
      Std: float[]                  // σ = population std + Epsilon [p], all > 0
      Epsilon: float                // ε
      Covariance: float[][] option  // Σ after shrinkage [p][p]; Full only
      Whitener: float[][] option    // Σ^{-1/2}, symmetric [p][p]; Full only
      ShrinkageUsed: float          // s in [0, 1]; 0 for Diagonal
      EigenvalueFloor: float }      // ε²: the least variance any direction is given
    member r.Dimension = r.Mean.Length

// ---- fitting ----------------------------------------------------------------------------------

/// Checks the clean feature matrix and returns (n, p).
let private requireFeatures (features: float[][]) =
    let n = if isNull features then 0 else features.Length
    if n < 2 then invalidArg (nameof features) $"fitting a reference needs at least 2 clean samples, got {n}"
    let p = features.[0].Length
    if p = 0 then invalidArg (nameof features) "clean samples have 0 features"
    features |> Array.iteri (fun i row ->
        if row.Length <> p then
            invalidArg (nameof features) $"clean sample {i} has {row.Length} features, sample 0 has {p}"
        row |> Array.iteri (fun j v ->
            if not (Double.IsFinite v) then invalidArg (nameof features) $"feature {j} of clean sample {i} is {v}"))
    n, p

let private epsilonFor (std: Vector<float>) (mean: Vector<float>) =
    1e-6 * (Seq.average std + 1e-6 * (1.0 + Seq.averageBy abs mean))

/// Ledoit–Wolf (2004) intensity for centred data X [n × p], with S = XᵀX/n and μ = tr S / p:
///   δ² = ‖S − μI‖²_F / p                       (how far S is from the target)
///   β² = Σ_k ‖x_k x_kᵀ − S‖²_F / (p·n²)        (how noisy S is), = (Σ_k ‖x_k‖⁴ − n‖S‖²_F)/(p·n²)
///   s  = min(β², δ²) / δ²                     (0 when δ² = 0; always 0 for p = 1, as sklearn)
let private ledoitWolfOfCentred (x: Matrix<float>) : float =
    let n, p = float x.RowCount, x.ColumnCount
    if p = 1 then 0.0
    else
        let s = x.TransposeThisAndMultiply x / n                                   // [p × p]
        let mu = s.Trace() / float p
        let delta2 = (s - mu * Matrix<float>.Build.DenseIdentity p).FrobeniusNorm() ** 2.0 / float p
        let sumFourth = x.EnumerateRows() |> Seq.sumBy (fun r -> (r.DotProduct r) ** 2.0)
        let beta2 = (sumFourth - n * s.FrobeniusNorm() ** 2.0) / (float p * n * n)
        if delta2 <= 0.0 then 0.0 else Math.Clamp(min beta2 delta2 / delta2, 0.0, 1.0)

/// Centres the clean features: returns (X − 1μᵀ [n × p], μ [p]).
let private centre (features: float[][]) =
    let x = Matrix<float>.Build.DenseOfRowArrays features                         // [n × p]
    let mean = x.ColumnSums() / float x.RowCount                                   // [p]
    x - Matrix<float>.Build.Dense(x.RowCount, x.ColumnCount, fun _ j -> mean.[j]), mean

/// The Ledoit–Wolf shrinkage intensity of clean features (centred internally), in [0, 1].
let ledoitWolfIntensity (features: float[][]) : float =
    requireFeatures features |> ignore
    centre features |> fst |> ledoitWolfOfCentred

/// Σ^{-1/2} of a symmetric matrix by eigendecomposition V·diag(λ)·Vᵀ, eigenvalues floored.
let private inverseSqrt (floor: float) (sigma: Matrix<float>) : Matrix<float> =
    let symmetric = (sigma + sigma.Transpose()) / 2.0                              // drop rounding asymmetry
    let evd = symmetric.Evd(Symmetricity.Symmetric)
    let scale = evd.EigenValues |> Seq.map (fun l -> 1.0 / sqrt (max floor l.Real)) |> Vector<float>.Build.DenseOfEnumerable
    let v = evd.EigenVectors
    v * Matrix<float>.Build.DenseOfDiagonalVector scale * v.Transpose()

/// Fits the clean reference.
let fit (whitening: Whitening) (features: float[][]) : Reference =
    let n, p = requireFeatures features
    match whitening with
    | Full (Fixed s) when not (s >= 0.0 && s <= 1.0) ->
        invalidArg (nameof whitening) $"a fixed shrinkage intensity must be in [0, 1], got {s}"
    | _ -> ()
    let centred, mean = centre features
    let rawStd = ((centred.PointwisePower 2.0).ColumnSums() / float n).PointwiseSqrt()  // population [p]
    let eps = epsilonFor rawStd mean
    let reference =
        { Whitening = whitening
          Samples = n
          Mean = mean.ToArray()
          Std = (rawStd + eps).ToArray()
          Epsilon = eps
          Covariance = None
          Whitener = None
          ShrinkageUsed = 0.0
          EigenvalueFloor = eps * eps }
    match whitening with
    | Diagonal -> reference
    | Full shrinkage ->
        let s = centred.TransposeThisAndMultiply centred / float n                // S [p × p]
        let intensity =
            match shrinkage with
            | LedoitWolf -> ledoitWolfOfCentred centred
            | Fixed value -> value
        let target = s.Trace() / float p * Matrix<float>.Build.DenseIdentity p     // (tr S / p)·I
        let sigma = (1.0 - intensity) * s + intensity * target                     // Σ [p × p]
        { reference with
            Covariance = Some (sigma.ToRowArrays())
            Whitener = Some ((inverseSqrt reference.EigenvalueFloor sigma).ToRowArrays())
            ShrinkageUsed = intensity }

/// `fit` on features read from each clean sample.
let fitBy (features: 'T -> float[]) (whitening: Whitening) (samples: 'T[]) : Reference =
    samples |> Array.map features |> fit whitening

// ---- distance ---------------------------------------------------------------------------------

/// The distance of one sample, or why it has none (wrong length, NaN or ∞ feature).
let tryDistance (reference: Reference) (x: float[]) : Result<float, string> =
    let p = reference.Dimension
    if isNull x || x.Length <> p then
        Error $"the sample has {(if isNull x then 0 else x.Length)} features, the reference {p}"
    else
        match x |> Array.tryFindIndex (Double.IsFinite >> not) with
        | Some j -> Error $"feature {j} of {p} is {x.[j]}; distances need finite features"
        | None ->
            let centred = Array.map2 (-) x reference.Mean                           // x − μ [p]
            let squared =
                match reference.Whitener with
                | None -> Array.map2 (fun c s -> (c / s) ** 2.0) centred reference.Std |> Array.sum
                | Some w -> w |> Array.sumBy (fun row -> (Array.map2 (*) row centred |> Array.sum) ** 2.0)
            Ok (sqrt squared)

/// The distance d of one sample; throws ArgumentException naming the bad feature.
let distance (reference: Reference) (x: float[]) : float =
    match tryDistance reference x with
    | Ok d -> d
    | Error why -> invalidArg (nameof x) why

/// Distances of many samples; the error names the sample.
let distances (reference: Reference) (xs: float[][]) : float[] =
    xs |> Array.mapi (fun i x ->
        match tryDistance reference x with
        | Ok d -> d
        | Error why -> invalidArg (nameof xs) $"sample {i}: {why}")

/// Each clean sample's distance to the reference fitted on the other n − 1 samples: the distance a
/// new clean input gets, which the in-sample distance underestimates (the reference was fitted on that
/// very sample; for diagonal whitening every coordinate's leave-one-out z² is at least its in-sample
/// z², up to ε). Needs n ≥ 3 (each fit needs 2).
let leaveOneOutDistances (whitening: Whitening) (features: float[][]) : float[] =
    let n = if isNull features then 0 else features.Length
    if n < 3 then invalidArg (nameof features) $"leave-one-out distances need at least 3 clean samples, got {n}"
    features |> Array.mapi (fun i x -> distance (fit whitening (Array.removeAt i features)) x)

// ---- threshold --------------------------------------------------------------------------------

/// How a quantile falls between order statistics x₍₀₎ ≤ … ≤ x₍ₙ₋₁₎.
type Interpolation =
    /// numpy's default (`np.quantile`, `np.percentile`): h = (n−1)q, x₍⌊h⌋₎ + (h−⌊h⌋)(x₍⌊h⌋+1₎ − x₍⌊h⌋₎).
    | Linear
    /// numpy's "inverted_cdf": the smallest x with (#values ≤ x)/n ≥ q, so at most a fraction
    /// 1−q of the values lies strictly above it.
    | InvertedCdf

/// Finite values in ascending order, or an error naming the first that is not (or the empty array).
let private sortedFinite (values: float[]) =
    if isNull values || values.Length = 0 then invalidArg (nameof values) "a quantile needs at least one value, got 0"
    values |> Array.iteri (fun i v ->
        if not (Double.IsFinite v) then invalidArg (nameof values) $"value {i} of {values.Length} is {v}")
    Array.sort values

/// The q-quantile of finite values.
let quantileWith (interpolation: Interpolation) (q: float) (values: float[]) : float =
    if not (q >= 0.0 && q <= 1.0) then invalidArg (nameof q) $"the quantile must be in [0, 1], got {q}"
    let sorted = sortedFinite values
    let n = sorted.Length
    match interpolation with
    | Linear ->
        let h = float (n - 1) * q
        let lo = int (floor h)
        let hi = min (lo + 1) (n - 1)
        sorted.[lo] + (h - float lo) * (sorted.[hi] - sorted.[lo])
    | InvertedCdf ->
        // k = ⌈q·n⌉ (1-based), with a 1e-9 allowance so 0.7·10 = 7.000000000000001 still gives 7.
        let k = int (ceil (q * float n - 1e-9))
        sorted.[Math.Clamp(k, 1, n) - 1]

/// γ for a target clean false-positive rate of 1 − q (paper: q = 0.99): the q-quantile of the clean
/// distances with numpy's default linear interpolation, as `np.percentile(d, 100·q)` in the
/// authors' code. Flag a sample when d > γ.
let threshold (quantile: float) (cleanDistances: float[]) : float =
    quantileWith Linear quantile cleanDistances

/// How γ is read off n clean distances for a target clean FPR α = 1 − q. Both promise their rate for
/// a new clean input whose distance is exchangeable with the n (leave-one-out distances are, nearly).
type ThresholdRule =
    /// the q-quantile with numpy's linear interpolation (`threshold`), as the paper's code. A new clean
    /// input lands above it with probability ≈ α + (1 − 2α)/(n + 1) (`expectedFpr`): above α for any
    /// finite n — 1.5 % for α = 1 % and n = 200
    | Interpolated
    /// the r-th smallest distance, r = ⌈(n + 1)q⌉ (split conformal): a new clean input lands above it
    /// with probability (n + 1 − r)/(n + 1) ≤ α whatever the distances' distribution; needs r ≤ n,
    /// n ≥ `conformalMinimum` q (99 for q = 0.99)
    | ConformalRank

/// r = ⌈(n + 1)q⌉ (at least 1), the 1-based rank of γ among n distances under `ConformalRank`; above n
/// when n is too small for q. A 1e-9 allowance keeps 0.99·100 = 99.00000000000001 at 99.
let conformalRank (quantile: float) (n: int) = max 1 (int (ceil (float (n + 1) * quantile - 1e-9)))

/// The fewest distances `ConformalRank` can read γ from at quantile q < 1: the least n with
/// ⌈(n + 1)q⌉ ≤ n, i.e. n ≥ q/(1 − q).
let conformalMinimum (quantile: float) =
    if not (quantile >= 0.0 && quantile < 1.0) then invalidArg (nameof quantile) $"the quantile must be in [0, 1), got {quantile}"
    max 1 (int (ceil (quantile / (1.0 - quantile) - 1e-9)))

/// n clean distances, refused when a conformal γ at quantile q cannot be read off so few.
let private enoughForConformal (quantile: float) (n: int) =
    let need = conformalMinimum quantile
    if n < need then
        invalidArg "cleanDistances" $"a conformal threshold for a clean FPR of {1.0 - quantile:G3} needs at least {need} clean distances, got {n}"
    n

/// γ by `rule` for a target clean FPR of 1 − q. Flag a sample when d > γ.
let thresholdBy (rule: ThresholdRule) (quantile: float) (cleanDistances: float[]) : float =
    match rule with
    | Interpolated -> threshold quantile cleanDistances
    | ConformalRank ->
        let sorted = sortedFinite cleanDistances
        sorted.[conformalRank quantile (enoughForConformal quantile sorted.Length) - 1]

/// The probability that a new clean input exchangeable with n clean distances lands above γ of `rule`
/// (over draws of all n + 1): exact for `ConformalRank` whatever the distribution; for `Interpolated`
/// exact for uniformly distributed distances (E γ = (h + 1)/(n + 1), h = (n − 1)q) and close for
/// smooth ones — n(1 − q) + q over n + 1, i.e. α + (1 − 2α)/(n + 1).
let expectedFpr (rule: ThresholdRule) (quantile: float) (n: int) : float =
    if n < 1 then invalidArg (nameof n) $"at least one clean distance, got {n}"
    match rule with
    | Interpolated -> (float n - float (n - 1) * quantile) / float (n + 1)
    | ConformalRank -> float (n + 1 - conformalRank quantile (enoughForConformal quantile n)) / float (n + 1)

// ---- features ---------------------------------------------------------------------------------

/// How a head's visual and prompt attention sums become one feature.
type Feature =
    /// v / p, the paper's S[ℓ,h] (heavy-tailed).
    | Ratio
    /// log((v + ε) / (p + ε)): the ratio on a log scale, symmetric in v and p.
    | LogRatio
    /// v / (v + p): the visual share of the attended text+image mass, in [0, 1].
    | VisualShare

/// ε that keeps the features finite at v = 0 or p = 0; far below any real attention sum.
let featureEpsilon = 1e-12

/// One head's feature from its summed post-softmax attention to the visual span (v) and to the
/// prompt span (p). Both must be finite and ≥ 0. At v = p = 0: Ratio 0, LogRatio 0, VisualShare ½.
let featureOf (feature: Feature) (visual: float) (prompt: float) : float =
    if not (Double.IsFinite visual && visual >= 0.0) then
        invalidArg (nameof visual) $"the visual attention sum must be finite and >= 0, got {visual}"
    if not (Double.IsFinite prompt && prompt >= 0.0) then
        invalidArg (nameof prompt) $"the prompt attention sum must be finite and >= 0, got {prompt}"
    match feature with
    | Ratio -> visual / (prompt + featureEpsilon)
    | LogRatio -> log ((visual + featureEpsilon) / (prompt + featureEpsilon))
    | VisualShare -> (visual + featureEpsilon) / (visual + prompt + 2.0 * featureEpsilon)

/// The feature vector of one sample from per-(layer, head) visual and prompt sums. [L_det·H]
let featuresOf (feature: Feature) (visual: float[]) (prompt: float[]) : float[] =
    if visual.Length <> prompt.Length then
        invalidArg (nameof prompt) $"{visual.Length} visual sums but {prompt.Length} prompt sums"
    Array.map2 (featureOf feature) visual prompt
