/// The detector's pure math on hand-made attention rows (default layers, Ω, per-head features) and
/// the CleanSight policy end to end on rows whose every number is chosen here.
module CleanSight.Tests.DetectorTests

open System
open System.Collections.Generic
open Expecto
open CleanSight.Core.Inference
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening

// ---- hand-made rows ------------------------------------------------------------------------------
// A 12-token prompt: BOS at 0, text at 1, image at 2..7, text at 8..11, query = 11.
// Positions 4 and 7 were excluded at an earlier layer, so they are absent from KeyPositions.

let private first, last = 2L, 7L
let private keys = [| 0L; 1L; 2L; 3L; 5L; 6L; 8L; 9L; 10L; 11L |]

/// A row from per-head weights, one array per head (each as long as `keys`).
let private row layer (heads: float32[][]) =
    for h in heads do
        if h.Length <> keys.Length then failwithf "test row: %d weights for %d keys" h.Length keys.Length
    AttentionRow(layer, heads.Length, 11L, keys, Array.concat heads)

//                            0      1      2      3      5      6      8      9      10     11
let private head0 = [| 0.30f; 0.05f; 0.02f; 0.25f; 0.01f; 0.03f; 0.10f; 0.04f; 0.10f; 0.10f |]
let private head1 = [| 0.40f; 0.02f; 0.15f; 0.01f; 0.02f; 0.00f; 0.10f; 0.10f; 0.10f; 0.10f |]
let private twoHeads layer = row layer [| head0; head1 |]

/// Visual and prompt sums of one head, by hand: image = positions 2..7, prompt = after 7.
let private sumsByHand (weights: float32[]) =
    let mutable v, p = 0.0, 0.0
    keys |> Array.iteri (fun j pos ->
        if pos >= first && pos <= last then v <- v + float weights.[j]
        elif pos > last then p <- p + float weights.[j])
    v, p

let private onAttention (policy: IAttentionPolicy) (r: AttentionRow) = policy.OnAttention r |> Seq.toArray

