/// The baselines CleanSight is compared with: the pixel-space transforms (Blur, ST), FastV's and
/// random pruning's choice of image tokens, and the defense names the CLI parses.
module CleanSight.Tests.DefensesTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.World
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Defenses

let private scene (i: int) = Scenes.render 56 (Scenes.generate 2 i)

let private channelRange (image: RgbImage) c =
    let values = [| for i in c .. 3 .. image.Pixels.Length - 1 -> image.Pixels.[i] |]
    Array.min values, Array.max values

let private constant (w: int) (h: int) (rgb: byte * byte * byte) =
    let r, g, b = rgb
    RgbImage(w, h, Array.init (w * h * 3) (fun i -> match i % 3 with 0 -> r | 1 -> g | _ -> b))

/// Both transforms are convex combinations of input pixels (and of the channel mean, for ST's
/// padding), so every output channel stays within the input channel's [min, max].
let private pixelTransform (name: string) (f: RgbImage -> RgbImage) =
    testList name [
        for i in [ 0; 1; 2 ] do
            test $"scene {i}: same size, deterministic, within each channel's range, and changed" {
                let img = scene i
                let out = f img
                Expect.equal (out.Width, out.Height) (img.Width, img.Height) "same size"
                Expect.sequenceEqual (f img).Pixels out.Pixels "deterministic"
                for c in 0 .. 2 do
                    let lo, hi = channelRange img c
                    let olo, ohi = channelRange out c
                    Expect.isTrue (olo >= lo && ohi <= hi) $"channel {c}: output [{olo}, {ohi}] within input [{lo}, {hi}]"
                let changed = Array.map2 (fun (a: byte) b -> a <> b) img.Pixels out.Pixels |> Array.filter id |> Array.length
                Expect.isGreaterThan changed (img.Pixels.Length / 10) $"at least a tenth of the values change ({changed})"
            }
        test "a constant image stays that constant" {
            let img = constant 33 21 (200uy, 17uy, 90uy)
            Expect.sequenceEqual (f img).Pixels img.Pixels "unchanged"
        }
    ]

/// A row over `visual` image positions starting at 5 (BOS at 0, text 1..4, text after), with
/// given per-head weights on the image keys.
let private rowWith (heads: int) (imageWeights: float32[][]) =
    let n = imageWeights.[0].Length
    let positions = Array.append [| 0L .. 4L |] (Array.append [| 5L .. int64 (4 + n) |] [| int64 (5 + n) .. int64 (8 + n) |])
    let weights =
        [| for h in 0 .. heads - 1 do
               yield! Array.create 5 0.05f
               yield! imageWeights.[h]
               yield! Array.create 4 0.05f |]
    AttentionRow(2, heads, positions.[positions.Length - 1], positions, weights), 5L, int64 (4 + n)

/// A random FastV case: heads, image tokens, distinct head-averaged scores, and the keep share.
type FastVCase = { Heads: int; Weights: float32[][]; Keep: float }

type DefenseArbitraries =
    static member FastVCase() : Arbitrary<FastVCase> =
        gen {
            let! heads = Gen.choose (1, 4)
            let! n = Gen.choose (1, 40)
            let! keepPercent = Gen.choose (0, 100)
            let! seed = Gen.choose (0, 1_000_000)
            let rng = Random seed
            // distinct head averages: a shuffled ramp on head 0, noise that averages out on the others
            let ramp = Array.init n (fun i -> float32 (i + 1) * 0.001f) |> Array.sortBy (fun _ -> rng.Next())
            let weights = Array.init heads (fun h -> if h = 0 then ramp else Array.init n (fun _ -> 0.0005f))
            return { Heads = heads; Weights = weights; Keep = float keepPercent / 100.0 } }
        |> Arb.fromGen

let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 100
        arbitrary = [ typeof<DefenseArbitraries> ]
        replay = Some (20260302UL, 0x2545F4914F6CDD1DUL, None) }

