/// An append-only CSV file of records, one line each, every field quoted (RFC 4180: a field may hold
/// commas, quotes and newlines). Each record is flushed to disk before the next one is made, so a
/// kill -9 loses nothing already written; reopening returns the records there, drops a last line cut
/// short by a crash, and refuses a file with another header. `evaluate` (samples.csv) and `defend`
/// (defended.csv) keep their records here.
module CleanSight.Pipeline.Data.RecordStore

open System
open System.IO
open System.Text
open CleanSight.Core

let private quote (s: string) = "\"" + s.Replace("\"", "\"\"") + "\""

/// One CSV line (no newline) of the fields, each quoted.
let line (fields: string seq) = fields |> Seq.map quote |> String.concat ","

/// Splits one line written by `line` into its fields.
let fields (line: string) =
    let out = Collections.Generic.List<string>()
    let sb = StringBuilder()
    let mutable i = 0
    let mutable inQuotes = false
    while i < line.Length do
        let c = line.[i]
        if inQuotes then
            if c = '"' && i + 1 < line.Length && line.[i + 1] = '"' then sb.Append('"') |> ignore; i <- i + 1
            elif c = '"' then inQuotes <- false
            else sb.Append c |> ignore
        elif c = '"' then inQuotes <- true
        elif c = ',' then out.Add(sb.ToString()); sb.Clear() |> ignore
        else sb.Append c |> ignore
        i <- i + 1
    out.Add(sb.ToString())
    out.ToArray()

/// Splits text into records at '\n' outside quotes (a quoted field may hold newlines, as in RFC 4180);
/// returns the complete records and the length of the text they span (up to their last '\n').
let private records (text: string) =
    let out = Collections.Generic.List<string>()
    let mutable start = 0
    let mutable inQuotes = false
    for i in 0 .. text.Length - 1 do
        match text.[i] with
        | '"' -> inQuotes <- not inQuotes
        | '\n' when not inQuotes ->
            out.Add(text.Substring(start, i - start))
            start <- i + 1
        | _ -> ()
    out.ToArray(), start

/// Opens the store at `path` (header: `columns`) for appending, returning the records already there,
/// each read back by `ofLine`. A last line cut short by a crash (no newline) is dropped — also a
/// header cut short, which leaves a new store; a file with another header, or a record `ofLine`
/// refuses, is an InputError naming the file, which is left untouched.
let openStore (columns: string[]) (ofLine: string -> 'r) (path: string) : 'r[] * StreamWriter =
    let header = line columns
    let name = Path.GetFileName path
    let existing =
        if File.Exists path then
            let text = File.ReadAllText path
            let headerLine = header + "\n"
            if not (text.StartsWith(headerLine, StringComparison.Ordinal) || headerLine.StartsWith(text, StringComparison.Ordinal)) then
                raise (InputError(path, $"exists but is not a {name} of this version; use a new --out folder"))
            let lines, completeLength = records text
            let complete = text.Substring(0, completeLength)
            if complete.Length < text.Length then
                use f = new FileStream(path, FileMode.Open)
                f.SetLength(int64 (Encoding.UTF8.GetByteCount complete))
            lines |> Array.filter (fun l -> l <> "")
        else
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath path)) |> ignore
            [||]
    if existing.Length = 0 then // new, or killed before its header was complete
        let w = new StreamWriter(path, false, UTF8Encoding false)
        w.Write(header + "\n")
        w.Flush()
        [||], w
    else
        let parse i line =
            try ofLine line
            with e when (e :? ArgumentException || e :? FormatException || e :? OverflowException || e :? Json.JsonException) ->
                raise (InputError(path, $"record {i + 1} is damaged ({e.Message.Split('\n').[0]}); use a new --out folder", e))
        existing.[1..] |> Array.mapi parse, new StreamWriter(path, true, UTF8Encoding false)

/// Appends one record's line durably (flushed to disk before the next sample starts).
let append (w: StreamWriter) (recordLine: string) =
    w.Write(recordLine + "\n")
    w.Flush()
    (w.BaseStream :?> FileStream).Flush true
