/// The core against the fixture's independent PyTorch reference, and the invariants of the cache
/// and of token exclusion through the real forward.
module CleanSight.Tests.ModelTests

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open CleanSight.Core.Checkpoints
open CleanSight.Core.Inference
open CleanSight.Core.Model
open CleanSight.Core.Vision

let private expected = lazy (JsonDocument.Parse(File.ReadAllText(Path.Combine(Fixtures.tinyLlava, "expected.json"))).RootElement)
let private session = lazy (LlavaSession.Load Fixtures.tinyLlava)
let private floats (e: JsonElement) = [| for x in e.EnumerateArray() -> x.GetDouble() |]
let private ints (e: JsonElement) = [| for x in e.EnumerateArray() -> x.GetInt64() |]
let private case i = expected.Value.GetProperty("cases").[i]
let private image (c: JsonElement) = RgbImage.Load(Path.Combine(Fixtures.tinyLlava, c.GetProperty("image").GetString()))
let private question () = expected.Value.GetProperty("prompt_question").GetString()
let private promptIds () = session.Value.Prompt(question()).InputIds |> Array.map int64

/// |a − b| ≤ tol · max(|b|, 1): relative, with a unit floor so near-zero values are not over-weighted.
let private closeRel tol (actual: float[]) (reference: float[]) what =
    Expect.equal actual.Length reference.Length $"{what}: length"
    let worst = Array.map2 (fun (a: float) (b: float) -> abs (a - b) / max (abs b) 1.0) actual reference |> Array.max
    Expect.isLessThanOrEqual worst tol $"{what}: worst relative difference {worst}"

let private parity i =
    let c = case i
    let s = session.Value
    let ids = promptIds ()
    let gen = s.Generate(image c, question (), 6)
    [ test "input ids identical" { Expect.sequenceEqual ids (ints (expected.Value.GetProperty "input_ids")) "ids" }
      test "first-token logits within 1e-4" {
          closeRel 1e-4 (gen.FirstTokenLogits |> Array.map float) (floats (c.GetProperty "first_token_logits")) "logits" }
      test "6 greedy tokens identical" { Expect.sequenceEqual gen.OutputIds (ints (c.GetProperty "greedy_ids_6")) "greedy ids" }
      test "visual-to-prompt ratios per layer and head within 1e-4" {
          let layers = s.Config.Text.NumHiddenLayers
          let policy = RecordingPolicy [ 0 .. layers - 1 ]
          use pixels = s.Pixels(image c)
          (s.Model.Prefill(ids, pixels, policy)).Cache.Dispose()
          let first, last = AttentionRatio.ImageSpan(ids, int64 s.Config.ImageTokenIndex).ToTuple()
          let reference = c.GetProperty "last_token_visual_to_prompt_ratio_per_layer_head"
          for row in policy.Rows do
              let ours = AttentionRatio.VisualToPrompt(row, first, last)
              closeRel 1e-4 ours (floats reference.[row.Layer]) $"layer {row.Layer}"
          Expect.equal policy.Rows.Count layers "one row per layer" } ]

let private logitsClose (a: float32[]) (b: float32[]) what =
    closeRel 1e-4 (Array.map float a) (Array.map float b) what

/// The image token positions of a prompt.
let private imagePositions (s: LlavaSession) (ids: int64[]) =
    let struct (first, last) = AttentionRatio.ImageSpan(ids, int64 s.Config.ImageTokenIndex)
    [| first .. last |]

/// `steps` greedy tokens decoded with the cache, each step's logits checked against a fresh prefill
/// of the whole sequence so far under a fresh `policy ()` in `mode`.
let private decodingMatchesRecomputation (s: LlavaSession) (ids: int64[]) (pixels: torch.Tensor)
                                         (policy: unit -> IAttentionPolicy) (mode: ExclusionMode) (steps: int) =
    let pre = s.Model.Prefill(ids, pixels, policy (), mode)
    use cache = pre.Cache
    let mutable seq = ids
    let mutable logits = pre.Logits
    for step in 0 .. steps - 1 do
        let next = Generator.ArgMax logits
        seq <- Array.append seq [| next |]
        let cached = s.Model.Decode(next, int64 (seq.Length - 1), cache)
        let full = s.Model.Prefill(seq, pixels, policy (), mode)
        full.Cache.Dispose()
        logitsClose cached full.Logits $"{mode} step {step}"
        logits <- cached

