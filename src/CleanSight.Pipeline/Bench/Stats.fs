/// The one summary every benchmark row uses: the median over repeated runs, with min, max and the
/// runs themselves; a row is either that or the reason it could not be measured.
module CleanSight.Pipeline.Bench.Stats

open System
open System.Diagnostics

type Stat = { Median: float; Min: float; Max: float; Runs: float[] }

/// The median (the mean of the middle two for an even count).
let median (xs: float[]) =
    if xs.Length = 0 then invalidArg "xs" "the median of no runs"
    let s = Array.sort xs
    let n = s.Length
    if n % 2 = 1 then s.[n / 2] else (s.[n / 2 - 1] + s.[n / 2]) / 2.0

let summarize (runs: float[]) =
    if runs.Length = 0 then invalidArg "runs" "no runs to summarize"
    if runs |> Array.exists Double.IsNaN then invalidArg "runs" $"a run is NaN: %A{runs}"
    { Median = median runs; Min = Array.min runs; Max = Array.max runs; Runs = runs }

/// Per-run ratios of paired runs (a.[i] / b.[i]), summarized.
let ratioOf (numerator: float[]) (denominator: float[]) =
    if numerator.Length <> denominator.Length then
        invalidArg "denominator" $"paired runs differ in count: {numerator.Length} and {denominator.Length}"
    Array.map2 (/) numerator denominator |> summarize

/// Ratio of unpaired runs (two processes): median over median; min and max cross the extremes
/// (smallest over largest, largest over smallest); runs are numerator runs over the denominator's median.
let ratioOfMedians (numerator: float[]) (denominator: float[]) =
    let n, d = summarize numerator, summarize denominator
    { Median = n.Median / d.Median; Min = n.Min / d.Max; Max = n.Max / d.Min; Runs = numerator |> Array.map (fun x -> x / d.Median) }

/// Every run mapped (a rate from a time: `map (fun s -> flops / s)`).
let map (f: float -> float) (s: Stat) = s.Runs |> Array.map f |> summarize

/// Seconds one call takes, and its result.
let time (f: unit -> 'a) =
    let clock = Stopwatch.StartNew()
    let x = f ()
    clock.Elapsed.TotalSeconds, x

/// `warmup` untimed calls, then the seconds of each of `runs` timed calls.
let repeat (warmup: int) (runs: int) (f: unit -> unit) =
    for _ in 1 .. warmup do f ()
    Array.init runs (fun _ -> fst (time f))

/// What a ratio should be.
type Goal =
    | AtMost of float
    | AtLeast of float

let met (goal: Goal) (s: Stat) =
    match goal with
    | AtMost g -> s.Median <= g
    | AtLeast g -> s.Median >= g

let goalText goal =
    let f (g: float) = g.ToString("0.0##", Globalization.CultureInfo.InvariantCulture)
    match goal with AtMost g -> $"<= {f g}" | AtLeast g -> $">= {f g}"

/// A benchmark row: measured, or why not (python3-torch absent, no adapter, not enough disk, …).
type Row =
    | Measured of Stat
    | Unavailable of reason: string
