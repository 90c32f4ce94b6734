module CleanSight.Tests.TokenizerTests

open System
open System.IO
open System.Text.Json
open Expecto
open CleanSight.Core
open CleanSight.Core.Text

let private readJson (path: string) =
    use doc = JsonDocument.Parse(File.ReadAllText path)
    doc.RootElement.Clone()

let private intArray (e: JsonElement) =
    e.EnumerateArray() |> Seq.map (fun x -> x.GetInt32()) |> Array.ofSeq

/// The tiny checkpoint's expected.json: template, question, input_ids, image_positions.
let private tinyExpected () = readJson (Path.Combine(Fixtures.tinyLlava, "expected.json"))

/// image_token_index and image_seq_length of the tiny checkpoint's config.json.
let private tinyImageConfig () =
    let config = readJson (Path.Combine(Fixtures.tinyLlava, "config.json"))
    config.GetProperty("image_token_index").GetInt32(), config.GetProperty("image_seq_length").GetInt32()

let private llamaTokenizer (dir: string) =
    LlavaTokenizer.FromModelFile(Path.Combine(dir, "tokenizer.model"), 32000)

/// A fresh temporary folder, deleted by the returned disposable.
let private tempFolder () =
    let dir = Directory.CreateTempSubdirectory("cleansight-tok-").FullName
    dir, { new IDisposable with member _.Dispose() = Directory.Delete(dir, true) }

let private expectInputError (expectedFile: string) (action: unit -> unit) =
    try
        action ()
        failtest $"expected InputError for {expectedFile}"
    with :? InputError as e ->
        Expect.equal (Path.GetFullPath e.File) (Path.GetFullPath expectedFile) $"InputError names the file: {e.Message}"

