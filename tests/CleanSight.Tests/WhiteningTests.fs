/// Whitening, distance, threshold and feature transforms: FsCheck properties of the math (one
/// shared config with a fixed replay seed) and reference values from sklearn / numpy.
module CleanSight.Tests.WhiteningTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open MathNet.Numerics.LinearAlgebra
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening

/// |expected − actual| ≤ tol·(1 + |expected|); NaN only equals NaN.
let private expectClose (tol: float) (expected: float) (actual: float) (what: string) =
    let ok =
        if Double.IsNaN expected || Double.IsNaN actual then Double.IsNaN expected && Double.IsNaN actual
        else abs (expected - actual) <= tol * (1.0 + abs expected)
    if not ok then failtestf "%s: expected %.17g, got %.17g (tolerance %g)" what expected actual tol

let private expectAllFinite (xs: float seq) (what: string) =
    xs |> Seq.iteri (fun i v -> if not (Double.IsFinite v) then failtestf "%s: entry %d is %g" what i v)

// ---- seeded data (every random draw comes from an explicit seed) -------------------------------

/// Standard normal by Box–Muller.
let private gaussian (rng: Random) =
    let u1 = 1.0 - rng.NextDouble()
    let u2 = rng.NextDouble()
    sqrt (-2.0 * log u1) * cos (2.0 * Math.PI * u2)

let private gaussianMatrix (rng: Random) rows cols =
    Matrix<float>.Build.Dense(rows, cols, fun _ _ -> gaussian rng)

/// A random invertible p × p matrix Q₁·diag(s)·Q₂ with Q orthogonal and s log-uniform in
/// [0.3, 3]: a rotation/reflection mix with condition number ≤ 10.
let private wellConditioned (rng: Random) p =
    let q () = (gaussianMatrix rng p p).QR().Q
    let s = Vector<float>.Build.Dense(p, fun _ -> exp (log 0.3 + rng.NextDouble() * log 10.0))
    q () * Matrix<float>.Build.DenseOfDiagonalVector s * q ()

/// n correlated Gaussian samples x = A z + b. [n][p]
let private correlatedSamples (rng: Random) (a: Matrix<float>) (b: Vector<float>) n =
    let z = gaussianMatrix rng n a.ColumnCount                     // [n × p]
    (z * a.Transpose()).EnumerateRows() |> Seq.map (fun r -> (r + b).ToArray()) |> Seq.toArray

/// Applies x ↦ A x + b to each row.
let private affine (a: Matrix<float>) (b: Vector<float>) (rows: float[][]) =
    rows |> Array.map (fun x -> (a * Vector<float>.Build.DenseOfArray x + b).ToArray())

/// Population covariance, computed here independently of the library. [p × p]
let private populationCovariance (rows: float[][]) : Matrix<float> =
    let n, p = rows.Length, rows.[0].Length
    let mean = Array.init p (fun j -> rows |> Array.averageBy (fun r -> r.[j]))
    Matrix<float>.Build.Dense(p, p, fun i j -> (rows |> Array.sumBy (fun (r: float[]) -> (r.[i] - mean.[i]) * (r.[j] - mean.[j]))) / float n)

let private matrixOf (rows: float[][]) = Matrix<float>.Build.DenseOfRowArrays rows

let private maxAbsFromIdentity (m: Matrix<float>) =
    (m - Matrix<float>.Build.DenseIdentity m.RowCount).Enumerate() |> Seq.map abs |> Seq.max

// ---- generators (one shared config) ------------------------------------------------------------

/// A random problem: the seed of all its draws and the feature dimension.
type Problem = { Seed: int; Dim: int }

/// More dimensions than clean samples: n < p.
type FewSamples = { Seed: int; Samples: int; Dim: int }

