/// CleanSight as an attention policy: observe the last prompt token at the detection layers, turn
/// the rows into the feature vector, compare it with the clean reference, and — only when flagged —
/// exclude the attention-stealing image tokens from the last detection layer on. One prefill, no
/// extra forward pass: detection and purification happen inside it.
module CleanSight.Pipeline.Defense.CleanSightPolicy

open System.Collections.Generic
open CleanSight.Core.Inference
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening

/// What the detector compares against (from a calibration file): the clean reference, its threshold,
/// and the prompt-length model the features are conditioned on first (`None`: unconditioned).
type Detection = { Reference: Reference; Threshold: float; Length: PromptLength.Model option }

/// The distance d of an input's features, its prompt having `textTokens` tokens after the image.
let distanceOf (d: Detection) (textTokens: int) (x: float[]) =
    distance d.Reference (PromptLength.apply d.Length textTokens x)

/// What the policy saw and did for one input.
type Verdict =
    { Features: float[]
      /// text tokens after the image, the last prompt token included (what the prompt-length model reads)
      TextTokens: int
      Distance: float option
      Flagged: bool
      Pruned: int64[] }

/// The policy for one input. `detection = None` only observes (calibration); `force` purifies
/// without detection (the prune-every-input baseline).
type Policy(layers: int[], feature: Feature, tau: Detector.Tau, first: int64, last: int64,
            detection: Detection option, force: bool) =
    let features = List<float>()
    let mutable verdict = { Features = [||]; TextTokens = 0; Distance = None; Flagged = false; Pruned = [||] }
    let lastLayer = Array.max layers

    member _.Verdict = verdict

    interface IAttentionPolicy with
        member _.Observes layer = Array.contains layer layers
        member _.OnAttention row =
            features.AddRange(Detector.rowFeatures feature first last row)
            if row.Layer <> lastLayer then [||]
            else
                let f = features.ToArray()
                let text = Detector.textAfter last row
                let distance = detection |> Option.map (fun d -> distanceOf d text f)
                let flagged = force || (match detection, distance with Some d, Some x -> x > d.Threshold | _ -> false)
                let omega = if flagged then Detector.pruned tau first last row else [||]
                verdict <- { Features = f; TextTokens = text; Distance = distance; Flagged = flagged; Pruned = omega }
                omega :> IReadOnlyCollection<int64>
