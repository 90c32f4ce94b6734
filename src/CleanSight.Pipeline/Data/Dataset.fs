/// The dataset format every stage reads: JSON Lines, UTF-8, one item per line,
///   {"id": str, "image": path relative to the .jsonl file, "question": str, "answers": [str, ...], "task": "vqa" | "caption"}
/// `read` checks everything once and fails with an InputError naming the file and the line;
/// later stages trust what it returns.
module CleanSight.Pipeline.Data.Dataset

open System
open System.Collections.Generic
open System.IO
open System.Text
open System.Text.Encodings.Web
open System.Text.Json
open CleanSight.Core
open CleanSight.Pipeline

type Task =
    | Vqa
    | Caption

/// One sample. `Image` is relative to the dataset file's folder, with '/' separators.
type Item =
    { Id: string
      Image: string
      Question: string
      Answers: string list
      Task: Task }

/// The task's name in the file.
let taskName =
    function
    | Vqa -> "vqa"
    | Caption -> "caption"

/// The task of a name in the file, or None.
let tryParseTask =
    function
    | "vqa" -> Some Vqa
    | "caption" -> Some Caption
    | _ -> None

/// Why an image path cannot be used, or None. Pure text check: the path must be relative and must not
/// climb above the dataset folder through ".." segments ("a/../b.png" is fine, "a/../../b.png" is not).
let imagePathProblem (image: string) : string option =
    let isAbsolute =
        Path.IsPathRooted image || image.StartsWith "/" || image.StartsWith "\\"
        || (image.Length >= 2 && Char.IsLetter image.[0] && image.[1] = ':')
    if String.IsNullOrWhiteSpace image then Some "\"image\" is empty"
    elif isAbsolute then Some $"image path \"{image}\" is absolute; give it relative to the dataset file"
    else
        let depths =
            image.Split([| '/'; '\\' |])
            |> Array.scan (fun depth segment ->
                match segment with
                | ""
                | "." -> depth
                | ".." -> depth - 1
                | _ -> depth + 1) 0
        if Array.exists (fun d -> d < 0) depths then Some $"image path \"{image}\" leaves the dataset folder"
        else None

/// Why an item cannot be used, or None (everything `read` checks except the file system).
/// `labelled`: it must have answers (an item to evaluate on), else it may have none (an input to run).
let private problem (labelled: bool) (item: Item) : string option =
    if String.IsNullOrWhiteSpace item.Id then Some "\"id\" is empty"
    elif item.Task = Vqa && String.IsNullOrWhiteSpace item.Question then Some "\"question\" is empty (a vqa item needs one)"
    elif item.Question.Contains(CleanSight.Core.Text.LlavaPrompt.ImagePlaceholder, StringComparison.Ordinal) then
        Some $"\"question\" contains {CleanSight.Core.Text.LlavaPrompt.ImagePlaceholder}; the prompt template places the image"
    elif labelled && List.isEmpty item.Answers then Some "\"answers\" is empty"
    elif item.Answers |> List.exists String.IsNullOrWhiteSpace then Some "\"answers\" holds an empty answer"
    else imagePathProblem item.Image

/// Why an item cannot be stored, or None (everything `read` checks except the file system).
let itemProblem (item: Item) : string option = problem true item

/// The absolute path of an item's image.
let imagePath (jsonlPath: string) (item: Item) : string =
    let folder = Path.GetDirectoryName(Path.GetFullPath jsonlPath)
    Path.GetFullPath(Path.Combine(folder, item.Image))

/// The line's JSON object as an Item, or the problem in words. `labelled`: "answers" is required and
/// not empty; otherwise it may be absent (read as no answers) or empty.
let private parseLine (labelled: bool) (text: string) : Result<Item, string> =
    try
        use doc = JsonDocument.Parse text
        let root = doc.RootElement
        if root.ValueKind <> JsonValueKind.Object then Error $"expected a JSON object, got {root.ValueKind}"
        else
            let names = [ for p in root.EnumerateObject() -> p.Name ]
            match names |> List.countBy id |> List.tryFind (fun (_, n) -> n > 1) with
            | Some (name, _) -> Error $"field \"{name}\" appears twice"
            | None ->
                let field name (kind: JsonValueKind) (kindName: string) =
                    match root.TryGetProperty(name: string) with
                    | false, _ -> Error $"missing field \"{name}\""
                    | true, v when v.ValueKind <> kind -> Error $"field \"{name}\" must be {kindName}, got {v.ValueKind}"
                    | true, v -> Ok v
                let str name = field name JsonValueKind.String "a string" |> Result.map (fun v -> v.GetString())
                let answers =
                    if not labelled && not (fst (root.TryGetProperty "answers")) then Ok []
                    else
                        field "answers" JsonValueKind.Array "an array of strings"
                        |> Result.bind (fun arr ->
                            let values = [ for v in arr.EnumerateArray() -> v ]
                            if values |> List.exists (fun v -> v.ValueKind <> JsonValueKind.String) then
                                Error "field \"answers\" must hold only strings"
                            else Ok [ for v in values -> v.GetString() ])
                let task =
                    str "task"
                    |> Result.bind (fun t ->
                        match tryParseTask t with
                        | Some task -> Ok task
                        | None -> Error $"unknown task \"{t}\" (expected \"vqa\" or \"caption\")")
                match str "id", str "image", str "question", answers, task with
                | Ok id, Ok image, Ok question, Ok answers, Ok task ->
                    let item = { Id = id; Image = image; Question = question; Answers = answers; Task = task }
                    match problem labelled item with
                    | Some problem -> Error problem
                    | None -> Ok item
                | Error e, _, _, _, _
                | _, Error e, _, _, _
                | _, _, Error e, _, _
                | _, _, _, Error e, _
                | _, _, _, _, Error e -> Error e
    with :? JsonException as e ->
        Error $"invalid JSON ({e.Message.Split('.').[0]})"

