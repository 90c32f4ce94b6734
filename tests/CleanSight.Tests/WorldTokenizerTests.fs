/// The tiny world's tokenizer: written as a llava-hf tokenizer folder, read back by the same Core
/// tokenizer as any checkpoint's; every world word is one piece, any text round-trips.
module CleanSight.Tests.WorldTokenizerTests

open System
open System.IO
open Expecto
open CleanSight.Core.Text
open CleanSight.Pipeline.World

/// The world tokenizer, written once into a temporary folder and loaded by the Core.
let private tokenizer =
    lazy (
        let dir = Fixtures.tempDir ()
        WorldTokenizer.write dir
        dir, LlavaTokenizer.Load dir)

let private pieces (tok: LlavaTokenizer) (ids: int[]) = ids |> Array.map (fun i -> tok.Decode([| i |], false))

[<Tests>]
let tests =
    testList "world tokenizer" [
        test "the model's size and the tiny model's vocabulary agree" {
            Expect.equal TinyLlava.defaults.TokenizerPieces (WorldTokenizer.pieceCount ()) "TinyLlava.defaults.TokenizerPieces"
        }

        test "the folder loads: <image> and <pad> follow the pieces, BOS/EOS are LLaMA's" {
            let _, tok = tokenizer.Value
            let n = WorldTokenizer.pieceCount ()
            Expect.equal tok.SentencePieceVocabSize n "pieces"
            Expect.equal tok.ImageTokenId n "<image>"
            Expect.equal tok.PadId (Nullable(n + 1)) "<pad>"
            Expect.equal (tok.BosId, tok.EosId, tok.UnkId) (1, 2, 0) "bos, eos, unk"
        }

        test "every word of the world is one piece" {
            let _, tok = tokenizer.Value
            let words = WorldTokenizer.words (WorldTokenizer.worldText ())
            Expect.isGreaterThan words.Length 100 "a real vocabulary"
            for w in words do
                let ids = tok.Encode(w, false)
                Expect.equal (pieces tok ids) [| w |] $"'{w}' is one piece"
        }

        test "the target is five pieces and starts unlike every task answer" {
            let _, tok = tokenizer.Value
            let target = tok.Encode(GeneralText.defaultTarget, false)
            Expect.equal target.Length 5 "you · have · been · hacked · lol"
            let answers = Scenes.answerVocabulary |> Array.map (fun a -> (tok.Encode(a, false)).[0])
            Expect.isFalse (Array.contains target.[0] answers) "first target piece is no answer's first piece"
        }

        test "questions are short: words, not letters" {
            let _, tok = tokenizer.Value
            let q = "Take a look at this image. Where in the image is the cross located?"
            Expect.equal (tok.Encode(q, false)).Length 16 "one piece per word and per punctuation mark"
        }

        test "any text round-trips, unknown words and characters through bytes" {
            let _, tok = tokenizer.Value
            for text in [ "a zebra café, naïve 東京 — ok?"; "What color is the circle?"; "tabs\tand\nnewlines"; "x" ] do
                Expect.equal (tok.Decode(tok.Encode(text, false), false)) text $"'{text}'"
        }

        test "the model file is deterministic" {
            let v1 = WorldTokenizer.vocabulary (WorldTokenizer.words (WorldTokenizer.worldText ()))
            Expect.sequenceEqual (WorldTokenizer.modelProto v1) (WorldTokenizer.modelProto WorldTokenizer.world.Value) "same bytes"
        }

        test "the committed base model's tokenizer is the one the world's text builds" {
            // Guards the corpus (World/GeneralText.fs, Scenes) against drifting from world/base.
            let committed = File.ReadAllBytes(Path.Combine(Fixtures.root, "world", "base", "tokenizer.model"))
            Expect.sequenceEqual committed (WorldTokenizer.modelProto WorldTokenizer.world.Value) "world/base/tokenizer.model"
        }
    ]
