/// The prompt-length conditioned reference (`calibrate --conditioning prompt-length`): the lines it
/// fits, what it changes about the clean distances, and the leave-one-out refit.
module CleanSight.Tests.PromptLengthTests

open System
open Expecto
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening

/// `n` clean samples whose 4 features drift with the prompt's length the way the tiny world's do
/// (the longer the text after the image, the lower the image's share, and the narrower its spread):
/// x_j = 3 − 0.8·j·ln L + (0.5 / √L)·noise, L uniform in 2 … 40 (seeded).
let private lengthDependent (seed: int) (n: int) : Calibration.Measured[] =
    let rng = Random(seed)
    let normal () = sqrt (-2.0 * log (1.0 - rng.NextDouble())) * cos (2.0 * Math.PI * rng.NextDouble())
    Array.init n (fun _ ->
        let l = rng.Next(2, 41)
        { Features = Array.init 4 (fun j -> 3.0 - 0.8 * float (j + 1) * log (float l) + 0.5 / sqrt (float l) * normal ())
          TextTokens = l })

let private settings (conditioning: Calibration.Conditioning) =
    { Calibration.defaultSettings 3 with Quantile = 0.95; Conditioning = conditioning }

let private rate (t: Calibration.Fitted) (xs: Calibration.Measured[]) =
    xs |> Array.averageBy (fun m -> if Calibration.distanceTo t m > t.Threshold then 1.0 else 0.0)

[<Tests>]
let tests =
    testList "prompt-length reference" [
        test "the lines recover a known mean and spread" {
            let m = PromptLength.fit (lengthDependent 1 4000 |> Array.map _.TextTokens) (lengthDependent 1 4000 |> Array.map _.Features)
            for j in 0 .. 3 do
                Expect.floatClose { absolute = 0.05; relative = 0.0 } m.MeanSlope.[j] (-0.8 * float (j + 1)) $"mean slope of feature {j}"
                // |noise| of a normal has a log-scale slope of −1/2 in ln L, as the spread 0.5/√L
                Expect.floatClose { absolute = 0.08; relative = 0.0 } m.ScaleSlope.[j] -0.5 $"scale slope of feature {j}"
            Expect.equal (m.MinLog, m.MaxLog) (log 2.0, log 40.0) "the calibration's range of ln L"
        }
        test "one prompt length: the same distances as the unconditioned reference" {
            let rng = Random(2)
            let clean = Array.init 60 (fun _ -> ({ Features = Array.init 5 (fun j -> float j + rng.NextDouble()); TextTokens = 7 }: Calibration.Measured))
            let plain = Calibration.fitReference (settings Calibration.Unconditioned) clean
            let byLength = Calibration.fitReference (settings Calibration.OnPromptLength) clean
            Expect.isNone plain.Length "unconditioned: no model"
            Expect.isSome byLength.Length "conditioned: a model"
            Expect.equal byLength.Length.Value.MeanSlope (Array.zeroCreate 5) "no slope without a second length"
            let probe = { Features = [| 0.1; 2.9; 1.5; 3.3; 4.0 |]; TextTokens = 7 }: Calibration.Measured
            for a, b in Array.zip (Array.append plain.CleanDistances [| Calibration.distanceTo plain probe |])
                                  (Array.append byLength.CleanDistances [| Calibration.distanceTo byLength probe |]) do
                Expect.floatClose { absolute = 0.0; relative = 1e-4 } b a "a per-feature shift and scale the whitening undoes"
        }
        test "features that drift with the length: conditioned, the clean FPR holds for short and long prompts; unconditioned, short prompts are flagged" {
            let calibration, fresh = lengthDependent 3 400, lengthDependent 4 4000
            let plain = Calibration.fitReference (settings Calibration.Unconditioned) calibration
            let byLength = Calibration.fitReference (settings Calibration.OnPromptLength) calibration
            let short = fresh |> Array.filter (fun m -> m.TextTokens <= 4)
            let plainShort, lengthShort = rate plain short, rate byLength short
            Expect.isGreaterThan plainShort 0.3 $"unconditioned: short prompts flagged ({plainShort})"
            Expect.isLessThan lengthShort 0.12 $"conditioned: short prompts near the 5 %% target ({lengthShort})"
            let overall = rate byLength fresh
            Expect.isTrue (overall > 0.02 && overall < 0.09) $"conditioned clean FPR near the 5 %% target ({overall})"
        }
        test "leave-one-out distances refit the lines without the sample" {
            let clean = lengthDependent 5 30
            let s = settings Calibration.OnPromptLength
            let t = Calibration.fitReference s clean
            for i in [ 0; 13; 29 ] do
                let others = Array.removeAt i clean
                let refit = Calibration.fitReference { s with ThresholdFrom = Calibration.InSample } others
                Expect.floatClose Accuracy.veryHigh t.CleanDistances.[i] (Calibration.distanceTo refit clean.[i]) $"sample {i}"
        }
        test "a constant feature and one length outside the calibration's range stay finite" {
            let clean = lengthDependent 6 50 |> Array.map (fun m -> { m with Features = Array.append m.Features [| 0.25 |] })
            let t = Calibration.fitReference (settings Calibration.OnPromptLength) clean
            Expect.all t.CleanDistances Double.IsFinite "finite clean distances"
            for l in [ 1; 500 ] do
                let d = Calibration.distanceTo t { Features = [| 2.0; 1.0; 0.0; -1.0; 0.25 |]; TextTokens = l }
                Expect.isTrue (Double.IsFinite d) $"finite distance at L = {l}"
        }
        test "bad input: no text token, too few samples, a sample of another width" {
            Expect.throwsT<ArgumentException> (fun () -> PromptLength.logLength 0 |> ignore) "0 text tokens"
            Expect.throwsT<ArgumentException> (fun () -> PromptLength.fit [| 3 |] [| [| 1.0 |] |] |> ignore) "one sample"
            let m = PromptLength.fit [| 3; 5; 9 |] [| [| 1.0; 2.0 |]; [| 1.5; 2.0 |]; [| 0.5; 2.5 |] |]
            Expect.throwsT<ArgumentException> (fun () -> PromptLength.condition m 4 [| 1.0 |] |> ignore) "1 feature of 2"
        }
    ]