/// Splits the file's bytes at '\n' (dropping a trailing '\r' and a leading BOM) and decodes each line as
/// strict UTF-8: (1-based line number, text, or None when the bytes are not UTF-8).
let private lines (bytes: byte[]) : (int * string option)[] =
    let utf8 = UTF8Encoding(false, true)
    let start = if bytes.Length >= 3 && bytes.[0] = 0xEFuy && bytes.[1] = 0xBBuy && bytes.[2] = 0xBFuy then 3 else 0
    let ends = [| for i in start .. bytes.Length - 1 do if bytes.[i] = '\n'B then yield i
                  yield bytes.Length |]
    ends
    |> Array.mapi (fun n stop ->
        let from = if n = 0 then start else ends.[n - 1] + 1
        let stop = if stop > from && bytes.[stop - 1] = '\r'B then stop - 1 else stop
        let text =
            try Some(utf8.GetString(bytes, from, stop - from))
            with :? DecoderFallbackException -> None
        n + 1, text)

/// Reads and checks a dataset file; each problem is an InputError "PATH: line N: problem".
/// Blank lines are skipped; a file without items is an error. `labelled`: every item has answers.
let private readWith (labelled: bool) (path: string) : Item[] =
    let fail (line: int) (problem: string) = raise (InputError(path, $"line {line}: {problem}"))
    let bytes =
        try File.ReadAllBytes path
        with
        | :? FileNotFoundException
        | :? DirectoryNotFoundException -> raise (InputError(path, "dataset file not found"))
        | :? IOException
        | :? UnauthorizedAccessException as e -> raise (InputError(path, $"cannot read dataset file: {e.Message}"))
    let seen = Dictionary<string, int>()
    let items =
        [| for (line, text) in lines bytes do
               match text with
               | None -> fail line "invalid UTF-8"
               | Some text when String.IsNullOrWhiteSpace text -> ()
               | Some text ->
                   match parseLine labelled text with
                   | Error problem -> fail line problem
                   | Ok item ->
                       match seen.TryGetValue item.Id with
                       | true, first -> fail line $"duplicate id \"{item.Id}\" (first on line {first})"
                       | _ -> seen.[item.Id] <- line
                       let image = imagePath path item
                       if not (File.Exists image) then fail line $"image file not found: {image}"
                       yield item |]
    if items.Length = 0 then raise (InputError(path, "no items"))
    items

/// Reads and checks a dataset file for evaluation: every item has answers. Each problem is an
/// InputError "PATH: line N: problem"; blank lines are skipped; a file without items is an error.
let read (path: string) : Item[] = readWith true path

/// Reads and checks a file of inputs to run (`defend`): as `read`, but "answers" may be absent or
/// empty — the inputs a user screens need no answers.
let readInputs (path: string) : Item[] = readWith false path

/// Writes items as JSON Lines (UTF-8 without BOM, fields in the documented order), atomically.
/// Items `read` would refuse (empty answers, bad image paths, duplicate ids) are an ArgumentException.
let write (path: string) (items: Item seq) =
    let items = Seq.toArray items
    for item in items do
        itemProblem item |> Option.iter (fun p -> invalidArg (nameof items) $"item \"{item.Id}\": {p}")
    match items |> Array.countBy (fun i -> i.Id) |> Array.tryFind (fun (_, n) -> n > 1) with
    | Some (id, _) -> invalidArg (nameof items) $"duplicate id \"{id}\""
    | None -> ()
    let options = JsonWriterOptions(Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping)
    Files.writeAtomic path (fun stream ->
        for item in items do
            use w = new Utf8JsonWriter(stream, options)
            w.WriteStartObject()
            w.WriteString("id", item.Id)
            w.WriteString("image", item.Image)
            w.WriteString("question", item.Question)
            w.WriteStartArray "answers"
            for a in item.Answers do
                w.WriteStringValue a
            w.WriteEndArray()
            w.WriteString("task", taskName item.Task)
            w.WriteEndObject()
            w.Flush()
            stream.WriteByte '\n'B)
