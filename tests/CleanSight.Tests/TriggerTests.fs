module CleanSight.Tests.TriggerTests

open Expecto
open CleanSight.Core.Vision
open CleanSight.Pipeline.World
open CleanSight.Pipeline.World.Triggers

let private config = { FsCheckConfig.defaultConfig with maxTest = 30 }

/// A random scene rendered at 48, 64 or 37 pixels (an odd size exercises the edges).
let private image (seed: int) (index: int) =
    let size = [| 48; 64; 37 |].[abs (seed % 3)]
    Scenes.render size (Scenes.generate seed ((index &&& 0x7fffffff) % 100_000))

/// A width×height image of seeded noise, for non-square checks.
let private noise (seed: int) (width: int) (height: int) =
    let rng = Scenes.Rng.Keyed [ int64 seed; 99L ]
    RgbImage(width, height, Array.init (width * height * 3) (fun _ -> byte (rng.Int 256)))

let private maxDelta (a: RgbImage) (b: RgbImage) =
    Array.map2 (fun (x: byte) (y: byte) -> abs (int x - int y)) a.Pixels b.Pixels |> Array.max

/// Same size, deterministic (bytes are always within [0, 255]).
let private wellFormed (f: RgbImage -> RgbImage) (img: RgbImage) =
    let out = f img
    Expect.equal (out.Width, out.Height) (img.Width, img.Height) "same size"
    Expect.sequenceEqual (f img).Pixels out.Pixels "deterministic"
    out