type WhiteningArbitraries =
    static member Problem() : Arbitrary<Problem> =
        gen {
            let! seed = Gen.choose (0, 1_000_000)
            let! dim = Gen.choose (1, 8)
            return { Problem.Seed = seed; Dim = dim } }
        |> Arb.fromGen
    static member FewSamples() : Arbitrary<FewSamples> =
        gen {
            let! seed = Gen.choose (0, 1_000_000)
            let! dim = Gen.choose (4, 40)
            // n ≥ 3: at n = 2 the centred samples are ±v, every x_k x_kᵀ equals S, and the
            // Ledoit–Wolf intensity is exactly 0 (sklearn agrees) — see `Shrinkage.LedoitWolf`.
            let! samples = Gen.choose (3, dim - 1)
            return { FewSamples.Seed = seed; Samples = samples; Dim = dim } }
        |> Arb.fromGen

/// One config for every whitening property; the fixed replay seed makes CI runs identical (set
/// `replay = None` to explore new cases; a failure prints its own seed to replay).
let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 50
        arbitrary = [ typeof<WhiteningArbitraries> ]
        replay = Some (20260301UL, 0x9E3779B97F4A7C15UL, None) }

let private noShrinkage = Full (Fixed 0.0)

[<Tests>]
let tests =
    testList "whitening" [
        testList "properties" [
            testPropertyWithConfig config "(a) full whitening, no shrinkage, n ≫ p: W·S·Wᵀ = I" (fun (pr: Problem) ->
                let rng = Random pr.Seed
                let a = wellConditioned rng pr.Dim
                let b = Vector<float>.Build.Dense(pr.Dim, fun _ -> 5.0 * gaussian rng)
                let clean = correlatedSamples rng a b (50 * pr.Dim + 100)
                let r = fit noShrinkage clean
                let s = populationCovariance clean
                let sigma = matrixOf r.Covariance.Value
                Expect.isLessThan ((sigma - s).FrobeniusNorm()) (1e-9 * (1.0 + s.FrobeniusNorm())) "Σ = S when s = 0"
                let w = matrixOf r.Whitener.Value
                Expect.isLessThan (maxAbsFromIdentity (w * s * w.Transpose())) 1e-6 "W S Wᵀ = I"
                // The whitened clean set itself has identity covariance.
                let whitened = clean |> Array.map (fun x -> (w * (Vector<float>.Build.DenseOfArray x - Vector<float>.Build.DenseOfArray r.Mean)).ToArray())
                Expect.isLessThan (maxAbsFromIdentity (populationCovariance whitened)) 1e-6 "cov(W(x − μ)) = I")

            testPropertyWithConfig config "(b) full-whitening distances are invariant under x ↦ Ax + b" (fun (pr: Problem) ->
                let rng = Random pr.Seed
                let p = pr.Dim
                let clean = correlatedSamples rng (wellConditioned rng p) (Vector<float>.Build.Dense(p)) (20 * p + 40)
                let test = correlatedSamples rng (wellConditioned rng p) (Vector<float>.Build.Dense(p, fun _ -> gaussian rng)) 20
                let a = wellConditioned rng p
                let b = Vector<float>.Build.Dense(p, fun _ -> 10.0 * gaussian rng)
                let before = distances (fit noShrinkage clean) test
                let after = distances (fit noShrinkage (affine a b clean)) (affine a b test)
                Array.iteri2 (fun i d d' -> expectClose 1e-6 d d' $"test point {i}") before after)

            testPropertyWithConfig config "(c) diagonal distances are invariant under per-dimension scaling and shift" (fun (pr: Problem) ->
                let rng = Random pr.Seed
                let p = pr.Dim
                let clean = correlatedSamples rng (wellConditioned rng p) (Vector<float>.Build.Dense(p)) 200
                let test = correlatedSamples rng (wellConditioned rng p) (Vector<float>.Build.Dense(p)) 20
                let scale = Vector<float>.Build.Dense(p, fun _ -> exp (log 0.1 + rng.NextDouble() * log 100.0)) // [0.1, 10]
                let shift = Vector<float>.Build.Dense(p, fun _ -> 10.0 * gaussian rng)
                let map = affine (Matrix<float>.Build.DenseOfDiagonalVector scale) shift
                let r1, r2 = fit Diagonal clean, fit Diagonal (map clean)
                let d1, d2 = distances r1 test, distances r2 (map test)
                // σ + ε is scale-equivariant only up to ε: allow twice each fit's ε / min σ.
                let tol = 2.0 * (r1.Epsilon / Array.min r1.Std + r2.Epsilon / Array.min r2.Std) + 1e-12
                Array.iteri2 (fun i d d' -> expectClose tol d d' $"test point {i}") d1 d2)

            testPropertyWithConfig config "(d) Ledoit–Wolf keeps Σ positive definite and distances finite when n < p" (fun (fs: FewSamples) ->
                let rng = Random fs.Seed
                let clean = correlatedSamples rng (wellConditioned rng fs.Dim) (Vector<float>.Build.Dense(fs.Dim)) fs.Samples
                let r = fit (Full LedoitWolf) clean
                Expect.isGreaterThan r.ShrinkageUsed 0.0 "some shrinkage"
                Expect.isLessThanOrEqual r.ShrinkageUsed 1.0 "intensity ≤ 1"
                let sigma = matrixOf r.Covariance.Value
                let eigen = sigma.Evd(Symmetricity.Symmetric).EigenValues |> Seq.map (fun l -> l.Real) |> Seq.toArray
                Expect.isGreaterThan (Array.min eigen) 0.0 $"λ_min of Σ (S has rank ≤ {fs.Samples - 1} < p = {fs.Dim})"
                let w = matrixOf r.Whitener.Value
                Expect.isLessThan (maxAbsFromIdentity (w * sigma * w.Transpose())) 1e-6 "W Σ Wᵀ = I"
                let fresh = correlatedSamples rng (wellConditioned rng fs.Dim) (Vector<float>.Build.Dense(fs.Dim)) 10
                expectAllFinite (distances r (Array.append clean fresh)) "distances")
        ]

        testList "(e) the threshold's clean FPR on fresh samples is the target within 3σ" [
            // q = 0.9 on 2000 clean fits; FPR on 5000 fresh samples. Its spread combines the
            // threshold's estimation error and the test count: σ² = q(1−q)(1/2000 + 1/5000).
            let q, nFit, nTest = 0.9, 2000, 5000
            let sd = sqrt (q * (1.0 - q) * (1.0 / float nFit + 1.0 / float nTest))
            for whitening in [ Diagonal; Full LedoitWolf ] do
                for seed in 1 .. 4 do
                    test $"{whitening}, seed {seed}" {
                        let rng = Random seed
                        let a, b = wellConditioned rng 4, Vector<float>.Build.Dense(4, fun _ -> gaussian rng)
                        let clean = correlatedSamples rng a b nFit
                        let reference = fit whitening clean
                        let gamma = threshold q (distances reference clean)       // from clean data only
                        let fresh = distances reference (correlatedSamples rng a b nTest)
                        let fpr = float (fresh |> Array.filter (fun d -> d > gamma)).Length / float nTest
                        Expect.isLessThanOrEqual (abs (fpr - (1.0 - q))) (3.0 * sd) $"FPR {fpr:F4} vs target {1.0 - q} ± {3.0 * sd:F4}"
                    }
        ]

        testList "(e′) leave-one-out distances" [
            testPropertyWithConfig config "diagonal: every leave-one-out distance ≥ its in-sample distance" (fun (pr: Problem) ->
                let rng = Random pr.Seed
                let clean = correlatedSamples rng (wellConditioned rng pr.Dim) (Vector<float>.Build.Dense(pr.Dim)) (3 + rng.Next 40)
                let inSample = distances (fit Diagonal clean) clean
                let loo = leaveOneOutDistances Diagonal clean
                // per coordinate, (x−μ₋ᵢ)²/σ₋ᵢ² ≥ (x−μ)²/σ² exactly; σ + ε bends it by ~ε/σ
                Array.iteri2 (fun i d l -> Expect.isGreaterThanOrEqual l (d * (1.0 - 1e-6)) $"sample {i}") inSample loo)
            test "each is the distance to the reference fitted without that sample; n < 3 is refused" {
                let rng = Random 11
                let clean = correlatedSamples rng (wellConditioned rng 5) (Vector<float>.Build.Dense(5)) 12
                let loo = leaveOneOutDistances (Full LedoitWolf) clean
                for i in [ 0; 5; 11 ] do
                    expectClose 1e-12 (distance (fit (Full LedoitWolf) (Array.removeAt i clean)) clean.[i]) loo.[i] $"sample {i}"
                Expect.throwsT<ArgumentException> (fun () -> leaveOneOutDistances Diagonal clean.[.. 1] |> ignore) "2 samples"
            }
            // Few samples per dimension: the in-sample quantile overshoots the FPR, the leave-one-out one
            // lands near it. q = 0.9, n = 40 clean samples in 8 dimensions, FPR on 20000 fresh ones.
            for whitening in [ Diagonal; Full LedoitWolf ] do
                test $"{whitening}: γ from leave-one-out distances holds the FPR nearer the target than in-sample γ" {
                    let q, p = 0.9, 8
                    let fprs =
                        [ for seed in 1 .. 5 ->
                              let rng = Random seed
                              let a, b = wellConditioned rng p, Vector<float>.Build.Dense(p, fun _ -> gaussian rng)
                              let clean = correlatedSamples rng a b 40
                              let reference = fit whitening clean
                              let fresh = distances reference (correlatedSamples rng a b 20000)
                              let fpr gamma = float (fresh |> Array.filter (fun d -> d > gamma)).Length / float fresh.Length
                              fpr (threshold q (distances reference clean)), fpr (threshold q (leaveOneOutDistances whitening clean)) ]
                    let inSample, loo = List.averageBy fst fprs, List.averageBy snd fprs
                    Expect.isLessThan (abs (loo - (1.0 - q))) (abs (inSample - (1.0 - q))) $"leave-one-out {loo:F3}, in-sample {inSample:F3}"
                    Expect.isLessThan (abs (loo - (1.0 - q))) 0.05 $"leave-one-out FPR {loo:F3} within 5 points of {1.0 - q}"
                }
        ]

        testList "(f) constant features give no NaN or ∞" [
            let rng = Random 7
            let varying = correlatedSamples rng (wellConditioned rng 3) (Vector<float>.Build.Dense(3)) 30
            let oneConstant = varying |> Array.map (fun x -> Array.append x [| 3.7 |])       // feature 3 constant
            let allConstant = Array.init 30 (fun _ -> [| 3.7; -1.0; 0.0 |])
            for name, clean in [ "one constant feature", oneConstant; "all features constant", allConstant ] do
                for whitening in [ Diagonal; Full LedoitWolf; Full (Fixed 0.0); Full (Fixed 0.5) ] do
                    test $"{name}, {whitening}" {
                        let r = fit whitening clean
                        expectAllFinite r.Std "σ"
                        Expect.isGreaterThan (Array.min r.Std) 0.0 "σ > 0"
                        r.Covariance |> Option.iter (fun c -> expectAllFinite (Array.concat c) "Σ")
                        r.Whitener |> Option.iter (fun w -> expectAllFinite (Array.concat w) "W")
                        expectAllFinite (distances r clean) "clean distances"
                        let p = clean.[0].Length
                        let moved = Array.mapi (fun j v -> if j = p - 1 then v + 0.5 else v) clean.[0]
                        let d = distance r moved
                        Expect.isTrue (Double.IsFinite d && d > distance r clean.[0]) $"moving the constant feature: d = {d}"
                    }
        ]

        testList "(g) Ledoit–Wolf matches sklearn" [
            // Produced once with sklearn 1.2.1 (Debian python3-sklearn, numpy 1.24.2):
            //   cov, s = sklearn.covariance.ledoit_wolf(X); print(repr(s)); print(repr(cov))
            test "n = 6 > p = 3" {
                let x =
                    [| [| 1.0; 2.0; 0.5 |]; [| 2.0; 1.0; 1.5 |]; [| 0.0; 0.5; 2.0 |]
                       [| 3.0; 2.5; 1.0 |]; [| 1.5; 0.0; 0.0 |]; [| 2.5; 3.0; 2.5 |] |]
                let sklearnShrinkage = 0.8675461474185299
                let sklearnCovariance =
                    [| [| 0.9581647615001627; 0.08830256838764675; 0.005518910524227922 |]
                       [| 0.08830256838764675; 0.983919677279893; 0.0496701947180513 |]
                       [| 0.005518910524227922; 0.0496701947180513; 0.9259711167754998 |] |]
                expectClose 1e-12 sklearnShrinkage (ledoitWolfIntensity x) "intensity"
                let r = fit (Full LedoitWolf) x
                expectClose 1e-12 sklearnShrinkage r.ShrinkageUsed "ShrinkageUsed"
                Array.iteri2 (fun i e a -> Array.iteri2 (fun j e a -> expectClose 1e-12 e a $"Σ[{i},{j}]") e a) sklearnCovariance r.Covariance.Value
            }
            test "n = 3 < p = 5" {
                let x =
                    [| [| 0.3; -1.2; 0.8; 2.0; 0.1 |]; [| 1.1; 0.4; -0.5; 1.0; 0.9 |]; [| -0.7; 0.9; 1.3; 0.2; -1.0 |] |]
                let sklearnShrinkage = 0.4848475927506072
                let sklearnCovariance =
                    [| [| 0.5769157610812656; -0.09845134894099505; -0.2736031674057886; 0.13966354152094648; 0.2953540468229852 |]
                       [| -0.09845134894099505; 0.7108553869661078; -0.007441090326935674; -0.3308423237668323; -0.11333352959486644 |]
                       [| -0.2736031674057886; -0.007441090326935674; 0.5940875079895787; -0.05952872261548539; -0.28676817336882865 |]
                       [| 0.13966354152094648; -0.3308423237668323; -0.05952872261548539; 0.5769157610812656; 0.15454572217481785 |]
                       [| 0.2953540468229852; -0.11333352959486644; -0.28676817336882865; 0.15454572217481785; 0.610114471770671 |] |]
                let r = fit (Full LedoitWolf) x
                expectClose 1e-12 sklearnShrinkage r.ShrinkageUsed "ShrinkageUsed"
                Array.iteri2 (fun i e a -> Array.iteri2 (fun j e a -> expectClose 1e-12 e a $"Σ[{i},{j}]") e a) sklearnCovariance r.Covariance.Value
            }
            test "one feature: intensity 0, as sklearn" {
                expectClose 0.0 0.0 (ledoitWolfIntensity [| [| 1.0 |]; [| 3.0 |]; [| 2.0 |] |]) "p = 1"
            }
        ]

        testList "distance" [
            test "diagonal: a hand value" {
                // μ = (1, 2), population σ = (1, 2); x = (2, 0): ‖(1, −1)‖ = √2 (ε ≈ 1.5e-6 moves it by ~1e-6).
                let r = fit Diagonal [| [| 0.0; 0.0 |]; [| 2.0; 4.0 |] |]
                expectClose 1e-5 (sqrt 2.0) (distance r [| 2.0; 0.0 |]) "d"
            }
            test "NaN or ∞ in a sample is an error naming the feature" {
                let r = fit Diagonal [| [| 0.0; 0.0; 1.0 |]; [| 2.0; 4.0; 0.0 |] |]
                let e = Expect.throwsC (fun () -> distance r [| 1.0; 1.0; nan |] |> ignore) id
                Expect.stringContains e.Message "feature 2 of 3" "message"
                Expect.isError (tryDistance r [| infinity; 0.0; 0.0 |]) "Result variant"
                let e = Expect.throwsC (fun () -> distances r [| [| 0.0; 0.0; 0.0 |]; [| 0.0; -infinity; 0.0 |] |] |> ignore) id
                Expect.stringContains e.Message "sample 1" "message names the sample"
            }
            test "a sample of the wrong length is an error with both lengths" {
                let r = fit (Full LedoitWolf) [| [| 0.0; 0.0 |]; [| 2.0; 4.0 |]; [| 1.0; 1.0 |] |]
                let e = Expect.throwsC (fun () -> distance r [| 1.0; 1.0; 1.0 |] |> ignore) id
                Expect.stringContains e.Message "3 features, the reference 2" "message"
            }
            test "bad clean sets are errors with the numbers" {
                let message f = (Expect.throwsC (fun () -> f () |> ignore) id).Message
                Expect.stringContains (message (fun () -> fit Diagonal [| [| 1.0 |] |])) "got 1" "one sample"
                Expect.stringContains (message (fun () -> fit Diagonal [| [| 1.0; 2.0 |]; [| 1.0 |] |])) "clean sample 1 has 1 features" "ragged"
                Expect.stringContains (message (fun () -> fit Diagonal [| [| 1.0; 2.0 |]; [| nan; 1.0 |] |])) "feature 0 of clean sample 1" "NaN"
                Expect.stringContains (message (fun () -> fit (Full (Fixed 1.5)) [| [| 1.0 |]; [| 2.0 |] |])) "got 1.5" "intensity"
            }
        ]

        testList "threshold (numpy reference: np.quantile(d, q) and method=\"inverted_cdf\")" [
            let d = [| 0.3; 1.7; 0.9; 2.4; 1.1; 0.05; 3.2; 1.4; 0.6; 2.0 |]
            for q, linear, invertedCdf in
                [ 0.0, 0.05, 0.05
                  0.5, 1.25, 1.1
                  0.7, 1.7899999999999998, 1.7
                  0.9, 2.4799999999999995, 2.4
                  0.95, 2.839999999999999, 3.2
                  0.99, 3.128, 3.2
                  1.0, 3.2, 3.2 ] do
                test $"q = {q}" {
                    expectClose 1e-12 linear (threshold q d) "threshold (linear)"
                    expectClose 0.0 invertedCdf (quantileWith InvertedCdf q d) "inverted_cdf"
                }
            test "q outside [0, 1] is an error with the value" {
                let e = Expect.throwsC (fun () -> threshold 99.0 d |> ignore) id
                Expect.stringContains e.Message "got 99" "message"
            }
        ]

        testList "threshold rules: the paper's interpolated quantile and the conformal rank" [
            let d = [| 0.3; 1.7; 0.9; 2.4; 1.1; 0.05; 3.2; 1.4; 0.6; 2.0 |] // sorted: 0.05 0.3 0.6 0.9 1.1 1.4 1.7 2.0 2.4 3.2
            test "conformal γ is the ⌈(n+1)q⌉-th smallest distance; interpolated is `threshold`" {
                for q, rank in [ 0.5, 6; 0.8, 9; 0.9, 10 ] do // ⌈11·0.5⌉ = 6, ⌈8.8⌉ = 9, ⌈9.9⌉ = 10
                    Expect.equal (conformalRank q d.Length) rank $"rank at q = {q}"
                    Expect.equal (thresholdBy ConformalRank q d) (Array.sort d).[rank - 1] $"γ at q = {q}"
                    Expect.equal (thresholdBy Interpolated q d) (threshold q d) $"interpolated at q = {q}"
                Expect.equal (conformalRank 0.99 99) 99 "⌈100·0.99⌉ = 99 although 100·0.99 = 99.00000000000001"
                Expect.equal (conformalRank 0.99 200) 199 "⌈201·0.99⌉ = 199"
            }
            test "conformalMinimum is the least n whose rank fits among n distances; fewer are refused" {
                for q in [ 0.5; 0.8; 0.9; 0.95; 0.99; 1.0 - 0.01; 0.995; 0.999 ] do
                    let least = Seq.initInfinite ((+) 1) |> Seq.find (fun n -> conformalRank q n <= n)
                    Expect.equal (conformalMinimum q) least $"q = {q}"
                Expect.equal (conformalMinimum 0.99) 99 "99 for a 1 % FPR"
                // q = 0.95 needs 19 distances; d has 10
                let e = Expect.throwsC (fun () -> thresholdBy ConformalRank 0.95 d |> ignore) id
                Expect.stringContains e.Message "at least 19" "names the minimum"
                Expect.stringContains e.Message "got 10" "and the count"
                Expect.throwsT<ArgumentException> (fun () -> conformalMinimum 1.0 |> ignore) "q = 1 has no conformal threshold"
                Expect.throwsT<ArgumentException> (fun () -> thresholdBy ConformalRank 0.5 [| 1.0; nan |] |> ignore) "NaN distance"
            }
            // The rate a new clean input is flagged at, averaged over 4000 draws of n + 1 exchangeable
            // distances: for uniform distances the true FPR of γ is 1 − γ, for exponential ones e^−γ.
            // Standard errors ≈ 0.00014 (n = 200) to 0.001 (n = 20); the rules differ by 0.005–0.05.
            let meanFpr (rule: ThresholdRule) (q: float) (n: int) (draw: Random -> float) (survival: float -> float) =
                let rng = Random(n * 7 + int (q * 1000.0))
                Seq.init 4000 (fun _ -> survival (thresholdBy rule q (Array.init n (fun _ -> draw rng)))) |> Seq.average
            let uniform (rng: Random) = rng.NextDouble()
            let exponential (rng: Random) = -log (1.0 - rng.NextDouble())
            for n, q in [ 200, 0.99; 20, 0.9; 120, 0.95 ] do
                test $"n = {n}, q = {q}: each rule's mean FPR is its expectedFpr; conformal stays within the target" {
                    let tol = 4.0 * sqrt (expectedFpr Interpolated q n / float (n + 2) / 4000.0)
                    let interpolated = meanFpr Interpolated q n uniform (fun g -> 1.0 - g)
                    Expect.floatClose { absolute = tol; relative = 0.0 } interpolated (expectedFpr Interpolated q n)
                        $"interpolated, uniform distances: {interpolated:F5}"
                    Expect.isGreaterThan interpolated (1.0 - q) "the paper's rule flags more than the target"
                    for name, draw, survival in [ "uniform", uniform, (fun g -> 1.0 - g); "exponential", exponential, (fun g -> exp (-g)) ] do
                        let conformal = meanFpr ConformalRank q n draw survival
                        Expect.floatClose { absolute = tol; relative = 0.0 } conformal (expectedFpr ConformalRank q n)
                            $"conformal, {name} distances: {conformal:F5}"
                        Expect.isLessThanOrEqual (expectedFpr ConformalRank q n) (1.0 - q + 1e-12) "at most the target"
                }
            test "expectedFpr: 1.49 % and 1.00 % at n = 200, q = 0.99; the paper's rule approaches α as n grows" {
                expectClose 1e-12 (2.99 / 201.0) (expectedFpr Interpolated 0.99 200) "(n − (n−1)q)/(n+1)"
                expectClose 1e-12 (2.0 / 201.0) (expectedFpr ConformalRank 0.99 200) "(n + 1 − r)/(n + 1)"
                let excess n = expectedFpr Interpolated 0.99 n - 0.01
                Expect.isTrue (excess 100 > excess 1000 && excess 1000 > excess 10000 && excess 10000 > 0.0) "excess shrinks, stays above 0"
            }
        ]

        testList "features" [
            for feature in [ Ratio; LogRatio; VisualShare ] do
                test $"{feature} is finite for zero inputs" {
                    expectAllFinite [ featureOf feature 0.0 0.0; featureOf feature 0.3 0.0; featureOf feature 0.0 0.3 ] $"{feature}"
                }
            test "values on ordinary sums" {
                expectClose 1e-9 2.0 (featureOf Ratio 0.4 0.2) "Ratio = v/p"
                expectClose 1e-9 (log 2.0) (featureOf LogRatio 0.4 0.2) "LogRatio = log(v/p)"
                expectClose 1e-9 (2.0 / 3.0) (featureOf VisualShare 0.4 0.2) "VisualShare = v/(v+p)"
                expectClose 0.0 0.5 (featureOf VisualShare 0.0 0.0) "0/0 share is ½"
                expectClose 1e-12 (-(featureOf LogRatio 0.4 0.2)) (featureOf LogRatio 0.2 0.4) "LogRatio is antisymmetric"
            }
            test "negative or NaN sums are errors with the value" {
                let e = Expect.throwsC (fun () -> featureOf Ratio -0.1 0.2 |> ignore) id
                Expect.stringContains e.Message "-0.1" "message"
                Expect.throwsT<ArgumentException> (fun () -> featureOf LogRatio 0.1 nan |> ignore) "NaN"
            }
            test "featuresOf maps heads pairwise" {
                Expect.equal (featuresOf Ratio [| 0.2; 0.6 |] [| 0.1; 0.3 |] |> Array.map (fun v -> Math.Round(v, 9))) [| 2.0; 2.0 |] "per head"
            }
        ]
    ]
