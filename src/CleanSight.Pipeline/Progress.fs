/// Progress reporting for long work: lines on stderr, silenced by --no-progress or in CI.
module CleanSight.Pipeline.Progress

open System

/// True when progress should not be shown (flag given, or running under CI).
let quiet (noProgress: bool) = noProgress || not (isNull (Environment.GetEnvironmentVariable "CI"))

/// A logger: timestamped lines on stderr, or nothing.
let logger (noProgress: bool) : string -> unit =
    if quiet noProgress then ignore
    else
        let clock = Diagnostics.Stopwatch.StartNew()
        fun line -> eprintfn "[%7.1fs] %s" clock.Elapsed.TotalSeconds line
