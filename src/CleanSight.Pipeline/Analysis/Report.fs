/// A self-contained HTML report: one inline plotly.js (no network needed), the charts, the tables.
module CleanSight.Pipeline.Analysis.Report

open System.IO
open System.Net
open System.Text
open Plotly.NET

/// plotly.js as Plotly.NET ships it (an embedded resource), inlined once per report.
let private plotlyJs =
    lazy (
        let asm = typeof<GenericChart>.Assembly
        let name = asm.GetManifestResourceNames() |> Array.find (fun n -> n.EndsWith ".min.js")
        use s = asm.GetManifestResourceStream name
        use r = new StreamReader(s)
        r.ReadToEnd())

type Section =
    | Heading of string
    | Text of string
    | Figure of GenericChart
    | Table of header: string list * rows: string list list
    /// sections side by side (the last one takes the remaining width)
    | Side of Section list

let rec private render (section: Section) =
    match section with
    | Heading h -> $"<h2>{WebUtility.HtmlEncode h}</h2>"
    | Text t -> $"<p>{WebUtility.HtmlEncode t}</p>"
    | Figure chart ->
        let chart = chart |> Chart.withDisplayOptions (DisplayOptions.init (PlotlyJSReference = PlotlyJSReference.NoReference))
        "<div class=\"figure\">" + GenericChart.toChartHTML chart + "</div>"
    | Table(header, rows) ->
        let cells tag (xs: string list) = xs |> List.map (fun x -> $"<{tag}>{WebUtility.HtmlEncode x}</{tag}>") |> String.concat ""
        let body = rows |> List.map (fun r -> "<tr>" + cells "td" r + "</tr>") |> String.concat "\n"
        let head = cells "th" header
        $"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    | Side sections ->
        let parts = sections |> List.map (fun s -> "<div>" + render s + "</div>") |> String.concat ""
        $"<div class=\"side\">{parts}</div>"

/// The whole page as a string.
let html (title: string) (sections: Section list) =
    let sb = StringBuilder()
    sb.Append($"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{WebUtility.HtmlEncode title}</title>")
      .Append("<style>body{font-family:sans-serif;max-width:1280px;margin:auto;padding:1em}table{border-collapse:collapse}")
      .Append("td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}")
      .Append(".side{display:flex;gap:1em;align-items:center}.side>div{flex:0 0 auto}.side>div:last-child{flex:1 1 auto;min-width:0}.side td{text-align:left}</style>")
      .Append("<script>").Append(plotlyJs.Value).Append("</script></head><body>")
      .Append($"<h1>{WebUtility.HtmlEncode title}</h1>") |> ignore
    for s in sections do sb.Append(render s).Append('\n') |> ignore
    sb.Append("</body></html>").ToString()

/// Writes the report atomically.
let write (path: string) (title: string) (sections: Section list) =
    let text = html title sections
    CleanSight.Pipeline.Files.writeAtomic path (fun s ->
        let bytes = Encoding.UTF8.GetBytes text
        s.Write(bytes, 0, bytes.Length))
