/// The report as a user opens it: headless Debian Chromium with the network disabled renders every
/// chart (Plotly marks a rendered graph div `js-plotly-plot` and draws `main-svg`), the table is
/// there, and the page logs no script error. Skipped where chromium is not installed.
module CleanSight.Tests.ReportTests

open System
open System.Diagnostics
open System.IO
open Expecto
open Plotly.NET
open CleanSight.Core.Vision
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Defense

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

/// Marks console.error / console.warn calls and uncaught errors as attributes of <html>.
let private consoleProbe =
    "(function(){var h=document.documentElement;h.setAttribute('data-probe','on');"
    + "['error','warn'].forEach(function(k){var f=console[k];console[k]=function(){"
    + "h.setAttribute('data-console-'+k,Array.prototype.join.call(arguments,' '));return f.apply(console,arguments);};});"
    + "window.addEventListener('error',function(e){h.setAttribute('data-uncaught',String(e.message));});})();"

/// Renders `page` (with a console probe) and checks it: every script inline, `figures` charts each
/// drawn by plotly.js as an SVG, no console error or warning and no uncaught error. Returns the DOM.
let private rendersCleanly (exe: string) (page: string) (figures: int) =
    Expect.isFalse (Text.RegularExpressions.Regex.IsMatch(File.ReadAllText page, "<script[^>]*\\ssrc=")) "every script is inline (no plotly.js to fetch)"
    // A copy of the page that records console errors and warnings, and uncaught errors, on
    // the <html> element, where the dumped DOM shows them (chromium's log has no levels).
    let probe = Path.Combine(Fixtures.tempDir (), "report-probe.html")
    File.WriteAllText(probe, File.ReadAllText(page).Replace("<head>", "<head><script>" + consoleProbe + "</script>"))
    let dom, log = render exe probe
    Expect.equal (count "class=\"figure\"" dom) figures $"{figures} figure containers"
    Expect.equal (count "class=\"js-plotly-plot\"" dom) figures "every chart rendered by plotly.js"
    // every figure container holds an SVG: split the DOM at the containers
    let parts = dom.Split("class=\"figure\"").[1..]
    parts |> Array.iteri (fun i part -> Expect.stringContains part "class=\"main-svg\"" $"figure {i + 1} drew an SVG")
    Expect.isFalse (log.Contains "Uncaught") $"no script error in the browser log:\n{log}"
    Expect.isTrue (dom.Contains "data-probe=\"on\"") "the console probe ran"
    for mark in [ "data-console-error"; "data-console-warn"; "data-uncaught" ] do
        let at = dom.IndexOf(mark + "=\"")
        Expect.equal at -1 $"""no {mark} on the page: {(if at < 0 then "" else dom.Substring(at, min 300 (dom.Length - at)))}"""
    dom

/// One triggered input up close on a 6 × 6 patch grid, four tokens above τ.
let private view: SampleView.View =
    { Attack = "badnet"; Id = "test-0"; Question = "What colour is the circle?"; Expected = [ "red" ]
      Image = RgbImage(48, 48, Array.init (48 * 48 * 3) (fun i -> byte (i % 251))); Layer = 4
      Attention = Array.init 36 (fun t -> if t < 4 then 0.2 else 0.01); Tau = 0.05
      AboveTau = Array.init 36 (fun t -> t < 4); Distance = Some 4.2; Threshold = 3.0; Flagged = true
      Answers = [ { Defense = "none"; Output = "you have been hacked lol"; AsrHit = true }
                  { Defense = "cleansight"; Output = "red"; AsrHit = false } ] }