[<Tests>]
let tests =
    testList "detector" [
        testList "default layers" [
            test "LLaVA-7B's 32 layers → the paper's 10–12 (1-indexed)" {
                Expect.equal (Detector.defaultLayers 32) [| 9; 10; 11 |] "32 layers" }
            test "40 layers (LLaVA-13B) → 11, 12, 13 (9/32 · 40 = 11.25)" {
                Expect.equal (Detector.defaultLayers 40) [| 11; 12; 13 |] "40 layers" }
            test "8 layers (the tiny world) → 2, 3, 4" {
                Expect.equal (Detector.defaultLayers 8) [| 2; 3; 4 |] "8 layers" }
            test "2 layers → both" {
                Expect.equal (Detector.defaultLayers 2) [| 0; 1 |] "2 layers" }
            test "1 layer → the only one" {
                Expect.equal (Detector.defaultLayers 1) [| 0 |] "1 layer" }
            testPropertyWithConfig { FsCheckConfig.defaultConfig with maxTest = 200 }
                "always min(3, n) contiguous layers inside the model, starting near 9/32 of the depth" <| fun (n: int) ->
                let n = 1 + abs (n % 80)
                let layers = Detector.defaultLayers n
                Expect.equal layers.Length (min 3 n) $"{n} layers: count"
                Expect.isTrue (layers |> Array.forall (fun l -> l >= 0 && l < n)) $"{n} layers: {layers} inside [0, {n - 1}]"
                Expect.isTrue (layers |> Array.pairwise |> Array.forall (fun (a, b) -> b = a + 1)) $"{n} layers: {layers} contiguous"
                // the start is 9/32 of the depth, rounded, pulled back so the block ends at the last layer at most
                let ideal = min (9.0 / 32.0 * float n) (float (n - layers.Length))
                Expect.isLessThanOrEqual (abs (float layers.[0] - ideal)) 0.5 $"{n} layers: start {layers.[0]} vs {ideal}"
        ]

        testList "--layers" [
            test "a list of layers inside the model, in the order given" {
                Expect.equal (Detector.parseLayers 8 "0") (Ok [| 0 |]) "one layer"
                Expect.equal (Detector.parseLayers 8 " 4, 2,3 ") (Ok [| 4; 2; 3 |]) "spaces, order kept"
                Expect.equal (Detector.parseLayers 8 "7") (Ok [| 7 |]) "the last layer" }
            test "absent, fusion, or a list: what calibrate and demo ask for" {
                Expect.equal (Calibration.parseLayerRequest 8 None) (Ok Calibration.AtRelativeDepth) "absent: the relative depth"
                Expect.equal (Calibration.parseLayerRequest 8 (Some "fusion")) (Ok Calibration.ByCleanFusion) "fusion"
                Expect.equal (Calibration.parseLayerRequest 8 (Some "0,1")) (Ok(Calibration.NamedLayers [| 0; 1 |])) "a list"
                Expect.isError (Calibration.parseLayerRequest 8 (Some "fusions")) "a misspelt rule is refused" }
            test "anything else is refused with the reason" {
                let refused text =
                    match Detector.parseLayers 8 text with
                    | Ok layers -> failtest $"'{text}' accepted as {layers}"
                    | Error problem -> problem
                Expect.stringContains (refused "8") "between 0 and 7 for this 8-layer model" "past the last layer"
                Expect.stringContains (refused "-1") "between 0 and 7" "negative"
                Expect.stringContains (refused "2,x") "not a comma-separated list" "not a number"
                Expect.stringContains (refused "") "not a comma-separated list" "empty"
                Expect.stringContains (refused "2.5") "not a comma-separated list" "not an integer"
                Expect.stringContains (refused "2,3,2") "names a layer twice" "duplicate" }
        ]

        testList "Ω (pruned)" [
            test "union over heads, image positions only, strict threshold" {
                // τ = 0.1: head 0 picks 3 (0.25), head 1 picks 2 (0.15); BOS 0.3/0.4 is not an image token
                Expect.equal (Detector.pruned (Detector.Absolute 0.1) first last (twoHeads 2)) [| 2L; 3L |] "τ = 0.1"
                // τ = 0.025: image weights above it: 2 (0.15), 3 (0.25), 6 (0.03); 5 peaks at 0.02 → kept
                Expect.equal (Detector.pruned (Detector.Absolute 0.025) first last (twoHeads 2)) [| 2L; 3L; 6L |] "τ = 0.025"
                // strict: 0.25 is exact in float32, and a weight equal to τ is not above it
                Expect.equal (Detector.pruned (Detector.Absolute 0.25) first last (twoHeads 2)) [||] "τ = 0.25 = the largest image weight"
                Expect.equal (Detector.pruned (Detector.Absolute 0.2499) first last (twoHeads 2)) [| 3L |] "τ just below it"
                Expect.equal (Detector.pruned (Detector.Absolute 0.5) first last (twoHeads 2)) [||] "τ above every weight"
            }
            test "one head alone gives its own subset; the union is their union" {
                let only0 = Detector.pruned (Detector.Absolute 0.1) first last (row 2 [| head0 |])
                let only1 = Detector.pruned (Detector.Absolute 0.1) first last (row 2 [| head1 |])
                Expect.equal only0 [| 3L |] "head 0"
                Expect.equal only1 [| 2L |] "head 1"
                Expect.equal (Detector.pruned (Detector.Absolute 0.1) first last (twoHeads 2)) (Array.append only1 only0 |> Array.sort) "union"
            }
            test "keys excluded earlier (4 and 7) never come back, even at τ = 0" {
                let omega = Detector.pruned (Detector.Absolute 0.0) first last (twoHeads 2)
                Expect.equal omega [| 2L; 3L; 5L; 6L |] "the present image keys with weight > 0"
                Expect.isFalse (Array.contains 4L omega || Array.contains 7L omega) "absent keys stay absent"
            }
            test "relative τ = r / T with T the keys present" {
                // T = 10 keys present: r = 1.0 → τ = 0.1, the same set as Absolute 0.1
                Expect.equal (Detector.tauValue (Detector.RelativeToUniform 1.0) 10) 0.1 "τ = r / T"
                Expect.equal (Detector.pruned (Detector.RelativeToUniform 1.0) first last (twoHeads 2))
                             (Detector.pruned (Detector.Absolute 0.1) first last (twoHeads 2)) "r = 1 ≡ τ = 0.1 at 10 keys"
                // r = 2 → τ = 0.2: only 3 (0.25)
                Expect.equal (Detector.pruned (Detector.RelativeToUniform 2.0) first last (twoHeads 2)) [| 3L |] "r = 2"
                Expect.equal (Detector.tauValue (Detector.Absolute 0.003) 10) 0.003 "absolute τ ignores T"
            }
        ]

        testList "row features" [
            test "Ratio = visual sum / prompt sum per head (BOS and text before the image in neither)" {
                let f = Detector.rowFeatures Ratio first last (twoHeads 1)
                Expect.equal f.Length 2 "one feature per head"
                for h, weights in [ 0, head0; 1, head1 ] do
                    let v, p = sumsByHand weights
                    Expect.floatClose Accuracy.veryHigh f.[h] (v / p) $"head {h}: {v} / {p}"
                // by hand for head 0: v = .02 + .25 + .01 + .03 = .31, p = .10 + .04 + .10 + .10 = .34
                Expect.floatClose Accuracy.medium f.[0] (0.31 / 0.34) "head 0 by hand"
            }
            test "VisualShare and LogRatio are the same sums through their transforms" {
                let v, p = sumsByHand head1
                Expect.floatClose Accuracy.veryHigh (Detector.rowFeatures VisualShare first last (twoHeads 1)).[1] (v / (v + p)) "visual share"
                Expect.floatClose Accuracy.veryHigh (Detector.rowFeatures LogRatio first last (twoHeads 1)).[1] (log (v / p)) "log ratio"
            }
        ]

        testList "CleanSight policy on hand-made rows" (
            // Detection layers 1 and 2 of a 3-layer model; τ = 0.1.
            let layers = [| 1; 2 |]
            let tau = Detector.Absolute 0.1
            let expectedFeatures = Array.append (Detector.rowFeatures Ratio first last (twoHeads 1)) (Detector.rowFeatures Ratio first last (twoHeads 2))
            /// A reference fitted on clean vectors around `centre`, and the distance of the rows' features to it.
            let reference (centre: float[]) =
                let clean = [| for k in 0 .. 7 -> centre |> Array.mapi (fun i c -> c + 0.01 * float ((k * 7 + i * 3) % 5 - 2)) |]
                let r = fit Diagonal clean
                r, distance r expectedFeatures
            let runPolicy (detection: CleanSightPolicy.Detection option) force =
                let policy = CleanSightPolicy.Policy(layers, Ratio, tau, first, last, detection, force)
                let p = policy :> IAttentionPolicy
                Expect.equal ([ 0 .. 2 ] |> List.filter p.Observes) [ 1; 2 ] "observes exactly the detection layers"
                let atFirst = onAttention p (twoHeads 1)
                Expect.isEmpty atFirst "nothing is excluded before the last detection layer"
                let atLast = onAttention p (twoHeads 2)
                policy.Verdict, atLast
            [ test "features are the rows' features concatenated in layer order" {
                  let verdict, _ = runPolicy None false
                  Expect.equal verdict.Features expectedFeatures "layer 1's heads, then layer 2's"
                  Expect.notEqual (Detector.rowFeatures Ratio first last (twoHeads 1)) (Detector.rowFeatures Ratio first last (row 1 [| head1; head0 |]))
                      "(sanity: head order matters, so the concatenation order is observable)" }
              test "distance below the threshold → not flagged, nothing excluded" {
                  let r, d = reference expectedFeatures
                  let verdict, excluded = runPolicy (Some { Reference = r; Threshold = d + 1.0; Length = None }) false
                  Expect.equal verdict.Distance (Some d) "the distance to the reference"
                  Expect.isFalse verdict.Flagged "not flagged"
                  Expect.isEmpty excluded "nothing excluded"
                  Expect.isEmpty verdict.Pruned "Ω empty" }
              test "distance above the threshold → flagged, excludes exactly Ω of the last detection layer" {
                  let r, d = reference (expectedFeatures |> Array.map (fun x -> x * 3.0 + 1.0))
                  Expect.isGreaterThan d 1.0 "(the rows are far from this reference)"
                  let verdict, excluded = runPolicy (Some { Reference = r; Threshold = d * 0.5; Length = None }) false
                  Expect.isTrue verdict.Flagged "flagged"
                  let omega = Detector.pruned tau first last (twoHeads 2)
                  Expect.equal omega [| 2L; 3L |] "(Ω at τ = 0.1)"
                  Expect.equal (Array.sort excluded) omega "returned to the model"
                  Expect.equal verdict.Pruned omega "recorded in the verdict" }
              test "distance equal to the threshold is not flagged (flag when d > γ)" {
                  let r, d = reference expectedFeatures
                  let verdict, excluded = runPolicy (Some { Reference = r; Threshold = d; Length = None }) false
                  Expect.isFalse verdict.Flagged "d = γ"
                  Expect.isEmpty excluded "nothing excluded" }
              test "observe-only (no detection) never excludes, however strong the attention" {
                  let verdict, excluded = runPolicy None false
                  Expect.isEmpty excluded "nothing excluded"
                  Expect.equal verdict.Distance None "no distance"
                  Expect.isFalse verdict.Flagged "not flagged"
                  Expect.isEmpty verdict.Pruned "Ω empty" }
              test "force purifies without detection (prune every input)" {
                  let verdict, excluded = runPolicy None true
                  Expect.isTrue verdict.Flagged "flagged"
                  Expect.equal verdict.Distance None "no distance computed"
                  Expect.equal (Array.sort excluded) [| 2L; 3L |] "Ω excluded" }
              test "force with a detection that would not flag still purifies" {
                  let r, d = reference expectedFeatures
                  let verdict, excluded = runPolicy (Some { Reference = r; Threshold = d + 1.0; Length = None }) true
                  Expect.equal verdict.Distance (Some d) "distance still reported"
                  Expect.isTrue verdict.Flagged "flagged"
                  Expect.equal (Array.sort excluded) [| 2L; 3L |] "Ω excluded" } ])
    ]