[<Tests>]
let tests =
    testSequenced <| testList "model" [
        testList "parity with the fixture's PyTorch reference: probe_56.png" (parity 0)
        testList "parity with the fixture's PyTorch reference: probe_90x64.png (resize + crop)" (parity 1)

        test "cached decoding equals full recomputation" {
            let s = session.Value
            use pixels = s.Pixels(image (case 1))
            decodingMatchesRecomputation s (promptIds ()) pixels (fun () -> NoPolicy.Instance) ExclusionMode.Drop 5
        }

        test "excluding no tokens changes nothing" {
            let s = session.Value
            let ids = promptIds ()
            use pixels = s.Pixels(image (case 0))
            let plain = Generator.Greedy(s.Model, ids, pixels, 6)
            let none = Generator.Greedy(s.Model, ids, pixels, 6, FixedExclusionPolicy(1, [||]))
            Expect.sequenceEqual none.FirstTokenLogits plain.FirstTokenLogits "identical logits"
            Expect.sequenceEqual none.OutputIds plain.OutputIds "identical tokens"
        }

        test "excluding tokens from layer l (dropped from the cache) equals the masking reference" {
            let s = session.Value
            let ids = promptIds ()
            use pixels = s.Pixels(image (case 1))
            let image = imagePositions s ids
            for layer in 0 .. s.Config.Text.NumHiddenLayers - 1 do
                let excluded = image |> Array.filter (fun p -> p % 3L = 0L)
                let dropped = Generator.Greedy(s.Model, ids, pixels, 6, FixedExclusionPolicy(layer, excluded), ExclusionMode.Drop)
                let masked = Generator.Greedy(s.Model, ids, pixels, 6, FixedExclusionPolicy(layer, excluded), ExclusionMode.Mask)
                let plain = Generator.Greedy(s.Model, ids, pixels, 6)
                logitsClose dropped.FirstTokenLogits masked.FirstTokenLogits $"layer {layer} logits"
                Expect.sequenceEqual dropped.OutputIds masked.OutputIds $"layer {layer} tokens"
                Expect.isFalse (dropped.FirstTokenLogits = plain.FirstTokenLogits) $"layer {layer}: exclusion must change the logits"
        }

        test "dropping shortens the cache of the affected layers only" {
            let s = session.Value
            let ids = promptIds ()
            use pixels = s.Pixels(image (case 0))
            let pre = s.Model.Prefill(ids, pixels, FixedExclusionPolicy(1, [| 5L; 6L; 7L |]))
            use cache = pre.Cache
            Expect.equal (cache.Length 0) (int64 ids.Length) "layer 0 keeps every key"
            for l in 1 .. cache.Layers - 1 do
                Expect.equal (cache.Length l) (int64 ids.Length - 3L) $"layer {l} lost three keys"
        }

        test "uniform attention over a single key changes nothing (the explicit path agrees with the kernel)" {
            let s = session.Value
            let ids = promptIds ()
            use pixels = s.Pixels(image (case 0))
            let plain = Generator.Greedy(s.Model, ids, pixels, 6)
            let one = Generator.Greedy(s.Model, ids, pixels, 6, UniformAttentionPolicy(0, [| (imagePositions s ids).[0] |]))
            logitsClose one.FirstTokenLogits plain.FirstTokenLogits "first-token logits"
            Expect.sequenceEqual one.OutputIds plain.OutputIds "tokens"
        }

        test "uniform visual attention: later rows are flat over the image, keep its share, and change the output" {
            let s = session.Value
            let ids = promptIds ()
            use pixels = s.Pixels(image (case 1))
            let image = imagePositions s ids
            let from = 1
            let layers = [ 0 .. s.Config.Text.NumHiddenLayers - 1 ]
            let plainRows = RecordingPolicy layers
            let plain = Generator.Greedy(s.Model, ids, pixels, 6, plainRows)
            let rows = RecordingPolicy(layers, UniformAttentionPolicy(from, image))
            let flat = Generator.Greedy(s.Model, ids, pixels, 6, rows)
            for row in rows.Rows do
                for h in 0 .. row.Heads - 1 do
                    let visual = image |> Array.map (fun p -> float row.[h, int p])
                    let total = Seq.init row.Keys (fun j -> float row.[h, j]) |> Seq.sum
                    Expect.floatClose Accuracy.medium total 1.0 $"layer {row.Layer} head {h}: a distribution"
                    let spread = Array.max visual - Array.min visual
                    if row.Layer >= from then
                        Expect.isLessThan spread 1e-6 $"layer {row.Layer} head {h}: flat over the image"
                    else
                        Expect.equal row.Weights plainRows.Rows.[row.Layer].Weights $"layer {row.Layer}: before the policy's layer, untouched"
            // layer `from` itself: same scores, so the image's share is the plain model's
            let plainRow, flatRow = plainRows.Rows.[from], rows.Rows.[from]
            for h in 0 .. flatRow.Heads - 1 do
                let share (r: AttentionRow) = image |> Array.sumBy (fun p -> float r.[h, int p])
                Expect.floatClose Accuracy.medium (share flatRow) (share plainRow) $"head {h}: the image keeps its share"
            Expect.isFalse (flat.FirstTokenLogits = plain.FirstTokenLogits) "flattening the image's attention changes the logits"
        }

        test "uniform visual attention: cached decoding equals full recomputation under the same policy" {
            let s = session.Value
            let ids = promptIds ()
            use pixels = s.Pixels(image (case 0))
            let image = imagePositions s ids
            for mode in [ ExclusionMode.Drop; ExclusionMode.Mask ] do
                decodingMatchesRecomputation s ids pixels (fun () -> UniformAttentionPolicy(2, image)) mode 4
        }
    ]