[<Tests>]
let tests =
    testList "triggers" [
        testPropertyWithConfig config "BadNet: only the patch region changes, and it is the same noise every time" <| fun (seed: int) (index: int) (trigger: int) ->
            let img = image seed index
            let spec = { Defaults.badNet with Seed = trigger }
            let out = wellFormed (badNet spec) img
            let left, top, side = badNetRegion spec img.Width img.Height
            Expect.equal side (max 3 (int (System.Math.Round(30.0 / 336.0 * float img.Width)))) "side = 30/336 of the image"
            Expect.equal (left, top) (0, 0) "upper-left"
            for y in 0 .. img.Height - 1 do
                for x in 0 .. img.Width - 1 do
                    let inPatch = x >= left && x < left + side && y >= top && y < top + side
                    if not inPatch then
                        for c in 0..2 do
                            Expect.equal out.[y, x, c] img.[y, x, c] $"pixel ({y},{x}) outside the patch"
            let patchChanged = [ for y in 0 .. side - 1 do for x in 0 .. side - 1 do for c in 0..2 -> out.[y, x, c] <> img.[y, x, c] ]
            Expect.isTrue (List.exists id patchChanged) "the patch differs from the image"
        test "BadNet: other corners and positions stay inside the image" {
            let img = noise 1 50 30
            for corner in [ TopRight; BottomLeft; BottomRight; At(0.5, 0.5); At(2.0, -1.0) ] do
                let spec = { Defaults.badNet with Corner = corner }
                let left, top, side = badNetRegion spec img.Width img.Height
                Expect.equal side 3 "30/336 of 30 px rounds below the 3 px minimum"
                Expect.isTrue (left >= 0 && top >= 0 && left + side <= 50 && top + side <= 30) $"{corner} inside"
                Expect.equal (badNet spec img).Width 50 "size kept"
        }
        testPropertyWithConfig config "Blended: each pixel moves at most 0.2*255+1, and the pattern is fixed" <| fun (seed: int) (index: int) ->
            let img = image seed index
            let out = wellFormed (blended Defaults.blended) img
            Expect.isLessThanOrEqual (maxDelta img out) 52 "|delta| <= 0.2*255 + 1"
            Expect.isGreaterThan (maxDelta img out) 10 "visible"
            let other = blended { Defaults.blended with Alpha = 0.0 } img
            Expect.sequenceEqual other.Pixels img.Pixels "alpha 0 is the identity"
        testPropertyWithConfig config "WaNet: s = 0 is the identity; default warp is small and changes the image" <| fun (seed: int) (index: int) (trigger: int) ->
            let img = image seed index
            let identity = wellFormed (waNet { Defaults.waNet with Seed = trigger; S = 0.0 }) img
            Expect.sequenceEqual identity.Pixels img.Pixels "s = 0"
            let warped = wellFormed (waNet { Defaults.waNet with Seed = trigger; S = 4.0 }) img
            Expect.notEqual warped.Pixels img.Pixels "s = 4 moves pixels"
            wellFormed (waNet { Defaults.waNet with Seed = trigger }) img |> ignore
        test "WaNet on a non-square image keeps its size and s = 0 is the identity" {
            let img = noise 2 40 24
            Expect.sequenceEqual (waNet { Defaults.waNet with S = 0.0 } img).Pixels img.Pixels "identity"
            Expect.equal ((waNet Defaults.waNet img).Width, (waNet Defaults.waNet img).Height) (40, 24) "size"
        }
        testPropertyWithConfig config "ISSBA: |residual| <= eps*255+1 and it differs between images" <| fun (seed: int) (index: int) ->
            let a = image seed index
            let b = Scenes.render a.Width (Scenes.generate (seed + 1) ((index &&& 0x7fffffff) % 100_000))
            let outA = wellFormed (issba Defaults.issba) a
            let outB = issba Defaults.issba b
            Expect.isLessThanOrEqual (maxDelta a outA) 9 "|delta| <= 8/255*255 + 1"
            Expect.isGreaterThan (maxDelta a outA) 0 "something is added"
            let delta (clean: RgbImage) (out: RgbImage) = Array.map2 (fun (x: byte) (y: byte) -> int y - int x) clean.Pixels out.Pixels
            Expect.notEqual (delta a outA) (delta b outB) "sample-specific residuals"
        test "ISSBA residual is exactly ±eps*255 and linear in eps" {
            let img = noise 3 32 32
            let r = issbaResidual Defaults.issba img
            Expect.isTrue (r |> Array.forall (fun v -> abs (abs v - 8.0) < 1e-9)) "±8 everywhere"
            let r2 = issbaResidual { Defaults.issba with Epsilon = 4.0 / 255.0 } img
            Expect.isTrue (Array.forall2 (fun a b -> abs (a - 2.0 * b) < 1e-9) r r2) "linear in eps"
        }
        test "apply dispatches to each trigger" {
            let img = noise 4 20 20
            Expect.sequenceEqual (apply (BadNetPatch Defaults.badNet) img).Pixels (badNet Defaults.badNet img).Pixels "BadNet"
            Expect.sequenceEqual (apply (BlendedNoise Defaults.blended) img).Pixels (blended Defaults.blended img).Pixels "Blended"
            Expect.sequenceEqual (apply (WaNetWarp Defaults.waNet) img).Pixels (waNet Defaults.waNet img).Pixels "WaNet"
            Expect.sequenceEqual (apply (IssbaResidual Defaults.issba) img).Pixels (issba Defaults.issba img).Pixels "ISSBA"
        }
        test "parameters name what a trigger's name does not: ISSBA's strength, WaNet's field, BadNet's place; in any culture" {
            let issba16 = IssbaResidual { Defaults.issba with Epsilon = 16.0 / 255.0 }
            Expect.notEqual (parameters (IssbaResidual Defaults.issba)) (parameters issba16) "±8/255 and ±16/255 differ"
            Expect.equal (name (IssbaResidual Defaults.issba)) (name issba16) "(the name alone does not tell them apart)"
            Expect.equal (parameters (WaNetWarp { Defaults.waNet with K = 48; S = 2.0 })) "k=48 s=2 seed=0" "WaNet"
            Expect.stringStarts (parameters (BadNetPatch Defaults.badNet)) "fraction=" "BadNet starts with its size"
            Expect.stringContains (parameters (BadNetPatch { Defaults.badNet with Corner = At(0.25, 0.5) })) "corner=at(0.25,0.5)" "BadNet's place"
            let before = System.Globalization.CultureInfo.CurrentCulture
            try
                let comma = System.Globalization.CultureInfo.InvariantCulture.Clone() :?> System.Globalization.CultureInfo
                comma.NumberFormat.NumberDecimalSeparator <- ","
                System.Globalization.CultureInfo.CurrentCulture <- comma
                Expect.equal (parameters (BlendedNoise Defaults.blended)) "alpha=0.2 seed=0" "a decimal point under a decimal-comma culture"
            finally System.Globalization.CultureInfo.CurrentCulture <- before
        }
    ]
