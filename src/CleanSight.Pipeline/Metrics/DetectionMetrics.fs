/// Detection quality of a score d (higher = more suspicious) on clean inputs (negatives) and
/// triggered inputs (positives): AUROC, TPR/FPR at a threshold, and the ROC curve for charts.
/// The decision rule everywhere is `flagged = d > threshold` (strict), as in the defense.
module CleanSight.Pipeline.Metrics.DetectionMetrics

open System

let private requireScores (name: string) (scores: float[]) =
    if isNull scores || scores.Length = 0 then invalidArg name $"{name}: need at least one score, got 0"
    scores |> Array.iteri (fun i s -> if Double.IsNaN s then invalidArg name $"{name}: score {i} of {scores.Length} is NaN")

/// AUROC = P(positive scores higher than negative) + ½·P(tie), the Mann–Whitney U statistic
/// divided by n₋·n₊. Computed from mid-ranks in O(n log n). ±∞ scores are allowed, NaN is not.
let auroc (negatives: float[]) (positives: float[]) : float =
    requireScores (nameof negatives) negatives
    requireScores (nameof positives) positives
    // Pool (score, isPositive), sort by score, give each tie group its mid-rank (1-based).
    let pooled =
        Array.append (negatives |> Array.map (fun s -> s, false)) (positives |> Array.map (fun s -> s, true))
        |> Array.sortBy fst
    let rankSumPositives =
        pooled
        |> Array.mapi (fun i x -> i, x)
        |> Array.groupBy (fun (_, (s, _)) -> s) // sorted input → groups in ascending order
        |> Array.sumBy (fun (_, group) ->
            let first = fst group.[0]
            let midRank = float first + 1.0 + float (group.Length - 1) / 2.0
            let nPositive = group |> Array.filter (fun (_, (_, p)) -> p) |> Array.length
            midRank * float nPositive)
    let nNeg, nPos = float negatives.Length, float positives.Length
    (rankSumPositives - nPos * (nPos + 1.0) / 2.0) / (nNeg * nPos)

/// `auroc` of a score read from each item.
let aurocBy (score: 'T -> float) (negatives: 'T[]) (positives: 'T[]) : float =
    auroc (Array.map score negatives) (Array.map score positives)

/// Confusion counts and rates at one threshold (flagged = d > Threshold).
type Rates =
    { Threshold: float
      TruePositives: int   // positives flagged
      FalsePositives: int  // negatives flagged
      Positives: int
      Negatives: int
      Tpr: float           // TruePositives / Positives
      Fpr: float }         // FalsePositives / Negatives

/// TPR and FPR of the rule `d > threshold`.
let rates (threshold: float) (negatives: float[]) (positives: float[]) : Rates =
    if Double.IsNaN threshold then invalidArg (nameof threshold) "the threshold is NaN"
    requireScores (nameof negatives) negatives
    requireScores (nameof positives) positives
    let flagged (xs: float[]) = xs |> Array.filter (fun d -> d > threshold) |> Array.length
    let tp, fp = flagged positives, flagged negatives
    { Threshold = threshold
      TruePositives = tp
      FalsePositives = fp
      Positives = positives.Length
      Negatives = negatives.Length
      Tpr = float tp / float positives.Length
      Fpr = float fp / float negatives.Length }

/// `rates` of a score read from each item.
let ratesBy (score: 'T -> float) (threshold: float) (negatives: 'T[]) (positives: 'T[]) : Rates =
    rates threshold (Array.map score negatives) (Array.map score positives)

/// One ROC point: the rates of `d > Threshold`.
type RocPoint = { Threshold: float; Fpr: float; Tpr: float }

/// The ROC curve from (0, 0) to (1, 1): one point per distinct score as threshold, in descending
/// order (the first, the maximum score, flags nothing), then a last point at Threshold = −∞ that
/// flags everything (a score of −∞ included). Ties move both rates at once, so the trapezoid area
/// under these points equals `auroc`.
let rocCurve (negatives: float[]) (positives: float[]) : RocPoint[] =
    requireScores (nameof negatives) negatives
    requireScores (nameof positives) positives
    // Distinct scores, descending, with how many negatives and positives sit exactly there.
    let groups =
        Array.append (negatives |> Array.map (fun s -> s, false)) (positives |> Array.map (fun s -> s, true))
        |> Array.groupBy fst
        |> Array.map (fun (s, g) -> s, (g |> Array.filter (snd >> not)).Length, (g |> Array.filter snd).Length)
        |> Array.sortByDescending (fun (s, _, _) -> s)
    // Counts flagged at threshold k = all scores in the groups before k (strictly greater).
    let flagged = groups |> Array.scan (fun (fp, tp) (_, n, p) -> fp + n, tp + p) (0, 0)
    let thresholds = Array.append (groups |> Array.map (fun (s, _, _) -> s)) [| -infinity |]
    Array.map2 (fun t (fp, tp) ->
        { Threshold = t
          Fpr = float fp / float negatives.Length
          Tpr = float tp / float positives.Length }) thresholds flagged
