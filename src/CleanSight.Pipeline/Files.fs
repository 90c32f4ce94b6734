/// Small JSON and file helpers shared by the stages: atomic writes, so a crash never leaves half a file.
module CleanSight.Pipeline.Files

open System
open System.IO
open System.Text.Json

/// Writes a file atomically: a temp file in the same folder, then a rename over the target.
let writeAtomic (path: string) (write: Stream -> unit) =
    let full = Path.GetFullPath path
    Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
    let temp = full + "." + Guid.NewGuid().ToString("N") + ".tmp"
    try
        using (File.Create temp) write
        File.Move(temp, full, true)
    with _ ->
        if File.Exists temp then File.Delete temp
        reraise ()

let private jsonOptions = JsonSerializerOptions(WriteIndented = true)

/// Serialises a value as indented JSON, atomically.
let writeJson (path: string) (value: obj) =
    writeAtomic path (fun s -> JsonSerializer.Serialize(s, value, value.GetType(), jsonOptions))