[<Tests>]
let tests =
    testList "tokenizer" [
        test "tiny-llava-hf prompt ids identical to HF" {
            let expected = tinyExpected ()
            let imageTokenId, imageSeqLength = tinyImageConfig ()
            let tokenizer = LlavaTokenizer.Load(Fixtures.tinyLlava, imageTokenId)
            Expect.equal tokenizer.ImageTokenId 512 "image token id"
            Expect.equal tokenizer.BosId 1 "bos"
            Expect.equal tokenizer.EosId 2 "eos"
            Expect.equal tokenizer.PadId (Nullable 513) "pad"
            let prompt =
                LlavaPrompt.Build(
                    tokenizer,
                    expected.GetProperty("prompt_question").GetString(),
                    imageSeqLength,
                    imageTokenId,
                    expected.GetProperty("template").GetString())
            Expect.sequenceEqual prompt.InputIds (intArray (expected.GetProperty "input_ids")) "input_ids"
            Expect.sequenceEqual prompt.ImagePositions (intArray (expected.GetProperty "image_positions")) "image_positions"
        }

        test "tiny-llava-hf image token comes from added_tokens_decoder without an override" {
            let tokenizer = LlavaTokenizer.Load(Fixtures.tinyLlava)
            Expect.equal tokenizer.ImageTokenId 512 "<image> of tokenizer_config.json"
            Expect.equal tokenizer.VocabSize 514 "512 pieces + <image> + <pad>"
        }

        test "LLaMA tokenizer: all twelve llava-1.5 prompts identical to HF" {
            match Fixtures.llamaTokenizerDir with
            | None -> skiptest "shared llama-tokenizer fixture absent"
            | Some dir ->
                let tokenizer = llamaTokenizer dir
                let expected = readJson (Path.Combine(dir, "expected_ids.json"))
                let imageTokens = expected.GetProperty("image_tokens").GetInt32()
                let template = expected.GetProperty("template").GetString()
                let cases = expected.GetProperty("cases").EnumerateArray() |> Array.ofSeq
                Expect.equal cases.Length 12 "twelve cases"
                for case in cases do
                    let question = case.GetProperty("question").GetString()
                    let prompt = LlavaPrompt.Build(tokenizer, question, imageTokens, 32000, template)
                    Expect.sequenceEqual prompt.InputIds (intArray (case.GetProperty "input_ids")) question
                    Expect.equal prompt.ImageTokenCount imageTokens $"{question}: image tokens"
        }

        test "a prompt with zero or two <image> is rejected" {
            let tokenizer = LlavaTokenizer.Load(Fixtures.tinyLlava)
            let rejected (question: string) (template: string) (found: int) =
                let e =
                    Expect.throwsC
                        (fun () -> LlavaPrompt.Build(tokenizer, question, 16, 512, template) |> ignore)
                        id
                Expect.isTrue (e :? ArgumentException) $"ArgumentException, got {e.GetType().Name}"
                Expect.stringContains e.Message $"prompt must contain exactly one <image>, found {found}" "message"
            rejected "What is this?" "USER: {question} ASSISTANT:" 0
            rejected "What is <image>?" LlavaPrompt.DefaultTemplate 2
            rejected "Two?" "USER: <image><image>\n{question} ASSISTANT:" 2
        }

        test "decoding the question part of the ids gives the question back" {
            let expected = tinyExpected ()
            let tokenizer = LlavaTokenizer.Load(Fixtures.tinyLlava)
            let question = expected.GetProperty("prompt_question").GetString()
            let prompt = LlavaPrompt.Build(tokenizer, question, 16, 512)
            let afterImage = prompt.InputIds |> Array.skip (Array.last prompt.ImagePositions + 1)
            Expect.equal (tokenizer.Decode(afterImage)) ("\n" + question + " ASSISTANT:") "text after the image"
            Expect.equal (tokenizer.Decode(tokenizer.Encode(question, false))) question "question round trip"
            Expect.equal (tokenizer.Decode(tokenizer.Encode(question, true))) question "BOS is skipped"
            Expect.equal (tokenizer.Decode(prompt.InputIds, false)).[0..3] "<s> " "special tokens kept when asked"
            match Fixtures.llamaTokenizerDir with
            | None -> ()
            | Some dir ->
                let llama = llamaTokenizer dir
                for text in [ "What colour is the car on the left?"; "Count the apples: how many?"; "héllo ✓ 日本 😀\n  two  spaces " ] do
                    Expect.equal (llama.Decode(llama.Encode(text, true))) text $"LLaMA round trip of {text}"
        }

        test "a corrupt tokenizer.model raises InputError naming the file" {
            let dir, cleanup = tempFolder ()
            use _ = cleanup
            let modelPath = Path.Combine(dir, "tokenizer.model")
            File.WriteAllBytes(modelPath, [| 0xDEuy; 0xADuy; 0xBEuy; 0xEFuy; 1uy; 2uy; 3uy; 4uy; 0xFFuy; 0xFEuy |])
            expectInputError modelPath (fun () -> LlavaTokenizer.Load(dir, 512) |> ignore)
            expectInputError modelPath (fun () -> LlavaTokenizer.FromModelFile(modelPath, 512) |> ignore)
        }

        test "a folder with only tokenizer.json is refused" {
            let dir, cleanup = tempFolder ()
            use _ = cleanup
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{}")
            expectInputError (Path.Combine(dir, "tokenizer.model")) (fun () -> LlavaTokenizer.Load(dir, 512) |> ignore)
        }

        test "a malformed tokenizer_config.json raises InputError naming it" {
            let dir, cleanup = tempFolder ()
            use _ = cleanup
            File.Copy(Path.Combine(Fixtures.tinyLlava, "tokenizer.model"), Path.Combine(dir, "tokenizer.model"))
            let configPath = Path.Combine(dir, "tokenizer_config.json")
            File.WriteAllText(configPath, "{ not json")
            expectInputError configPath (fun () -> LlavaTokenizer.Load(dir) |> ignore)
            File.WriteAllText(configPath, """{ "added_tokens_decoder": { "512": { "special": true } } }""")
            expectInputError configPath (fun () -> LlavaTokenizer.Load(dir) |> ignore)
        }
    ]