[<Tests>]
let tests =
    testList "defenses" [
        pixelTransform "blur" blur
        pixelTransform "spatial transform" spatialTransform

        test "ST flips: a dark-left/light-right image comes out light on the left" {
            let w, h = 57, 57
            let img = RgbImage(w, h, Array.init (w * h * 3) (fun i -> if (i / 3) % w < w / 2 then 20uy else 230uy))
            let out = spatialTransform img
            let at x y = out.Pixels.[(y * w + x) * 3]
            Expect.equal (at 20 28) 230uy "left of centre shows the right half"
            Expect.equal (at 36 28) 20uy "right of centre shows the left half"
        }
        test "ST shrinks and pads: the corners are the channel mean, the centre pixel stays" {
            let img = Scenes.render 57 (Scenes.generate 2 4) // odd side: the centre is a pixel
            let out = spatialTransform img
            for c in 0 .. 2 do
                let mean = Seq.init (57 * 57) (fun i -> float img.Pixels.[i * 3 + c]) |> Seq.average
                let expected = byte (Math.Round mean)
                for x, y in [ 0, 0; 56, 0; 0, 56; 56, 56 ] do
                    Expect.equal out.Pixels.[(y * 57 + x) * 3 + c] expected $"corner ({x}, {y}) channel {c}"
                Expect.equal out.Pixels.[(28 * 57 + 28) * 3 + c] img.Pixels.[(28 * 57 + 28) * 3 + c] $"centre channel {c}"
        }
        test "blur smooths: a single bright pixel spreads to its neighbours and loses its peak" {
            let w = 31
            let img = RgbImage(w, w, Array.init (w * w * 3) (fun i -> if i / 3 = 15 * w + 15 then 255uy else 0uy))
            let out = blur img
            let at x y = out.Pixels.[(y * w + x) * 3]
            Expect.isLessThan (at 15 15) 255uy "peak lowered"
            Expect.isGreaterThan (at 15 15) 0uy "peak still the brightest area"
            Expect.isGreaterThan (at 16 15) 0uy "neighbour lit"
            Expect.isGreaterThanOrEqual (at 15 15) (at 16 15) "monotone away from the centre"
            Expect.isGreaterThanOrEqual (at 16 15) (at 18 15) "monotone away from the centre"
        }

        testList "FastV" [
            test "keeps the top half by head-averaged attention, excludes the rest" {
                // head averages: (0.10+0.00)/2 .05, (.02+.02)/2 .02, (.00+.30)/2 .15, (.01+.01)/2 .01, (.04+.04)/2 .04, (.06+.00)/2 .03
                let r, first, last = rowWith 2 [| [| 0.10f; 0.02f; 0.00f; 0.01f; 0.04f; 0.06f |]; [| 0.00f; 0.02f; 0.30f; 0.01f; 0.04f; 0.00f |] |]
                Expect.equal (first, last) (5L, 10L) "(image span)"
                // kept: .15 (7), .05 (5), .04 (9); excluded: .03 (10), .02 (6), .01 (8)
                Expect.equal (fastV 0.5 first last r) [| 6L; 8L; 10L |] "the three lowest"
                Expect.equal (fastV 1.0 first last r) [||] "keep all"
                Expect.equal (fastV 0.0 first last r) [| 5L .. 10L |] "keep none"
            }
            testPropertyWithConfig config "excludes N − round(keep·N) image positions, each scoring no higher than any kept one" <| fun (c: FastVCase) ->
                let r, first, last = rowWith c.Heads c.Weights
                let n = c.Weights.[0].Length
                let excluded = fastV c.Keep first last r
                Expect.equal excluded.Length (n - int (Math.Round(c.Keep * float n))) "count"
                Expect.equal excluded (Array.sort (Array.distinct excluded)) "sorted and distinct"
                Expect.isTrue (excluded |> Array.forall (fun p -> p >= first && p <= last)) "image positions only"
                let score (p: int64) = Seq.init c.Heads (fun h -> float c.Weights.[h].[int (p - first)]) |> Seq.average
                let kept = [| first .. last |] |> Array.except excluded
                if excluded.Length > 0 && kept.Length > 0 then
                    Expect.isLessThanOrEqual (excluded |> Array.map score |> Array.max) (kept |> Array.map score |> Array.min) "lowest excluded"
            test "keys already excluded are not chosen again" {
                let r, first, last = rowWith 1 [| [| 0.10f; 0.20f; 0.30f; 0.40f |] |]
                // drop image position 6 from the keys: 3 image keys remain
                let keep = r.KeyPositions |> Array.mapi (fun j p -> j, p) |> Array.filter (fun (_, p) -> p <> 6L)
                let gapped = AttentionRow(2, 1, r.QueryPosition, keep |> Array.map snd, keep |> Array.map (fun (j, _) -> r.Weights.[j]))
                Expect.equal (fastV 0.34 first last gapped) [| 5L; 7L |] "round(0.34 · 3) = 1 kept (8); 5 and 7 excluded, 6 never returned"
            }
        ]

        testList "random pruning" [
            test "round(0.9·N) distinct image positions, sorted, seeded" {
                for first, last in [ 5L, 20L; 100L, 675L; 3L, 3L; 1L, 10L ] do
                    let n = int (last - first + 1L)
                    let chosen = randomChoice 0.9 7 first last
                    Expect.equal chosen.Length (int (Math.Round(0.9 * float n))) $"count for N = {n}"
                    Expect.equal chosen (Array.sort (Array.distinct chosen)) "sorted and distinct"
                    Expect.isTrue (chosen |> Array.forall (fun p -> p >= first && p <= last)) "inside the span"
                    Expect.equal (randomChoice 0.9 7 first last) chosen "same seed, same choice"
            }
            test "different seeds choose differently" {
                let choices = [ for seed in 0 .. 9 -> randomChoice 0.9 seed 5L 20L ] |> List.distinct
                Expect.isGreaterThan choices.Length 5 $"{choices.Length} distinct choices of 14 of 16 over 10 seeds"
            }
        ]

        testList "names" [
            test "parse inverts name for every defense" {
                for d in all do
                    Expect.equal (parse (name d)) d $"'{name d}'"
                Expect.equal (all |> List.map name |> List.distinct).Length all.Length "names are distinct"
            }
            test "parse ignores case and surrounding spaces" {
                Expect.equal (parse " Prune-All ") PruneAll "prune-all"
                Expect.equal (parse "CLEANSIGHT") CleanSight "cleansight"
            }
            test "an unknown name is an ArgumentException listing the known ones" {
                let message =
                    try parse "zip" |> ignore; failtest "parse accepted 'zip'"
                    with :? ArgumentException as e -> e.Message
                Expect.stringContains message "'zip'" "names the bad value"
                for d in all do Expect.stringContains message (name d) $"lists '{name d}'"
            }
        ]
    ]
