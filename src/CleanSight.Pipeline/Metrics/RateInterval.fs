/// How precisely a measured rate (ASR, TPR, FPR: k hits of n inputs) is known: the Wilson score
/// interval. On the demo's 100 clean inputs one false positive is a point, and one in 100 (1 %) fits
/// a true rate anywhere from 0.2 to 5.4 %; the interval says so beside every rate of metrics.json.
/// Wilson's rather than the normal approximation's: it stays inside [0, 1] and is not empty at k = 0
/// or k = n.
module CleanSight.Pipeline.Metrics.RateInterval

open System

/// The normal quantile of a two-sided 95 % interval.
let z95 = 1.959963984540054

/// The Wilson score interval of k hits in n trials at normal quantile z:
/// (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), p̂ = k/n.
let wilson (z: float) (k: int) (n: int) : float * float =
    if n < 1 then invalidArg (nameof n) $"a rate needs at least one trial, got {n}"
    if k < 0 || k > n then invalidArg (nameof k) $"hits must be in [0, {n}], got {k}"
    if not (z > 0.0 && Double.IsFinite z) then invalidArg (nameof z) $"z must be positive, got {z}"
    let n' = float n
    let p = float k / n'
    let z2 = z * z
    let scale = 1.0 + z2 / n'
    let centre = (p + z2 / (2.0 * n')) / scale
    let half = z * sqrt (p * (1.0 - p) / n' + z2 / (4.0 * n' * n')) / scale
    // exactly 0 at k = 0 and 1 at k = n (the formula gives them up to rounding)
    (if k = 0 then 0.0 else max 0.0 (centre - half)), (if k = n then 1.0 else min 1.0 (centre + half))

/// The 95 % interval of k hits in n trials.
let ci95 (k: int) (n: int) = wilson z95 k n

/// An interval as percentages for tables and logs: "1.6–9.8".
let percentText (low: float, high: float) = $"{100.0 * low:F1}–{100.0 * high:F1}"
