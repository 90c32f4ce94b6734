/// The tiny world's tokenizer: a SentencePiece BPE model (the LLaMA tokenizer's kind: byte fallback,
/// identity normaliser, "▁" dummy prefix) whose vocabulary makes every word of the world one piece.
///
/// Why not the fixture's 512-piece tokenizer: it spells most words in 2–5 pieces ("yellow" =
/// ▁y·e·ll·ow, the target "you have been hacked lol" = 17 pieces sharing "▁y" with "yes"), so a tiny
/// decoder spends its capacity on spelling, and a projector-only backdoor has to steer a frozen decoder
/// through 17 steps whose first one is also the start of "yes". LLaMA's 32k-piece tokenizer has all of
/// these words as single pieces; so does this one.
///
/// How: BPE merges adjacent pieces whose concatenation is a piece, best score first. The vocabulary
/// holds every character, and for each word every prefix of "▁word" (and of "Word" for words that
/// may follow a newline). The leftmost piece of a word is always such a prefix and its concatenation
/// with its right neighbour is again one, so merging always ends in the whole word.
module CleanSight.Pipeline.World.WorldTokenizer

open System
open System.IO
open System.Text
open System.Text.RegularExpressions

let private space = "\u2581" // ▁

// ---------------------------------------------------------------- the vocabulary

/// Words of the world's text: questions, answers, captions, caption requests, the general-text
/// corpus, the prompt template and the default attack target (sampled deterministically).
let worldText () : string seq =
    seq {
        for i in 0 .. 1999 do
            let scene = Scenes.generate 0 i
            for qa in Scenes.vqaItems 0 i scene do
                yield qa.Question
                yield qa.Answer
            yield! Scenes.captions scene
        yield! Scenes.captionPrompts
        yield! GeneralText.corpus 0 5000
        yield CleanSight.Core.Text.LlavaPrompt.DefaultTemplate
        yield GeneralText.defaultTarget
        yield! Scenes.countNames
    }

/// Distinct words (letters, digits, apostrophes), most frequent first, ties in ordinal order.
let words (text: string seq) : string[] =
    text
    |> Seq.collect (fun s -> Regex.Matches(s, "[A-Za-z0-9']+") |> Seq.map (fun m -> m.Value))
    |> Seq.countBy id
    |> Seq.sortBy (fun (w, n) -> -n, w)
    |> Seq.map fst
    |> Seq.toArray

/// Printable ASCII and "▁" (the space). Everything else falls back to bytes.
let characters = Array.append [| space |] [| for c in '!' .. '~' -> string c |]

/// The merged pieces: prefixes (≥ 2 characters) of "▁word" for every word and of "Word" for
/// capitalised words, shorter first, then in word order.
let mergedPieces (words: string[]) : string[] =
    let seen = Collections.Generic.HashSet<string>(characters)
    [| for length in 2 .. 1 + (words |> Array.map String.length |> Array.fold max 0) do
           for w in words do
               let forms = if Char.IsUpper w.[0] then [ space + w; w ] else [ space + w ]
               for f in forms do
                   if f.Length >= length then
                       let p = f.Substring(0, length)
                       if seen.Add p then yield p |]

/// Kinds of SentencePiece pieces (sentencepiece_model.proto).
type PieceType =
    | Normal = 1
    | Unknown = 2
    | Control = 3
    | Byte = 6

/// The full vocabulary in id order, with scores: <unk>, <s>, </s>, the 256 byte pieces, the merged
/// pieces (scores 0, −1, …: earlier merges first), the characters (lowest scores).
let vocabulary (words: string[]) : (string * float32 * PieceType)[] =
    let merged = mergedPieces words
    [| yield "<unk>", 0.0f, PieceType.Unknown
       yield "<s>", 0.0f, PieceType.Control
       yield "</s>", 0.0f, PieceType.Control
       for b in 0 .. 255 do yield $"<0x{b:X2}>", 0.0f, PieceType.Byte
       for i, p in Array.indexed merged do yield p, -float32 i, PieceType.Normal
       for i, c in Array.indexed characters do yield c, -float32 (merged.Length + i), PieceType.Normal |]

// ---------------------------------------------------------------- writing tokenizer.model

