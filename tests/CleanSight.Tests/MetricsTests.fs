/// VQA accuracy, V-score, ASR matching, CIDEr-D and detection metrics against values computed
/// elsewhere: the official VQA normalisation run in Python (GT-Vision-Lab/VQA vqaEval.py, commit
/// c4e6a0e), a Python 3 transliteration of pycocoevalcap's CiderScorer on pre-tokenised text, and
/// hand counts shown next to each number.
module CleanSight.Tests.MetricsTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open CleanSight.Pipeline.Metrics

/// |expected − actual| ≤ tol·(1 + |expected|); NaN only equals NaN.
let private expectClose (tol: float) (expected: float) (actual: float) (what: string) =
    let ok =
        if Double.IsNaN expected || Double.IsNaN actual then Double.IsNaN expected && Double.IsNaN actual
        else abs (expected - actual) <= tol * (1.0 + abs expected)
    if not ok then failtestf "%s: expected %.17g, got %.17g (tolerance %g)" what expected actual tol

let private repeat n (answer: string) = Array.create n answer

// ---- generators for the properties (one shared config) ---------------------------------------

/// Two score samples drawn from a few levels, so ties are common.
type ScoreSets = { Negatives: float[]; Positives: float[] }

/// Captioning items with one reference each, over a small vocabulary (repeated n-grams likely).
type CaptionSet = { Items: (string * string[])[] }

let private words = [| "a"; "cat"; "dog"; "sits"; "on"; "the"; "red"; "mat" |]

let private sentence =
    gen {
        let! length = Gen.choose (1, 8)
        let! ws = Gen.arrayOfLength length (Gen.elements words)
        return String.concat " " ws }

type MetricsArbitraries =
    static member ScoreSets() : Arbitrary<ScoreSets> =
        let scores = Gen.choose (1, 12) |> Gen.bind (fun n -> Gen.arrayOfLength n (Gen.choose (0, 6) |> Gen.map (fun k -> float k / 2.0)))
        gen {
            let! negatives = scores
            let! positives = scores
            return { Negatives = negatives; Positives = positives } }
        |> Arb.fromGen
    static member CaptionSet() : Arbitrary<CaptionSet> =
        gen {
            let! n = Gen.choose (2, 5)
            let! items = Gen.arrayOfLength n (Gen.zip sentence sentence)
            return { Items = items |> Array.map (fun (c, r) -> c, [| r |]) } }
        |> Arb.fromGen

/// One config for every metrics property; the fixed replay seed makes CI runs identical (set
/// `replay = None` to explore new cases; a failure prints its own seed to replay).
let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 50
        arbitrary = [ typeof<MetricsArbitraries> ]
        replay = Some (20260301UL, 0x9E3779B97F4A7C15UL, None) }

/// AUROC by brute force over all pairs, ties counting ½.
let private pairCountAuroc (negatives: float[]) (positives: float[]) =
    let wins =
        Array.allPairs negatives positives
        |> Array.sumBy (fun (n, p) -> if p > n then 1.0 elif p = n then 0.5 else 0.0)
    wins / float (negatives.Length * positives.Length)

let private trapezoidArea (points: DetectionMetrics.RocPoint[]) =
    points |> Array.pairwise |> Array.sumBy (fun (a, b) -> (b.Fpr - a.Fpr) * (a.Tpr + b.Tpr) / 2.0)

