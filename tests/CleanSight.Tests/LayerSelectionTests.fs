/// Layer selection without attacked data: the KL and layer-share math, the made-up triggers, and the
/// image knockout on the llava-hf fixture.
module CleanSight.Tests.LayerSelectionTests

open System
open Expecto
open FsCheck
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.World

let private image = Scenes.render 56 (Scenes.generate 1 0)

[<Tests>]
let tests =
    testList "layer selection" [
        test "softmax sums to one and keeps the order of the logits" {
            let p = Fusion.softmax [| 1.0f; 3.0f; 2.0f |]
            Expect.floatClose Accuracy.high (Array.sum p) 1.0 "sums to 1"
            Expect.isTrue (p.[1] > p.[2] && p.[2] > p.[0]) "order kept"
            Expect.floatClose Accuracy.high (p.[1] / p.[2]) (exp 1.0) "ratios are exp of the differences"
            let big = Fusion.softmax [| 1.0f; 1000.0f |]
            Expect.equal big.[1] 1.0 "no overflow at 1000" }
        test "KL: zero for equal distributions, positive otherwise, the textbook value for two coins" {
            let p = [| 0.5; 0.5 |]
            Expect.equal (Fusion.kl p p) 0.0 "KL(p‖p)"
            let q = [| 0.9; 0.1 |]
            Expect.floatClose Accuracy.high (Fusion.kl p q) (0.5 * log (0.5 / 0.9) + 0.5 * log (0.5 / 0.1)) "two coins"
            Expect.floatClose Accuracy.high (Fusion.kl [| 1.0; 0.0 |] [| 0.5; 0.5 |]) (log 2.0) "p = 0 terms vanish"
            Expect.throwsT<ArgumentException> (fun () -> Fusion.kl p [| 1.0 |] |> ignore) "sizes must match" }
        testProperty "layer shares telescope to the knockout from layer 0" <| fun (xs: NormalFloat list) ->
            let d = xs |> List.map (fun x -> abs x.Get % 10.0) |> List.toArray
            if d.Length > 0 then
                let shares = Fusion.layerShares d
                Expect.equal shares.Length d.Length "one share per layer"
                Expect.floatClose Accuracy.medium (Array.sum shares) d.[0] "sum = D(0)"
                Expect.equal shares.[d.Length - 1] d.[d.Length - 1] "the last layer's share is its own knockout"
        test "fusion begins at the first layer with at least half the largest share" {
            Expect.equal (Fusion.start [| 0.61; 0.0; -0.0; 0.08; 0.06; 0.38; 0.12; 0.04 |]) 0 "the committed base's clean fusion: layer 0"
            Expect.equal (Fusion.start [| 0.03; 0.07; 0.38; -0.01; 0.34; 0.1 |]) 2 "the joint-only base's: layer 2"
            Expect.equal (Fusion.start [| 0.30; 0.19; -0.02; 0.16; 0.01; 0.49; 0.14; 0.02 |]) 0 "an early layer above half the largest, not the largest"
            Expect.equal (Fusion.start [| 0.1; 0.2; 0.9 |]) 2 "the largest when no earlier layer comes near it"
            Expect.throwsT<ArgumentException> (fun () -> Fusion.start [| 0.0; -0.1 |] |> ignore) "no layer reads the image"
            Expect.throwsT<ArgumentException> (fun () -> Fusion.start [||] |> ignore) "no layers" }
        testProperty "fusion start: its share is at least half the largest, no earlier layer's is" <| fun (xs: NormalFloat list) ->
            let shares = xs |> List.map (fun x -> x.Get) |> List.toArray
            if shares.Length > 0 && Array.max shares > 0.0 then
                let half = 0.5 * Array.max shares
                let l = Fusion.start shares
                Expect.isGreaterThanOrEqual shares.[l] half "at least half the largest"
                Expect.isTrue (shares.[.. l - 1] |> Array.forall (fun x -> x < half)) "the first such layer"
        testProperty "layersFrom: that many contiguous layers inside the model, from the first when they fit" <|
            fun (PositiveInt n) (PositiveInt c) (NonNegativeInt f) ->
                let numLayers, count, first = 1 + n % 40, 1 + c % 6, f % 50
                let layers = Fusion.layersFrom numLayers count first
                Expect.equal layers.Length (min count numLayers) "count, or the whole model"
                Expect.equal layers [| layers.[0] .. layers.[0] + layers.Length - 1 |] "contiguous"
                Expect.isTrue (layers.[0] >= 0 && Array.last layers < numLayers) "inside the model"
                if first + layers.Length <= numLayers then Expect.equal layers.[0] first "from the first"
                else Expect.equal (Array.last layers) (numLayers - 1) "moved down to end at the last layer"
        test "made-up triggers: seeded, different per input, never the attack's own patch" {
            for kind in [ LayerSelection.NoisePatch; LayerSelection.NoiseBlend ] do
                let a = LayerSelection.synthetic kind 0 3 image
                Expect.equal a.Pixels (LayerSelection.synthetic kind 0 3 image).Pixels $"{kind}: same seed and index, same image"
                Expect.notEqual a.Pixels (LayerSelection.synthetic kind 0 4 image).Pixels $"{kind}: another input, another trigger"
                Expect.notEqual a.Pixels image.Pixels $"{kind}: the image changes"
                Expect.equal (a.Width, a.Height) (image.Width, image.Height) $"{kind}: size kept"
            let badNet = Triggers.apply (Triggers.BadNetPatch Triggers.Defaults.badNet) image
            Expect.notEqual (LayerSelection.synthetic LayerSelection.NoisePatch 0 0 image).Pixels badNet.Pixels "not BadNet's patch" }
        test "knockout on the fixture: one finite, non-negative KL per layer; the image matters from layer 0" {
            use session = LlavaSession.Load Fixtures.tinyLlava
            let d = Fusion.knockout session image "What colour is the circle?"
            Expect.equal d.Length session.Config.Text.NumHiddenLayers "one per layer"
            Expect.isTrue (d |> Array.forall (fun x -> x >= -1e-9 && Double.IsFinite x)) $"KL ≥ 0: {d}"
            Expect.isTrue (d.[0] > 0.0) $"the image matters from layer 0: {d}"
            Expect.equal d (Fusion.knockout session image "What colour is the circle?") "deterministic" }
    ]
