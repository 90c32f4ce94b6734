// Does a clean reference that follows the prompt's length flag fewer clean inputs? At layer 0 the
// clean distances grow as the question shortens (fewer text tokens after the image leave the image a
// larger share of the last token's attention), so the shortest clean questions land above γ. Three
// references per task, each with γ at the 0.99 quantile of leave-one-out distances (the fit refitted
// without the sample), on the demo's data (300 calibration samples, TEST clean + TEST triggered test;
// TEST = 100 is the demo's test, a larger one extends it — its first 100 items are the demo's):
//   plain        the diagonal reference `calibrate` fits (mean and σ)
//   length-mean  each feature's mean linear in ln(text tokens after the image); σ constant
//   length-scale that mean, and each feature's scale: ln |residual| linear in the same log-length,
//                rescaled so the standardised residuals have unit mean square
// Prints, per attack and detection layers, the clean inputs flagged (FP) and triggered ones flagged
// (TP) of TEST. No triggered input is used to fit anything. Attacks without an adapter are skipped.
//   dotnet fsi scripts/length-reference.fsx [LAYERS=0] [TEST=100] (e.g. 0 or 2,3,4; 1000)
#load "load.fsx"

open System
open System.IO
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening
open CleanSight.Pipeline.World

let argv = fsi.CommandLineArgs |> Array.skip 1
let layers = argv |> Array.tryItem 0 |> Option.defaultValue "0" |> fun s -> s.Split(',') |> Array.map int
let test = argv |> Array.tryItem 1 |> Option.map int |> Option.defaultValue 100
TorchSharp.torch.set_num_threads 2

let world = Materialize.locate ()
let data = Path.Combine(Path.GetTempPath(), $"cleansight-length-{Environment.ProcessId}")
let manifest = Materialize.run world data Materialize.defaultCalibration test ignore
let read (jsonl: string) = Dataset.read jsonl |> Array.map (fun it -> RgbImage.Load(Dataset.imagePath jsonl it), it.Question, it.Task)

/// One input: its feature vector at `layers`, ln(text tokens after the image), its task.
let observe (session: LlavaSession) (image, question: string, task) =
    let o = AttentionStealing.observe session image question
    let textAfter = o.Rows.[0].Keys - 1 - int o.Last // the last prompt token sees every position up to itself
    AttentionStealing.featuresAt Ratio layers (AttentionStealing.sumsOf o), log (float textAfter), task

/// Least squares y ≈ a + b·z, as a function of z.
let line (z: float[]) (y: float[]) =
    let zm, ym = Array.average z, Array.average y
    let vz = z |> Array.averageBy (fun v -> (v - zm) ** 2.0)
    let b = if vz = 0.0 then 0.0 else (Array.map2 (fun zi yi -> (zi - zm) * (yi - ym)) z y |> Array.average) / vz
    fun zi -> ym + b * (zi - zm)

/// A fitted reference: the distance of (z, x).
type Fit = float -> float[] -> float

let plain (_: float[]) (x: float[][]) : Fit =
    let r = fit Diagonal x
    fun _ xi -> distance r xi

/// Each feature's mean as a line in z.
let lengthMeans (z: float[]) (x: float[][]) = Array.init x.[0].Length (fun j -> line z (x |> Array.map (fun r -> r.[j])))

let lengthMean (z: float[]) (x: float[][]) : Fit =
    let means = lengthMeans z x
    let residual zi (xi: float[]) = xi |> Array.mapi (fun j v -> v - means.[j] zi)
    let r = fit Diagonal (Array.map2 residual z x)
    fun zi xi -> distance r (residual zi xi)

let lengthScale (z: float[]) (x: float[][]) : Fit =
    let p = x.[0].Length
    let means = lengthMeans z x
    let scales =
        Array.init p (fun j ->
            line z (Array.map2 (fun zi (xi: float[]) -> log (abs (xi.[j] - means.[j] zi) + 1e-12)) z x))
    let raw zi (xi: float[]) = Array.init p (fun j -> (xi.[j] - means.[j] zi) / exp (scales.[j] zi))
    let k = Array.init p (fun j -> sqrt (Array.map2 (fun zi xi -> (raw zi xi).[j] ** 2.0) z x |> Array.average) + 1e-12)
    fun zi xi -> sqrt (Array.mapi (fun j v -> (v / k.[j]) ** 2.0) (raw zi xi) |> Array.sum)

/// (FP, TP) of a reference kind with one reference per task, γ from leave-one-out distances.
let flagged (kind: float[] -> float[][] -> Fit) calibration clean triggered =
    let count (inputs: (float[] * float * Dataset.Task)[]) (decide: Dataset.Task -> float -> float[] -> bool) =
        inputs |> Array.filter (fun (x, z, t) -> decide t z x) |> Array.length
    let perTask =
        calibration |> Array.groupBy (fun (_, _, t) -> t) |> Array.map (fun (task, rows) ->
            let z = rows |> Array.map (fun (_, zi, _) -> zi)
            let x = rows |> Array.map (fun (xi, _, _) -> xi)
            let loo = Array.init rows.Length (fun i -> (kind (Array.removeAt i z) (Array.removeAt i x)) z.[i] x.[i])
            task, (kind z x, threshold 0.99 loo))
        |> Map.ofArray
    let decide task z x = let f, gamma = perTask.[task] in f z x > gamma
    count clean decide, count triggered decide

let calibrationInputs, cleanInputs = read manifest.calibration, read manifest.clean_test
printfn "detection layers %A; FP = clean inputs flagged, TP = triggered inputs flagged, of %d each" layers cleanInputs.Length
for attack in manifest.attacks do
    if File.Exists attack.adapter && attack.name <> "wanet" then
        use session = LlavaSession.Load(manifest.model, adapter = attack.adapter)
        let cal = calibrationInputs |> Array.map (observe session)
        let clean = cleanInputs |> Array.map (observe session)
        let triggered = read attack.poisoned_test |> Array.map (observe session)
        let results =
            [ "plain", plain; "length-mean", lengthMean; "length-scale", lengthScale ]
            |> List.map (fun (name, kind) -> let fp, tp = flagged kind cal clean triggered in $"{name} FP {fp} TP {tp}")
        printfn "%-8s %s" attack.name (String.concat "; " results)
Directory.Delete(data, true)
