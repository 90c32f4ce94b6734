/// Progress reporting for long work, on stderr: a live Spectre.Console display (one bar per task,
/// news lines above it) when stderr is a terminal; timestamped lines when it is not (a log file, a
/// pipe); nothing with --no-progress or when the CI variable is set.
module CleanSight.Pipeline.Progress

open System
open System.Collections.Generic
open System.Diagnostics
open System.IO
open Spectre.Console

/// True when progress should not be shown (flag given, or running under CI).
let quiet (noProgress: bool) = noProgress || not (isNull (Environment.GetEnvironmentVariable "CI"))

/// How progress is shown.
type Mode =
    /// nothing at all
    | Silent
    /// timestamped lines on stderr
    | Lines
    /// a live display on stderr: a status line, a bar per task, news lines above them
    | Bars

/// The mode for a --no-progress flag, a set CI variable and whether stderr is a terminal.
let modeOf (noProgress: bool) (ci: bool) (stderrIsTerminal: bool) =
    if noProgress || ci then Silent elif stderrIsTerminal then Bars else Lines

/// The mode of this process for a --no-progress flag.
let mode (noProgress: bool) =
    modeOf noProgress (not (isNull (Environment.GetEnvironmentVariable "CI"))) (not Console.IsErrorRedirected)

/// Where long work reports.
type Reporter =
    { /// a line of news ("badnet: calibrated on 200 clean samples")
      Log: string -> unit
      /// `Step task done total`: `done` of `total` units of the named task are finished
      Step: string -> int -> int -> unit }

/// Reports nothing.
let silent = { Log = ignore; Step = fun _ _ _ -> () }

/// Whether the line reporter prints step `done` of `total` when its last line for that task was
/// `sinceLast` ago (None: never): the first and the last step always, others at most every `every`.
let lineDue (every: TimeSpan) (sinceLast: TimeSpan option) (done': int) (total: int) =
    done' >= total || (match sinceLast with None -> true | Some t -> t >= every)

let private stamp (clock: Stopwatch) (line: string) = sprintf "[%7.1fs] %s" clock.Elapsed.TotalSeconds line

/// Timestamped lines on `writer`; a task's steps at most every `every` (and its first and last).
let linesTo (writer: TextWriter) (every: TimeSpan) =
    let clock = Stopwatch.StartNew()
    let gate = obj ()
    let last = Dictionary<string, TimeSpan>()
    let write line = lock gate (fun () -> writer.WriteLine(stamp clock line); writer.Flush())
    { Log = write
      Step = fun task done' total ->
          let due =
              lock gate (fun () ->
                  let now = clock.Elapsed
                  let since = match last.TryGetValue task with | true, t -> Some(now - t) | _ -> None
                  let due = lineDue every since done' total
                  if due then last.[task] <- now
                  due)
          if due then write $"{task} {done'}/{total}" }

/// The reporter of the innermost `run` in progress, if any: `logger` writes through it, so code that
/// only takes a `string -> unit` (the world commands) shows its news in the live display.
let mutable private current: Reporter option = None

/// A logger: through the running display if there is one, else timestamped lines on stderr, or
/// nothing (--no-progress, CI).
let logger (noProgress: bool) : string -> unit =
    if quiet noProgress then ignore
    else
        let clock = Stopwatch.StartNew()
        fun line ->
            match current with
            | Some r -> r.Log line
            | None -> eprintfn "%s" (stamp clock line)

let private stderrConsole () =
    AnsiConsole.Create(
        AnsiConsoleSettings(Out = AnsiConsoleOutput(Console.Error), Ansi = AnsiSupport.Detect,
                            Interactive = InteractionSupport.Yes))

/// The live display: a status task (spinner, elapsed time, the latest news) and one bar per task;
/// news lines are printed above it, timestamped.
let private withBars (title: string) (work: Reporter -> 'a) : 'a =
    let console = stderrConsole ()
    // Text on stdout while the display redraws would be overwritten: when stdout is the same
    // terminal, it is held back and written once the display has stopped.
    let heldBack = if Console.IsOutputRedirected then None else Some(new StringWriter())
    let stdout = Console.Out
    heldBack |> Option.iter (fun w -> Console.SetOut w)
    try
        console.Progress()
            .AutoClear(false)
            .HideCompleted(true)
            .Columns([| TaskDescriptionColumn() :> ProgressColumn; ProgressBarColumn(); PercentageColumn()
                        RemainingTimeColumn(); SpinnerColumn() |])
            .Start(fun ctx ->
                let clock = Stopwatch.StartNew()
                let gate = obj ()
                let status = ctx.AddTask(Markup.Escape title).IsIndeterminate(true)
                let tasks = Dictionary<string, ProgressTask>()
                // short enough for the bar columns to fit an 80-column terminal
                let short (s: string) = if s.Length > 44 then s.Substring(0, 43) + "…" else s
                let log (line: string) =
                    lock gate (fun () ->
                        console.WriteLine(stamp clock line)
                        status.Description <- Markup.Escape(short $"{title}: {line}"))
                let step (task: string) (done': int) (total: int) =
                    lock gate (fun () ->
                        let t =
                            match tasks.TryGetValue task with
                            | true, t -> t
                            | _ ->
                                let t = ctx.AddTask(Markup.Escape task, maxValue = float (max 1 total))
                                tasks.[task] <- t
                                t
                        t.MaxValue <- float (max 1 total)
                        t.Value <- float (min done' total)
                        if done' >= total then t.StopTask())
                let reporter = { Log = log; Step = step }
                let outer = current
                current <- Some reporter
                try
                    let result = work reporter
                    status.Description <- Markup.Escape $"{title}: done"
                    status.IsIndeterminate <- false
                    status.Value <- status.MaxValue
                    status.StopTask()
                    result
                finally
                    current <- outer)
    finally
        heldBack |> Option.iter (fun w ->
            Console.SetOut stdout
            stdout.Write(w.ToString())
            stdout.Flush())

/// Runs long work with a reporter of the given mode. `title` names it in the live display.
let run (mode: Mode) (title: string) (work: Reporter -> 'a) : 'a =
    match mode with
    | Silent -> work silent
    | Bars -> withBars title work
    | Lines ->
        let reporter = linesTo Console.Error (TimeSpan.FromSeconds 10.0)
        let outer = current
        current <- Some reporter
        try work reporter finally current <- outer

/// Steps of one task as a `done total` callback (the shape calibrate and evaluate take).
let counter (reporter: Reporter) (task: string) = fun (done': int) (total: int) -> reporter.Step task done' total