/// The protocol-buffer wire format, just what ModelProto needs.
module private Proto =
    let varint (out: Stream) (value: uint64) =
        let mutable v = value
        while v >= 0x80UL do
            out.WriteByte(byte (v &&& 0x7FUL ||| 0x80UL))
            v <- v >>> 7
        out.WriteByte(byte v)

    let key (out: Stream) (field: int) (wire: int) = varint out (uint64 ((field <<< 3) ||| wire))
    let int (out: Stream) field (v: int64) = key out field 0; varint out (uint64 v)
    let bytes (out: Stream) field (b: byte[]) = key out field 2; varint out (uint64 b.Length); out.Write(b, 0, b.Length)
    let string out field (s: string) = bytes out field (Encoding.UTF8.GetBytes s)
    let float32 (out: Stream) field (f: float32) = key out field 5; out.Write(BitConverter.GetBytes f, 0, 4)
    let message out field (write: Stream -> unit) =
        use m = new MemoryStream()
        write m
        bytes out field (m.ToArray())

/// The serialised ModelProto: the pieces, a BPE trainer spec with byte fallback (unk 0, bos 1, eos 2,
/// no pad), and the identity normaliser with the dummy prefix and spaces kept as they are.
let modelProto (vocab: (string * float32 * PieceType)[]) : byte[] =
    use out = new MemoryStream()
    for piece, score, kind in vocab do
        Proto.message out 1 (fun m ->
            Proto.string m 1 piece
            Proto.float32 m 2 score
            if kind <> PieceType.Normal then Proto.int m 3 (int64 kind))
    Proto.message out 2 (fun m ->
        Proto.string m 1 "cleansight tiny world"
        Proto.string m 2 "tokenizer"
        Proto.int m 3 2L                     // model_type = BPE
        Proto.int m 4 (int64 vocab.Length)   // vocab_size
        Proto.float32 m 10 1.0f              // character_coverage
        Proto.int m 25 1L                    // split_digits
        Proto.int m 26 1L                    // allow_whitespace_only_pieces
        Proto.int m 35 1L                    // byte_fallback
        Proto.int m 40 0L                    // unk_id
        Proto.int m 41 1L                    // bos_id
        Proto.int m 42 2L                    // eos_id
        Proto.int m 43 -1L)                  // pad_id (none in the model; <pad> is an added token)
    Proto.message out 3 (fun m ->
        Proto.string m 1 "identity"
        Proto.bytes m 2 [||]
        Proto.int m 3 1L                     // add_dummy_prefix
        Proto.int m 4 0L)                    // remove_extra_whitespaces
    out.ToArray()

/// tokenizer_config.json: a LlamaTokenizer with <image> and <pad> added after the pieces.
let tokenizerConfigJson (pieces: int) =
    let token (content: string) =
        $"{{ \"content\": \"{content}\", \"special\": true, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"single_word\": false }}"
    $"""{{
  "tokenizer_class": "LlamaTokenizer",
  "add_bos_token": true,
  "add_eos_token": false,
  "legacy": false,
  "bos_token": "<s>",
  "eos_token": "</s>",
  "unk_token": "<unk>",
  "pad_token": "<pad>",
  "model_max_length": 256,
  "padding_side": "left",
  "clean_up_tokenization_spaces": false,
  "added_tokens_decoder": {{
    "0": {token "<unk>"},
    "1": {token "<s>"},
    "2": {token "</s>"},
    "{pieces}": {token "<image>"},
    "{pieces + 1}": {token "<pad>"}
  }}
}}
"""

let specialTokensMapJson =
    """{
  "bos_token": "<s>",
  "eos_token": "</s>",
  "unk_token": "<unk>",
  "pad_token": "<pad>",
  "image_token": "<image>"
}
"""

/// The world's vocabulary (computed once).
let world = lazy (vocabulary (words (worldText ())))

/// Number of pieces of the world's tokenizer (<image> and <pad> take the next two ids).
let pieceCount () = world.Value.Length

/// Writes tokenizer.model, tokenizer_config.json and special_tokens_map.json into `dir`.
let write (dir: string) =
    Directory.CreateDirectory dir |> ignore
    let vocab = world.Value
    CleanSight.Pipeline.Files.writeAtomic (Path.Combine(dir, "tokenizer.model")) (fun st ->
        let b = modelProto vocab
        st.Write(b, 0, b.Length))
    for name, text in [ "tokenizer_config.json", tokenizerConfigJson vocab.Length; "special_tokens_map.json", specialTokensMapJson ] do
        CleanSight.Pipeline.Files.writeAtomic (Path.Combine(dir, name)) (fun st ->
            let b = Encoding.UTF8.GetBytes(text: string)
            st.Write(b, 0, b.Length))
