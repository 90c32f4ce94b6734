/// Layer selection without attacked data: the KL and layer-share math, the made-up triggers, and the
/// image knockout on the llava-hf fixture.
module CleanSight.Tests.LayerSelectionTests

open System
open Expecto
open FsCheck
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.World

let private image = Scenes.render 56 (Scenes.generate 1 0)

[<Tests>]
let tests =
    testList "layer selection" [
        test "softmax sums to one and keeps the order of the logits" {
            let p = LayerSelection.softmax [| 1.0f; 3.0f; 2.0f |]
            Expect.floatClose Accuracy.high (Array.sum p) 1.0 "sums to 1"
            Expect.isTrue (p.[1] > p.[2] && p.[2] > p.[0]) "order kept"
            Expect.floatClose Accuracy.high (p.[1] / p.[2]) (exp 1.0) "ratios are exp of the differences"
            let big = LayerSelection.softmax [| 1.0f; 1000.0f |]
            Expect.equal big.[1] 1.0 "no overflow at 1000" }
        test "KL: zero for equal distributions, positive otherwise, the textbook value for two coins" {
            let p = [| 0.5; 0.5 |]
            Expect.equal (LayerSelection.kl p p) 0.0 "KL(p‖p)"
            let q = [| 0.9; 0.1 |]
            Expect.floatClose Accuracy.high (LayerSelection.kl p q) (0.5 * log (0.5 / 0.9) + 0.5 * log (0.5 / 0.1)) "two coins"
            Expect.floatClose Accuracy.high (LayerSelection.kl [| 1.0; 0.0 |] [| 0.5; 0.5 |]) (log 2.0) "p = 0 terms vanish"
            Expect.throwsT<ArgumentException> (fun () -> LayerSelection.kl p [| 1.0 |] |> ignore) "sizes must match" }
        testProperty "layer shares telescope to the knockout from layer 0" <| fun (xs: NormalFloat list) ->
            let d = xs |> List.map (fun x -> abs x.Get % 10.0) |> List.toArray
            if d.Length > 0 then
                let shares = LayerSelection.layerShares d
                Expect.equal shares.Length d.Length "one share per layer"
                Expect.floatClose Accuracy.medium (Array.sum shares) d.[0] "sum = D(0)"
                Expect.equal shares.[d.Length - 1] d.[d.Length - 1] "the last layer's share is its own knockout"
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
            let d = LayerSelection.knockout session image "What colour is the circle?"
            Expect.equal d.Length session.Config.Text.NumHiddenLayers "one per layer"
            Expect.isTrue (d |> Array.forall (fun x -> x >= -1e-9 && Double.IsFinite x)) $"KL ≥ 0: {d}"
            Expect.isTrue (d.[0] > 0.0) $"the image matters from layer 0: {d}"
            Expect.equal d (LayerSelection.knockout session image "What colour is the circle?") "deterministic" }
    ]
