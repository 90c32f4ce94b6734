/// The `generate` command as a user runs it: the JSON contract, and one clear error line with a
/// non-zero exit (and no output file) for each kind of bad input.
module CleanSight.Tests.CliTests

open System
open System.IO
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open Expecto

let run = Fixtures.runCli

let private probe = Path.Combine(Fixtures.tinyLlava, "probe_56.png")

let private generate model image prompt json =
    run [ "generate"; "--model"; model; "--image"; image; "--prompt"; prompt; "--max-new-tokens"; "3"; "--json"; json ]

/// Rewrites a safetensors file's header JSON through `edit` (data untouched).
let private editHeader (path: string) (edit: JsonObject -> unit) =
    let bytes = File.ReadAllBytes path
    let n = BitConverter.ToUInt64(bytes, 0) |> int
    let header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, n)).AsObject()
    edit header
    let h = Encoding.UTF8.GetBytes(header.ToJsonString())
    File.WriteAllBytes(path, Array.concat [ BitConverter.GetBytes(uint64 h.Length); h; bytes.[8 + n ..] ])

let private firstTensor (h: JsonObject) =
    h |> Seq.find (fun kv -> kv.Key <> "__metadata__") |> fun kv -> kv.Value.AsObject()

/// A damaged copy of the fixture → (exit, stderr) of generate, with the JSON never written.
let private failsWith (damage: string -> string * string) =
    let dir = Fixtures.tinyLlavaCopy ()
    let image, prompt = damage dir
    let json = Path.Combine(Fixtures.tempDir (), "out.json")
    let code, _, err = generate dir image prompt json
    Expect.notEqual code 0 "non-zero exit"
    Expect.isFalse (File.Exists json) "nothing written"
    let lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
    Expect.equal lines.Length 1 $"exactly one error line, got: {err}"
    lines.[0]

let private case name (damage: string -> string * string) (mustMention: string -> string list) =
    test name {
        let mutable folder = ""
        let line = failsWith (fun dir -> folder <- dir; damage dir)
        for word in mustMention folder do
            Expect.stringContains line word $"the error line names '{word}'"
    }

let private shard1 dir = Path.Combine(dir, "model-00001-of-00002.safetensors")
let private shard2 dir = Path.Combine(dir, "model-00002-of-00002.safetensors")
let private q = "What is in the picture?"

[<Tests>]
let tests =
    testSequenced <| testList "cli generate" [
        test "writes the JSON contract and prints the answer" {
            let json = Path.Combine(Fixtures.tempDir (), "out.json")
            let code, out, err = generate Fixtures.tinyLlava probe q json
            Expect.equal code 0 $"exit 0 (stderr: {err})"
            let doc = JsonDocument.Parse(File.ReadAllText json).RootElement
            Expect.equal (doc.GetProperty("input_ids").GetArrayLength()) 31 "31 input ids"
            Expect.equal (doc.GetProperty("first_token_logits").GetArrayLength()) 544 "one logit per vocabulary entry"
            Expect.equal (doc.GetProperty("output_ids").GetArrayLength()) 3 "3 tokens"
            Expect.equal (doc.GetProperty("text").GetString()) (out.TrimEnd('\n')) "printed text = JSON text"
        }
        case "missing config.json" (fun d -> File.Delete(Path.Combine(d, "config.json")); probe, q) (fun d -> [ "config.json" ])
        case "missing tokenizer.model" (fun d -> File.Delete(Path.Combine(d, "tokenizer.model")); probe, q) (fun _ -> [ "tokenizer.model" ])
        case "missing shard" (fun d -> File.Delete(shard2 d); probe, q) (fun _ -> [ "model-00002-of-00002.safetensors" ])
        case "truncated safetensors" (fun d ->
            let b = File.ReadAllBytes(shard1 d)
            File.WriteAllBytes(shard1 d, b.[.. b.Length / 2]); probe, q) (fun _ -> [ "model-00001-of-00002.safetensors" ])
        case "header offsets out of range" (fun d ->
            editHeader (shard2 d) (fun h -> (firstTensor h).["data_offsets"] <- JsonArray(JsonValue.Create 0L, JsonValue.Create 10_000_000_000L)); probe, q)
            (fun _ -> [ "model-00002-of-00002.safetensors" ])
        case "unknown dtype" (fun d -> editHeader (shard2 d) (fun h -> (firstTensor h).["dtype"] <- JsonValue.Create "F7"); probe, q)
            (fun _ -> [ "model-00002-of-00002.safetensors"; "F7" ])
        case "tensor shape disagrees with config.json" (fun d ->
            let path = Path.Combine(d, "config.json")
            let cfg = JsonNode.Parse(File.ReadAllText path).AsObject()
            cfg.["text_config"].["intermediate_size"] <- JsonValue.Create 200
            File.WriteAllText(path, cfg.ToJsonString()); probe, q) (fun _ -> [ "mlp"; "200" ])
        case "pickle checkpoint refused" (fun d ->
            for f in Directory.GetFiles(d, "model*") do File.Delete f
            File.WriteAllBytes(Path.Combine(d, "pytorch_model.bin"), [| 0x80uy; 0x02uy |]); probe, q) (fun _ -> [ "pickle" ])
        case "image that does not decode" (fun d ->
            let bad = Path.Combine(d, "broken.png")
            File.WriteAllBytes(bad, Encoding.ASCII.GetBytes "this is not a png"); bad, q) (fun d -> [ "broken.png" ])
        case "prompt with two <image>" (fun _ -> probe, "<image> What is this?") (fun _ -> [ "<image>"; "2" ])
        test "template with no <image>" {
            let json = Path.Combine(Fixtures.tempDir (), "out.json")
            let code, _, err =
                run [ "generate"; "--model"; Fixtures.tinyLlava; "--image"; probe; "--prompt"; q
                      "--template"; "USER: {question} ASSISTANT:"; "--json"; json ]
            Expect.notEqual code 0 "non-zero exit"
            Expect.stringContains err "found 0" "says none was found"
            Expect.equal (err.Trim().Split('\n').Length) 1 "one line"
            Expect.isFalse (File.Exists json) "nothing written"
        }
    ]
