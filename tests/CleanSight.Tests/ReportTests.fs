/// The report as a user opens it: headless Debian Chromium with the network disabled renders every
/// chart (Plotly marks a rendered graph div `js-plotly-plot` and draws `main-svg`), the table is
/// there, and the page logs no script error. Skipped where chromium is not installed.
module CleanSight.Tests.ReportTests

open System
open System.Diagnostics
open System.IO
open Expecto
open Plotly.NET
open CleanSight.Pipeline.Analysis

let private chromium = [ "/usr/bin/chromium"; "/usr/bin/chromium-browser" ] |> List.tryFind File.Exists

/// Loads a page headless (no network at all) and returns (DOM after scripts ran, browser log).
let private render (exe: string) (page: string) =
    let profile = Fixtures.tempDir ()
    let args =
        [ "--headless"; "--no-sandbox"; "--disable-gpu"; "--disable-quic"; "--no-first-run"
          "--disable-background-networking"; "--disable-component-update"; "--disable-sync"
          "--host-resolver-rules=MAP * ~NOTFOUND"; $"--user-data-dir={profile}"
          "--virtual-time-budget=5000"; "--enable-logging=stderr"; "--v=0"; "--dump-dom"; "file://" + page ]
    let psi = ProcessStartInfo(exe, args, RedirectStandardOutput = true, RedirectStandardError = true)
    use p = Process.Start psi
    let err = p.StandardError.ReadToEndAsync()
    let dom = p.StandardOutput.ReadToEnd()
    if not (p.WaitForExit 60_000) then p.Kill true; failwith "chromium did not finish in 60 s"
    dom, err.Result

let private count (needle: string) (text: string) =
    let mutable n, i = 0, text.IndexOf needle
    while i >= 0 do
        n <- n + 1
        i <- text.IndexOf(needle, i + needle.Length)
    n

[<Tests>]
let tests =
    testList "report" [
        test "report.html renders every chart offline, with its table and no script error" {
            match chromium with
            | None -> skiptest "Debian chromium is not installed (apt-get install chromium)"
            | Some exe ->
                let rows =
                    [ for condition, scale in [ "clean", 1.0; "triggered", 3.0 ] do
                          for layer in 0 .. 3 ->
                              ({ Attack = "badnet"; Condition = condition; Layer = layer
                                 MeanRatio = scale; MedianRatio = scale * float (layer + 1); VisualShare = 0.5; Samples = 4 }
                               : AttentionStealing.Row) ]
                let page = Path.Combine(Fixtures.tempDir (), "report.html")
                Report.write page "test report"
                    [ Report.Heading "charts"
                      Report.Figure(Chart.Line([ 1; 2; 3 ], [ 1.0; 4.0; 9.0 ]))
                      Report.Figure(AttentionStealing.chart rows [| 1; 2 |])
                      Report.Table([ "defense"; "ASR %" ], [ [ "none"; "100.0" ]; [ "cleansight"; "0.0" ] ]) ]
                Expect.isFalse (Text.RegularExpressions.Regex.IsMatch(File.ReadAllText page, "<script[^>]*\\ssrc=")) "every script is inline (no plotly.js to fetch)"
                let dom, log = render exe page
                Expect.equal (count "class=\"figure\"" dom) 2 "two figure containers"
                Expect.equal (count "class=\"js-plotly-plot\"" dom) 2 "both charts rendered by plotly.js"
                Expect.isGreaterThanOrEqual (count "class=\"main-svg\"" dom) 2 "SVG drawn for each chart"
                Expect.stringContains dom "<td>cleansight</td>" "the table is present"
                Expect.isFalse (log.Contains "Uncaught") $"no script error in the browser log:\n{log}"
        }
    ]
