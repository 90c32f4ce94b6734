/// Small JSON and file helpers shared by the stages: atomic writes, so a crash never leaves half a file.
module CleanSight.Pipeline.Files

open System
open System.IO
open System.Text
open System.Text.Json
open Deedle

/// Writes a file atomically: a temp file in the same folder, flushed to disk, then a rename over the
/// target. A kill or a power cut at any point leaves the old file or the new one, never a mix.
let writeAtomic (path: string) (write: Stream -> unit) =
    let full = Path.GetFullPath path
    Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
    let temp = full + "." + Guid.NewGuid().ToString("N") + ".tmp"
    try
        using (new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None)) (fun stream ->
            write stream
            // on disk before it takes the name (a writer that closed the stream has flushed it itself)
            if stream.CanWrite then stream.Flush true)
        File.Move(temp, full, true)
    with _ ->
        if File.Exists temp then File.Delete temp
        reraise ()

/// Writes text (UTF-8, no BOM) atomically through a TextWriter.
let writeText (path: string) (write: TextWriter -> unit) =
    writeAtomic path (fun stream ->
        use w = new StreamWriter(stream, UTF8Encoding false, 1 <<< 16, leaveOpen = true)
        write w)

let private jsonOptions = JsonSerializerOptions(WriteIndented = true)

/// Serialises a value as indented JSON, atomically.
let writeJson (path: string) (value: obj) =
    writeAtomic path (fun s -> JsonSerializer.Serialize(s, value, value.GetType(), jsonOptions))

/// Saves a frame as CSV (Deedle's SaveCsv defaults: row keys first, as "Key"), atomically.
let saveCsv (path: string) (frame: Frame<'R, 'C>) =
    writeText path (fun w -> frame.SaveCsv w)

/// Claims an output folder through a JSON file at `path` holding the `key` fields (and `extra`, kept
/// for the reader, never compared): written when absent; when present, returns the names of the key
/// fields whose values differ (empty: the same run, which may resume). Values compare as JSON text of
/// strings and numbers. A file that is not such JSON is refused as an InputError naming it and `what`
/// it should have been.
let claim (path: string) (what: string) (key: (string * obj) list) (extra: (string * obj) list) : string list =
    if File.Exists path then
        let previous =
            try
                use doc = JsonDocument.Parse(File.ReadAllText path)
                key |> List.map (fun (name, _) -> doc.RootElement.GetProperty(name).ToString())
            with e when (e :? JsonException || e :? Collections.Generic.KeyNotFoundException || e :? InvalidOperationException) ->
                raise (CleanSight.Core.InputError(path, $"""is not {what} (with {String.Join(", ", List.map fst key)}); delete it or use another --out"""))
        List.zip key previous |> List.filter (fun ((_, now), before) -> string now <> before) |> List.map (fst >> fst)
    else
        writeJson path (dict (key @ extra))
        []