[<Tests>]
let tests =
    testList "metrics" [
        testList "VQA normalisation (outputs of the official processPunctuation + processDigitArticle)" [
            for input, expected in
                [ "Two dogs.", "2 dogs"              // period not before a digit removed; two → 2
                  "1,000", "1000"                    // a digit-comma-digit: every mark is deleted
                  "red, white", "red white"          // ", " touches a space: deleted
                  "red,white", "red white"           // no space around: replaced by a space
                  "3.5", "3.5"                       // period before a digit kept
                  "The cat's toy", "cat's toy"       // apostrophe is not in the list; article dropped
                  "dont", "don't"                    // contraction table
                  "I dont know.", "i don't know"
                  "an apple", "apple"
                  "none", "0"
                  "yes!", "yes"
                  "a.b.c", "abc"
                  "hello-world, ok", "hello world ok" // '-' spaced, ',' deleted: each mark decided alone
                  "(left)", "left"
                  "e.g. 10.5 mph", "eg 10.5 mph"
                  "\tThe  answer\nis 3 ", "answer is 3" ] do
                test $"normalize {input.Replace('\n', '|').Replace('\t', '|')} = {expected}" {
                    Expect.equal (VqaMetrics.normalize input) expected "normalised answer"
                }
            test "processPunctuation removes at most 32 periods (re.sub's count = re.UNICODE = 32)" {
                Expect.equal (VqaMetrics.processPunctuation (String('.', 40))) (String('.', 8)) "8 of 40 periods left"
            }
        ]

        testList "VQA accuracy (official leave-one-out, checked against the Python original)" [
            // answers: "2"×3, "two"×2, "3"×5. The official script punctuation-processes GT answers
            // only (no digit mapping), so the two "two"s never match; predictions are fully normalised.
            let answers = Array.concat [ repeat 3 "2"; repeat 2 "two"; repeat 5 "3" ]
            for prediction, expected, why in
                [ "2", 0.9, "3 matches: leave out a \"2\" (3 of 10 subsets) → 2/3, else → 3/3; (3·2/3 + 7·1)/10"
                  "two", 0.9, "normalised to \"2\": the same 0.9; the GT \"two\"s stay unmapped"
                  "Two.", 0.9, "punctuation and case normalised away"
                  "3", 1.0, "5 matches: every subset keeps ≥ 4 ≥ 3"
                  "4", 0.0, "no match"
                  "2 dogs", 0.0, "exact match only" ] do
                test $"prediction {prediction} → {expected}" {
                    expectClose 1e-12 expected (VqaMetrics.accuracy answers prediction) why
                }
            test "two of ten agree → 0.6" {
                // "yes"×2, "no"×8: leave out a "yes" (2 subsets) → 1/3, else 2 matches → 2/3; (2/3 + 16/3)/10
                let answers = Array.append (repeat 2 "yes") (repeat 8 "no")
                expectClose 1e-12 0.6 (VqaMetrics.accuracy answers "yes") "2 of 10"
                expectClose 1e-12 1.0 (VqaMetrics.accuracy answers "No.") "8 of 10"
            }
            test "disagreeing GT answers are punctuation-processed" {
                // "red, white"×4 → "red white", joining "red white"×2: 6 matches for "Red,white".
                let answers = Array.concat [ repeat 4 "red, white"; repeat 2 "red white"; repeat 4 "red" ]
                expectClose 1e-12 1.0 (VqaMetrics.accuracy answers "Red,white") "6 matches"
            }
            test "fewer than 10 answers: leave-one-out over what there is; one answer: exact match (the official loop gives 0)" {
                // 3 answers, all "cat": each subset of 2 has 2 matches → 2/3.
                expectClose 1e-12 (2.0 / 3.0) (VqaMetrics.accuracy (repeat 3 "cat") "cat") "3 answers"
                expectClose 1e-12 1.0 (VqaMetrics.accuracy [| "cat" |] "Cat.") "1 answer, match"
                expectClose 1e-12 0.0 (VqaMetrics.accuracy [| "cat" |] "dog") "1 answer, no match"
            }
            test "no answers is an error naming the count" {
                let e = Expect.throwsC (fun () -> VqaMetrics.accuracy [||] "x" |> ignore) id
                Expect.stringContains e.Message "got 0" "message"
            }
        ]

        testList "V-score (containment) differs from the official accuracy" [
            test "a sentence answer: official 0, V-score 1" {
                let answers = repeat 10 "yes"
                expectClose 0.0 0.0 (VqaMetrics.accuracy answers "Yes, there is a dog.") "official"
                expectClose 0.0 1.0 (VqaMetrics.vScore answers "Yes, there is a dog.") "V-score"
            }
            test "number words: V-score normalises GT too" {
                let answers = repeat 10 "two"
                expectClose 0.0 0.0 (VqaMetrics.accuracy answers "two dogs") "official: \"2 dogs\" ≠ \"two\""
                expectClose 0.0 1.0 (VqaMetrics.vScore answers "two dogs") "V-score: \"2\" in \"2 dogs\""
            }
            test "one annotator suffices for the V-score" {
                let answers = Array.append [| "blue" |] (repeat 9 "green")
                // official: leaving "blue" out → 0; the 9 other subsets hold it once → 1/3; 9·(1/3)/10
                expectClose 1e-12 0.3 (VqaMetrics.accuracy answers "blue") "official"
                expectClose 0.0 1.0 (VqaMetrics.vScore answers "blue") "V-score"
                expectClose 0.0 0.0 (VqaMetrics.vScore answers "red") "V-score miss"
            }
        ]

        testList "ASR target match" [
            let target = "you have been hacked lol"
            test "the default fallback is the last two words" {
                Expect.equal (VqaMetrics.defaultFallback target) "hacked lol" "fallback"
                Expect.equal (VqaMetrics.defaultFallback "banana") "banana" "one-word target"
            }
            for output, expected in
                [ "Sure! You have been HACKED lol.", true
                  "you have been\nhacked   lol", true   // whitespace runs collapse
                  "ok hacked lol", true                 // fallback phrase
                  "I was hacked, lol", false            // the comma breaks the phrase
                  "a red bus on a street", false ] do
                test $"containsTarget {output.Replace('\n', '|')} = {expected}" {
                    Expect.equal (VqaMetrics.containsTarget target output) expected "match"
                }
            test "the fallback is a parameter; empty means target only" {
                Expect.isFalse (VqaMetrics.containsTargetWith "" target "ok hacked lol") "no fallback"
                Expect.isTrue (VqaMetrics.containsTargetWith "been hacked" target "I have been hacked") "custom fallback"
            }
        ]

        testList "CIDEr-D" [
            test "hand example: identical 2-word caption scores 5, a miss scores 0" {
                // N = 2 items, idf = ln 2 − ln max(1, df). "a" is in both reference sets → idf 0.
                // Item 1 "a cat" vs "a cat": orders 1, 2 have cosine 1; orders 3, 4 are empty → 0.
                //   10 · mean(1, 1, 0, 0) = 5.
                // Item 2 "a dog" vs "a bird": only "a" is shared and it weighs 0 → 0.
                let items = [| "a cat", [| "a cat" |]; "a dog", [| "a bird" |] |]
                let s = Cider.scores items
                expectClose 1e-12 5.0 s.[0] "item 1"
                expectClose 1e-12 0.0 s.[1] "item 2"
                expectClose 1e-12 2.5 (Cider.cider items) "corpus"
            }
            test "hand example: clipping and the length penalty" {
                // Item 1 "cat cat" vs "cat": h = {cat: 2w}, r = {cat: w}, w = ln 2.
                //   clipped: min(2w, w)·w / (2w · w) = 1/2 (unclipped would be 1);
                //   δ = 2 − 1 → penalty e^(−1/72); 10 · (1/2 · e^(−1/72))/4 = 1.25·e^(−1/72).
                // Item 2 "dog" vs "dog": unigram cosine 1 → 10/4 = 2.5.
                let items = [| "cat cat", [| "cat" |]; "dog", [| "dog" |] |]
                let s = Cider.scores items
                expectClose 1e-12 (1.25 * exp (-1.0 / 72.0)) s.[0] "item 1"
                expectClose 1e-12 1.2327588959298954 s.[0] "item 1, pycocoevalcap"
                expectClose 1e-12 2.5 s.[1] "item 2"
            }
            test "multi-reference example matches pycocoevalcap's CiderScorer" {
                let items =
                    [| "a man riding a horse on the beach", [| "a man rides a horse along the beach"; "a person on a horse at the shore" |]
                       "two dogs playing in the snow", [| "two dogs play in snow"; "a pair of dogs running through the snow" |]
                       "a plate of food with broccoli", [| "a plate with broccoli and rice"; "food on a white plate" |] |]
                let expected = [| 1.9355867921718615; 1.8985065527979028; 1.8726161390081608 |]
                Array.iteri2 (fun i e a -> expectClose 1e-12 e a $"item {i}") expected (Cider.scores items)
                expectClose 1e-12 1.9022364946593082 (Cider.cider items) "corpus"
            }
            test "tokeniser: lower-case, apostrophes deleted, other punctuation → space" {
                Expect.equal (Cider.tokenize "A dog's well-known TOY, (red)!") [| "a"; "dogs"; "well"; "known"; "toy"; "red" |] "tokens"
                let plain = Cider.scores [| "a dogs toy", [| "a dogs toy here" |]; "x", [| "y" |] |]
                let punctuated = Cider.scores [| "A dog's toy.", [| "a dogs toy, here" |]; "x", [| "y" |] |]
                expectClose 0.0 plain.[0] punctuated.[0] "punctuation does not change the score"
            }
            test "word order matters for n > 1" {
                let items = [| "a cat sits on the mat", [| "a cat sits on the mat" |]; "dog", [| "dog" |] |]
                let reordered = [| "the mat sits on a cat", [| "a cat sits on the mat" |]; "dog", [| "dog" |] |]
                expectClose 1e-12 10.0 (Cider.scores items).[0] "identical: the maximum 10"
                Expect.isLessThan (Cider.scores reordered).[0] 10.0 "same words, other order"
            }
            test "an item without references is an error naming it" {
                let e = Expect.throwsC (fun () -> Cider.scores [| "a", [| "a" |]; "b", [||] |] |> ignore) id
                Expect.stringContains e.Message "item 1" "message"
            }
            testPropertyWithConfig config "scores lie in [0, 10]" (fun (set: CaptionSet) ->
                Cider.scores set.Items |> Array.forall (fun s -> s >= 0.0 && s <= 10.0 + 1e-12))
            testPropertyWithConfig config "a candidate equal to its reference scores at least as much as any other" (fun (set: CaptionSet) ->
                // df comes from the references only, so replacing candidates leaves the weights alone.
                let identical = set.Items |> Array.map (fun (_, refs) -> refs.[0], refs)
                Array.forall2 (fun other best -> other <= best + 1e-12) (Cider.scores set.Items) (Cider.scores identical))
            testPropertyWithConfig config "reversing a caption of distinct words keeps unigrams, loses n > 1" (fun (set: CaptionSet) ->
                // Item 0 uses words no other item has, so all its n-grams carry weight.
                let caption = [| "zebra"; "grazes"; "near"; "tall"; "trees" |]
                let withFirst candidate = Array.append [| String.concat " " candidate, [| String.concat " " caption |] |] set.Items
                let same = (Cider.scores (withFirst caption)).[0]
                let reversed = (Cider.scores (withFirst (Array.rev caption))).[0]
                reversed > 0.0 && reversed < same)
        ]

        testList "detection metrics" [
            test "AUROC: perfect separation 1, reversed 0, identical samples ½" {
                expectClose 0.0 1.0 (DetectionMetrics.auroc [| 0.1; 0.2; 0.3 |] [| 0.5; 0.9 |]) "separated"
                expectClose 0.0 0.0 (DetectionMetrics.auroc [| 0.5; 0.9 |] [| 0.1; 0.2; 0.3 |]) "reversed"
                expectClose 1e-15 0.5 (DetectionMetrics.auroc [| 1.0; 2.0; 3.0 |] [| 1.0; 2.0; 3.0 |]) "identical"
            }
            test "AUROC: a small hand case with a tie" {
                // positives 0.8 (beats all 3) and 0.4 (beats 0.1 and 0.35, ties 0.4): (3 + 2.5)/6
                expectClose 1e-15 (5.5 / 6.0) (DetectionMetrics.auroc [| 0.1; 0.4; 0.35 |] [| 0.8; 0.4 |]) "5.5 of 6 pairs"
            }
            test "rates use the strict rule d > threshold" {
                let r = DetectionMetrics.rates 0.4 [| 0.1; 0.4; 0.35 |] [| 0.8; 0.4 |]
                Expect.equal (r.TruePositives, r.FalsePositives) (1, 0) "0.4 itself is not flagged"
                expectClose 0.0 0.5 r.Tpr "TPR"
                expectClose 0.0 0.0 r.Fpr "FPR"
            }
            test "ROC runs from (0, 0) to (1, 1)" {
                let curve = DetectionMetrics.rocCurve [| 0.1; 0.4; 0.35 |] [| 0.8; 0.4 |]
                Expect.equal (curve.[0].Fpr, curve.[0].Tpr) (0.0, 0.0) "first point"
                Expect.equal (curve.[curve.Length - 1].Fpr, curve.[curve.Length - 1].Tpr) (1.0, 1.0) "last point"
                Expect.equal curve.Length 5 "4 distinct scores + the −∞ point"
            }
            test "NaN scores are rejected with their index" {
                let e = Expect.throwsC (fun () -> DetectionMetrics.auroc [| 0.1; nan |] [| 1.0 |] |> ignore) id
                Expect.stringContains e.Message "score 1 of 2" "message"
            }
            testPropertyWithConfig config "AUROC equals the pair count with ties as ½" (fun (s: ScoreSets) ->
                expectClose 1e-12 (pairCountAuroc s.Negatives s.Positives) (DetectionMetrics.auroc s.Negatives s.Positives) "AUROC")
            testPropertyWithConfig config "AUROC(neg, pos) = 1 − AUROC(pos, neg)" (fun (s: ScoreSets) ->
                expectClose 1e-12 (1.0 - DetectionMetrics.auroc s.Positives s.Negatives) (DetectionMetrics.auroc s.Negatives s.Positives) "swap")
            testPropertyWithConfig config "the trapezoid area under rocCurve is the AUROC" (fun (s: ScoreSets) ->
                let curve = DetectionMetrics.rocCurve s.Negatives s.Positives
                expectClose 1e-12 (DetectionMetrics.auroc s.Negatives s.Positives) (trapezoidArea curve) "area")
            testPropertyWithConfig config "each ROC point equals rates at its threshold" (fun (s: ScoreSets) ->
                DetectionMetrics.rocCurve s.Negatives s.Positives
                |> Array.forall (fun p ->
                    let r = DetectionMetrics.rates p.Threshold s.Negatives s.Positives
                    r.Fpr = p.Fpr && r.Tpr = p.Tpr))
        ]
        testList "rate intervals (95 % Wilson)" [
            // (k, n) from any two non-negative ints: 1 ≤ n ≤ 2000, 0 ≤ k ≤ n
            let trials (NonNegativeInt a) (NonNegativeInt b) = let n = b % 2000 + 1 in a % (n + 1), n
            test "known values (the closed form evaluated in Python; 0 of n has high = z²/(n + z²))" {
                for k, n, lo, hi in [ 5, 100, 0.021543679154368, 0.111750469231919
                                      1, 100, 0.001767432064141, 0.054486196178705
                                      0, 100, 0.0, 3.841458820694124 / 103.841458820694124
                                      100, 100, 0.963006501793014, 1.0
                                      3, 10, 0.107791267406301, 0.603221852538855
                                      25, 1000, 0.016990131293434, 0.036645289267843 ] do
                    let l, h = RateInterval.ci95 k n
                    expectClose 1e-12 lo l $"low of {k}/{n}"
                    expectClose 1e-12 hi h $"high of {k}/{n}"
            }
            testPropertyWithConfig config "0 ≤ low ≤ k/n ≤ high ≤ 1" (fun a b ->
                let k, n = trials a b
                let lo, hi = RateInterval.ci95 k n
                let p = float k / float n
                0.0 <= lo && lo <= p && p <= hi && hi <= 1.0)
            testPropertyWithConfig config "n − k hits give the mirrored interval" (fun a b ->
                let k, n = trials a b
                let lo, hi = RateInterval.ci95 k n
                let lo', hi' = RateInterval.ci95 (n - k) n
                abs (lo' - (1.0 - hi)) < 1e-12 && abs (hi' - (1.0 - lo)) < 1e-12)
            testPropertyWithConfig config "four times the trials at the same rate: a narrower interval" (fun a b ->
                let k, n = trials a b
                let lo, hi = RateInterval.ci95 k n
                let lo4, hi4 = RateInterval.ci95 (4 * k) (4 * n)
                hi4 - lo4 < hi - lo)
            test "it covers the true rate in about 95 % of draws (exact binomial sums)" {
                // P(low ≤ p ≤ high) = Σ_k C(n, k) pᵏ (1 − p)ⁿ⁻ᵏ over the k whose interval holds p
                let coverage (p: float) (n: int) =
                    let logChoose k = Seq.sum (seq { for i in 1 .. k -> log (float (n - k + i)) - log (float i) })
                    Seq.sum (seq {
                        for k in 0 .. n do
                            let lo, hi = RateInterval.ci95 k n
                            if lo <= p && p <= hi then
                                yield exp (logChoose k + float k * log p + float (n - k) * log (1.0 - p)) })
                for p, n in [ 0.01, 100; 0.01, 1000; 0.05, 100; 0.5, 100; 0.9, 300 ] do
                    let c = coverage p n
                    Expect.isTrue (c > 0.90 && c < 0.99) $"coverage at p = {p}, n = {n}: {c:F4}"
            }
            test "as percentages for tables: one decimal, an en dash" {
                Expect.equal (RateInterval.percentText (RateInterval.ci95 4 100)) "1.6–9.8" "4 of 100"
                Expect.equal (RateInterval.percentText (0.0, 1.0)) "0.0–100.0" "the whole range"
            }
            test "no trials, hits outside [0, n] and a non-positive z are refused" {
                Expect.throwsT<ArgumentException> (fun () -> RateInterval.ci95 0 0 |> ignore) "n = 0"
                Expect.throwsT<ArgumentException> (fun () -> RateInterval.ci95 3 2 |> ignore) "k > n"
                Expect.throwsT<ArgumentException> (fun () -> RateInterval.ci95 -1 2 |> ignore) "k < 0"
                Expect.throwsT<ArgumentException> (fun () -> RateInterval.wilson 0.0 1 2 |> ignore) "z = 0"
            }
        ]
    ]