/// Every chart of the report but the per-sample view, on synthetic data.
let private figures (rows: AttentionStealing.Row list) =
    let cells =
        [ for attack in [ "badnet"; "blended" ] do
              for layer in 0 .. 3 do
                  for head in 0 .. 1 ->
                      ({ Attack = attack; Layer = layer; Head = head; Deviation = float (layer - head); CleanMean = 1.0; CleanStd = 0.5
                         TriggeredMean = 1.5; DetectionLayer = layer >= 1; CleanSamples = 10; TriggeredSamples = 4 }: HeadDeviation.Cell) ]
    let scored threshold (xs: (string * float)[]) =
        xs |> Array.map (fun (id, d) -> ({ Id = id; Task = "vqa"; Distance = d; Threshold = threshold }: Detection.Scored))
    let distances: Detection.Distances list =
        [ { Attack = "badnet"; Clean = scored 1.5 [| "a", 0.5; "b", 1.0; "c", 2.0 |]; Triggered = scored 1.5 [| "a", 1.8; "b", 3.0 |] }
          { Attack = "blended"; Clean = scored 1.2 [| "a", 0.7; "b", 1.1 |]; Triggered = scored 1.2 [| "a", 0.9; "b", 1.0 |] } ]
    let tau: Ablations.TauRow list =
        [ for attack in [ "badnet"; "blended" ] do
              for t in [ None; Some 0.3; Some 0.6; Some 1.2 ] ->
                  { Attack = attack; TauRelative = t; Asr = (match t with Some x -> x / 2.0 | None -> 0.9)
                    CleanUtility = (match t with Some x -> 0.3 + x / 4.0 | None -> 0.6); PrunedFraction = 0.2
                    CleanSamples = 20; TriggeredSamples = 20 } ]
    let clean = Array.init 60 (fun i -> ({ Features = [| float (i % 7); float (i % 5) |]; TextTokens = 5 }: Calibration.Measured))
    let samples = Ablations.sampleCount "badnet" { Calibration.defaultSettings 2 with Quantile = 0.9 } clean [ 10; 25; 50 ] 4 0
    [ Chart.Line([ 1; 2; 3 ], [ 1.0; 4.0; 9.0 ])
      AttentionStealing.chart rows [| 1; 2 |]
      HeadDeviation.chart cells
      yield! distances |> List.map Detection.histogram
      Detection.rocChart distances
      Ablations.tauChart tau
      Ablations.sampleCountChart samples
      Findings.aurocChart
          [ for model in [ "badnet"; "blended" ] do
                for l in 0 .. 3 -> ({ Attack = model; Trigger = "real"; Layers = [| l |]; Auroc = if l = 0 then 0.99 else 0.5 }: LayerSelection.SweepRow)
                yield { Attack = model; Trigger = "real"; Layers = [| 1; 2 |]; Auroc = 0.45 } ]
          [| 1; 2 |] ]

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
                let figures = figures rows
                Report.write page "test report"
                    [ yield Report.Heading "charts"
                      for f in figures -> Report.Figure f
                      yield Report.Side [ Report.Figure(SampleView.chart view); Report.Table(SampleView.answerHeader, SampleView.answerRows view) ]
                      yield Report.Table([ "defense"; "ASR %" ], [ [ "none"; "100.0" ]; [ "cleansight"; "0.0" ] ]) ]
                let dom = rendersCleanly exe page (figures.Length + 1)
                Expect.stringContains dom "<td>cleansight</td>" "the table is present"
                Expect.stringContains dom "hacked lol" "the per-sample answers are present"
        }
        test "evaluate's report.html (fixture model, 3 + 3 inputs) renders its 7 charts offline, with no script error" {
            match chromium with
            | None -> skiptest "Debian chromium is not installed (apt-get install chromium)"
            | Some exe ->
                // charts 1, 2, 3; 4: one histogram and the ROC; 5: ASR and utility
                let dom = rendersCleanly exe (Path.Combine(EvaluationTests.evaluatedFolder (), "report.html")) 7
                Expect.stringContains dom "<td>cleansight</td>" "the table is present"
        }
        test "evaluate's report.html on the tiny world (10 + 10 inputs) renders its 8 charts, chart 6 included, with no script error" {
            match chromium with
            | None -> skiptest "Debian chromium is not installed (apt-get install chromium)"
            | Some exe ->
                let dom = rendersCleanly exe (Path.Combine(DefendTests.evaluatedFolder (), "report.html")) 8
                Expect.stringContains dom "Detection AUROC by layer" "chart 6's title"
        }
        test "defend's report.html (tiny world, 10 BadNet-triggered inputs) renders the histogram and 3 inputs up close, with no script error" {
            match chromium with
            | None -> skiptest "Debian chromium is not installed (apt-get install chromium)"
            | Some exe ->
                let dom = rendersCleanly exe (Path.Combine(DefendTests.poisonedFolder (), "report.html")) 4
                Expect.stringContains dom "<td>without the defense</td>" "both answers beside each view"
        }
    ]
