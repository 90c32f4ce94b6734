/// Files from strangers and crashes (issue 7): the safetensors header parser under fuzzing, hostile
/// images, prompts past the context, evaluation killed with SIGKILL and resumed, same seed → same
/// metrics, and writers that replace their file atomically. The cases other files already cover
/// (CheckpointTests, CliTests, DatasetTests, VisionTests, CalibrationTests) are not repeated here.
module CleanSight.Tests.HostileInputTests

open System
open System.Diagnostics
open System.IO
open System.IO.Compression
open System.Text
open System.Text.Json.Nodes
open System.Text.RegularExpressions
open System.Threading
open System.Threading.Tasks
open Expecto
open Expecto.Logging
open Expecto.Logging.Message
open FsCheck
open FsCheck.FSharp
open SixLabors.ImageSharp
open SixLabors.ImageSharp.Formats.Jpeg
open SixLabors.ImageSharp.Formats.Png
open SixLabors.ImageSharp.PixelFormats
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Checkpoints
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense

let private logger = Log.create "hostile"

/// The InputError `action` throws: it must name `file` and be one line. Any other outcome fails.
let private inputError (file: string) (action: unit -> unit) : InputError =
    let outcome = try action (); None with e -> Some e
    match outcome with
    | Some(:? InputError as e) ->
        Expect.stringContains e.Message file "the message names the file"
        Expect.isFalse (e.Message.Contains '\n' || e.Message.Contains '\r') $"one line: {e.Message}"
        e
    | Some e -> failtestf "expected an InputError about %s, got %s: %s" file (e.GetType().FullName) e.Message
    | None -> failtestf "expected an InputError about %s, but nothing was thrown" file

// ==== the safetensors header parser under fuzzing ================================================

/// A file made from a generated header: its text, the 8-byte length the file claims for it, and
/// how many data bytes follow it.
type GeneratedFile = { Header: string; Declared: uint64; DataBytes: int }

/// One edit of a fixture shard's bytes.
type Mutation =
    | SetByte of position: int * value: byte
    | Truncate of length: int
    | Insert of position: int * bytes: byte[]
    | Delete of position: int * count: int
    | SetLength of declared: uint64
    /// The index-th (mod count) JSON string or number of the header replaced, the length field fixed up.
    | ReplaceToken of index: int * token: string

/// A fixture shard with edits applied in order.
type MutatedShard = { Shard: string; Mutations: Mutation list }

/// The fixture's two shards: (file name, bytes, 8 + header length).
let private shards =
    lazy (
        [ for name in [ "model-00001-of-00002.safetensors"; "model-00002-of-00002.safetensors" ] ->
              let bytes = File.ReadAllBytes(Path.Combine(Fixtures.tinyLlava, name))
              name, bytes, 8 + int (BitConverter.ToUInt64(bytes, 0)) ])

let private boundaryLengths =
    [ 0UL; 1UL; 2UL; 7UL; 8UL; 100_000_000UL; 100_000_001UL; 1UL <<< 40; uint64 Int64.MaxValue; 1UL <<< 63; UInt64.MaxValue ]

let private tokenPattern = Regex("\"(?:[^\"\\\\]|\\\\.)*\"|-?[0-9][0-9.eE+-]*", RegexOptions.Compiled)

module private JsonGen =
    let numbers =
        Gen.frequency [
            3, Gen.choose (-3, 300) |> Gen.map string
            2, Gen.elements [ "0"; "-0"; "1.5"; "8.0"; "1e3"; "1E400"; "-1e400"; "9223372036854775807"; "9223372036854775808"
                              "-9223372036854775808"; "18446744073709551616"; "4611686018427387904"; "1000000000000000000000000" ] ]

    let strings =
        Gen.elements [ "\"a\""; "\"b\""; "\"w.0\""; "\"__metadata__\""; "\"\""; "\"F32\""; "\"F16\""; "\"BF16\""; "\"U8\""; "\"BOOL\""
                       "\"F8_E4M3\""; "\"f32\""; "\"dtype\""; "\"shape\""; "\"data_offsets\""; "\"format\""; "\"a\\nb\""
                       "\"\\u0000\""; "\"\\u001b[2J\""; "\"\\ud800\""; "\"\\udc00x\""; "\"é\""; "\"\\\"\""; "\"" + String('x', 300) + "\"" ]

    /// A token that replaces another: a number, a string, or JSON structure out of place.
    let replacement =
        Gen.frequency [ 3, numbers; 2, strings
                        1, Gen.elements [ "{"; "}"; "["; "]"; ","; ":"; ""; "null"; "true"; "NaN"; "[]"; "{}"; "[0,8]"; "[0]"; "[1,2,3]" ] ]

    let rec value (depth: int) : Gen<string> =
        let leaf = Gen.frequency [ 3, numbers; 3, strings; 1, Gen.elements [ "null"; "true"; "false" ] ]
        if depth <= 0 then leaf
        else
            Gen.frequency [
                4, leaf
                1, gen {
                    let! n = Gen.choose (0, 4)
                    let! xs = Gen.listOfLength n (value (depth - 1))
                    return "[" + String.concat "," xs + "]" }
                1, gen {
                    let! n = Gen.choose (0, 3)
                    let! keys = Gen.listOfLength n strings
                    let! values = Gen.listOfLength n (value (depth - 1))
                    return "{" + String.concat "," (List.map2 (fun k v -> k + ":" + v) keys values) + "}" } ]

    /// Nesting past the parser's depth limit.
    let deep = gen {
        let! d = Gen.choose (10, 200)
        return String.replicate d "[" + "1" + String.replicate d "]" }

    let dtypes = [ "F16", 2; "BF16", 2; "F32", 4; "F64", 8; "I64", 8; "I32", 4; "I16", 2; "I8", 1; "U8", 1; "BOOL", 1 ]

    /// A well-formed entry placed at or after `offset`: (its JSON, its end offset).
    let entry (offset: int) = gen {
        let! dtype, size = Gen.elements dtypes
        let! rank = Gen.choose (0, 3)
        let! dims =
            Gen.frequency [ 12, Gen.listOfLength rank (Gen.choose (0, 4) |> Gen.map int64)
                            // empty, yet with dimensions whose product overflows
                            1, Gen.elements [ 1L <<< 31; 1L <<< 40; 1L <<< 62; Int64.MaxValue ]
                               |> Gen.listOfLength (rank + 1) |> Gen.bind (fun big -> Gen.shuffle (0L :: big)) |> Gen.map List.ofArray ]
        let! gap = Gen.frequency [ 4, Gen.constant 0; 1, Gen.choose (1, 3) ]
        let first = offset + gap
        let last = first + size * int (List.fold (*) 1L dims)
        let shape = dims |> List.map string |> String.concat ","
        return $"{{\"dtype\":\"{dtype}\",\"shape\":[{shape}],\"data_offsets\":[{first},{last}]}}", last }

    let replaceToken (text: string) = gen {
        let tokens = tokenPattern.Matches text
        if tokens.Count = 0 then return text
        else
            let! i = Gen.choose (0, tokens.Count - 1)
            let! r = replacement
            let m = tokens.[i]
            return text.Substring(0, m.Index) + r + text.Substring(m.Index + m.Length) }

    let rec private layout (n: int) (offset: int) (acc: string list) : Gen<string list * int> =
        if n = 0 then Gen.constant (List.rev acc, offset)
        else gen {
            let! e, next = entry offset
            return! layout (n - 1) next (e :: acc) }

    /// Mostly-consistent headers (so that tensors get read), then one kind of damage or none.
    let file : Gen<GeneratedFile> = gen {
        let! n = Gen.choose (0, 5)
        let! entries, dataEnd = layout n 0 []
        let! names = Gen.listOfLength n strings
        let! metadata =
            Gen.frequency [ 3, Gen.constant []
                            1, Gen.constant [ "\"__metadata__\":{\"format\":\"pt\"}" ]
                            1, value 2 |> Gen.map (fun v -> [ "\"__metadata__\":" + v ]) ]
        let! members = Gen.shuffle (List.map2 (fun k v -> k + ":" + v) names entries @ metadata)
        let body = "{" + String.concat "," members + "}"
        let! text =
            Gen.frequency [ 6, Gen.constant body
                            4, replaceToken body
                            1, replaceToken body |> Gen.bind replaceToken
                            1, value 3
                            1, deep
                            1, Gen.choose (0, body.Length) |> Gen.map (fun cut -> body.Substring(0, cut)) ]
        let! padding = Gen.frequency [ 8, Gen.elements [ ""; " "; "       " ]; 1, Gen.elements [ "\u0000"; "\n"; "}" ] ]
        let header = text + padding
        let exact = uint64 (Encoding.UTF8.GetByteCount header)
        let! declared =
            Gen.frequency [ 14, Gen.constant exact
                            1, Gen.choose (-3, 3) |> Gen.map (fun d -> uint64 (max 0L (int64 exact + int64 d)))
                            1, Gen.elements boundaryLengths ]
        let! slack = Gen.frequency [ 4, Gen.constant 0; 1, Gen.choose (-4, 4) ]
        return { Header = header; Declared = declared; DataBytes = max 0 (dataEnd + slack) } }

    let mutation (fileLength: int) (headerEnd: int) : Gen<Mutation> =
        let position = Gen.frequency [ 6, Gen.choose (0, headerEnd - 1); 1, Gen.choose (0, fileLength - 1) ]
        let byteValue =
            Gen.frequency [ 2, Gen.choose (0, 255) |> Gen.map byte
                            3, Gen.elements (List.ofArray "{}[],:\"0123456789-.e \\"B) ]
        Gen.frequency [
            4, Gen.map2 (fun p v -> SetByte(p, v)) position byteValue
            2, Gen.frequency [ 3, Gen.choose (0, headerEnd + 16); 1, Gen.choose (0, fileLength) ] |> Gen.map Truncate
            1, Gen.map2 (fun p bs -> Insert(p, bs)) position (Gen.choose (1, 8) |> Gen.bind (fun n -> Gen.arrayOfLength n byteValue))
            1, Gen.map2 (fun p c -> Delete(p, c)) position (Gen.choose (1, 16))
            1, Gen.elements (uint64 (headerEnd - 9) :: uint64 (headerEnd - 7) :: boundaryLengths) |> Gen.map SetLength
            5, Gen.map2 (fun i t -> ReplaceToken(i, t)) (Gen.choose (0, 100_000)) replacement ]

    let mutated : Gen<MutatedShard> = gen {
        let! name, bytes, headerEnd = Gen.elements shards.Value
        let! n = Gen.choose (1, 3)
        let! edits = Gen.listOfLength n (mutation bytes.Length headerEnd)
        return { Shard = name; Mutations = edits } }

type HostileArbitraries =
    static member GeneratedFile() = Arb.fromGen JsonGen.file
    static member MutatedShard() = Arb.fromGen JsonGen.mutated

let private bytesOf (f: GeneratedFile) =
    let header = Encoding.UTF8.GetBytes f.Header
    Array.concat [ BitConverter.GetBytes f.Declared; header; Array.init f.DataBytes (fun i -> byte (i % 251)) ]

let private apply (bytes: byte[]) (m: Mutation) =
    let clamp p = max 0 (min p bytes.Length)
    match m with
    | SetByte(p, v) when p < bytes.Length -> let b = Array.copy bytes in b.[p] <- v; b
    | SetByte _ -> bytes
    | Truncate n -> bytes.[.. clamp n - 1]
    | Insert(p, xs) -> Array.concat [ bytes.[.. clamp p - 1]; xs; bytes.[clamp p ..] ]
    | Delete(p, n) -> Array.append bytes.[.. clamp p - 1] bytes.[clamp (p + n) ..]
    | SetLength v when bytes.Length >= 8 -> Array.append (BitConverter.GetBytes v) bytes.[8..]
    | SetLength _ -> bytes
    | ReplaceToken _ when bytes.Length < 8 -> bytes
    | ReplaceToken(i, token) ->
        let n = BitConverter.ToUInt64(bytes, 0)
        if n > uint64 (bytes.Length - 8) then bytes
        else
            let text = Encoding.UTF8.GetString(bytes, 8, int n)
            let tokens = tokenPattern.Matches text
            if tokens.Count = 0 then bytes
            else
                let t = tokens.[i % tokens.Count]
                let header = Encoding.UTF8.GetBytes(text.Substring(0, t.Index) + token + text.Substring(t.Index + t.Length))
                Array.concat [ BitConverter.GetBytes(uint64 header.Length); header; bytes.[8 + int n ..] ]

/// Opens `bytes` as a safetensors file and reads every tensor it lists. Passes when that works or
/// fails with a one-line InputError naming the file; fails on any other exception or after 10 s.
let private survives (bytes: byte[]) =
    let path = Path.Combine(Fixtures.tempDir (), "fuzzed.safetensors")
    File.WriteAllBytes(path, bytes)
    let work =
        Task.Run(fun () ->
            try
                let file = SafetensorsFile.Open path
                for KeyValue(name, entry) in file.Tensors do
                    use t = file.Read name
                    if t.NumberOfElements * t.ElementSize <> entry.ByteLength || t.shape <> entry.Shape then
                        failwithf "tensor '%s' read as %A, the header says %A" name t.shape entry.Shape
                None
            with e -> Some e)
    if not (work.Wait(TimeSpan.FromSeconds 10.0)) then failtestf "no answer after 10 s (a hang) on %s" path
    match work.Result with
    | None -> ()
    | Some(:? InputError as e) ->
        Expect.equal e.File path "the error names the file"
        Expect.isFalse (e.Message.Contains '\n' || e.Message.Contains '\r') $"one line: {e.Message}"
    | Some e -> failtestf "%s: %s\n%s" (e.GetType().FullName) e.Message e.StackTrace
    Directory.Delete(Path.GetDirectoryName path, true)

/// CI runs a fixed budget with a fixed seed; CLEANSIGHT_FUZZ_CASES=N runs N fresh random cases.
let private fuzzConfig =
    let explore = Environment.GetEnvironmentVariable "CLEANSIGHT_FUZZ_CASES" |> Option.ofObj |> Option.map int
    { FsCheckConfig.defaultConfig with
        maxTest = defaultArg explore 300
        arbitrary = [ typeof<HostileArbitraries> ]
        replay = (if explore.IsSome then None else Some(20260307UL, 0x9E3779B97F4A7C15UL, None)) }

let private fuzzTests =
    testList "safetensors header fuzzing" [
        testPropertyWithConfig fuzzConfig "generated headers: read, or a one-line InputError; nothing else, no hang" (fun (f: GeneratedFile) ->
            survives (bytesOf f))
        testPropertyWithConfig fuzzConfig "mutated fixture shards: read, or a one-line InputError; nothing else, no hang" (fun (m: MutatedShard) ->
            let _, original, _ = shards.Value |> List.find (fun (n, _, _) -> n = m.Shard)
            survives (List.fold apply original m.Mutations))
        test "a zero-element tensor whose other dimensions overflow 64 bits is refused at open" {
            // [0, 2^62, 2^62] holds 0 bytes, but libtorch's stride arithmetic overflows on it
            let header = """{"a":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}}"""
            let path = Path.Combine(Fixtures.tempDir (), "zero.safetensors")
            File.WriteAllBytes(path, bytesOf { Header = header; Declared = uint64 header.Length; DataBytes = 0 })
            let e = inputError path (fun () -> SafetensorsFile.Open path |> ignore)
            Expect.stringContains e.Problem "'a'" "names the tensor"
        }
    ]

// ==== images =====================================================================================

let private crcTable =
    Array.init 256 (fun n ->
        let mutable c = uint32 n
        for _ in 1 .. 8 do c <- if c &&& 1u <> 0u then 0xEDB88320u ^^^ (c >>> 1) else c >>> 1
        c)

let private crc32 (data: byte[]) =
    let mutable c = 0xFFFFFFFFu
    for b in data do c <- crcTable.[int ((c ^^^ uint32 b) &&& 0xFFu)] ^^^ (c >>> 8)
    c ^^^ 0xFFFFFFFFu

let private be32 (v: uint32) = [| byte (v >>> 24); byte (v >>> 16); byte (v >>> 8); byte v |]

let private pngChunk (kind: string) (data: byte[]) =
    let typed = Array.append (Encoding.ASCII.GetBytes kind) data
    Array.concat [ be32 (uint32 data.Length); typed; be32 (crc32 typed) ]

/// A PNG: signature, IHDR (width, height, bit depth, colour type), one IDAT, IEND.
let private png (width: int) (height: int) (depth: byte) (colour: byte) (idat: byte[]) =
    Array.concat [ [| 0x89uy; 'P'B; 'N'B; 'G'B; 0x0Duy; 0x0Auy; 0x1Auy; 0x0Auy |]
                   pngChunk "IHDR" (Array.concat [ be32 (uint32 width); be32 (uint32 height); [| depth; colour; 0uy; 0uy; 0uy |] ])
                   pngChunk "IDAT" idat
                   pngChunk "IEND" [||] ]

/// zlib data of `rows` rows of `rowBytes` zero bytes, each after its filter byte, made row by row.
let private zeroRows (rows: int) (rowBytes: int) =
    use buffer = new MemoryStream()
    do
        use z = new ZLibStream(buffer, CompressionLevel.SmallestSize, true)
        let row = Array.zeroCreate<byte> (rowBytes + 1)
        for _ in 1 .. rows do z.Write(row, 0, row.Length)
    buffer.ToArray()

/// A complete, valid 20000×20000 1-bit grey PNG of about 50 KB: 400 M pixels once decoded.
let private bomb = lazy (png 20000 20000 1uy 0uy (zeroRows 20000 2500))

/// An 8×8 baseline JPEG of one flat colour in 4 components with Adobe's APP14 marker (transform 0:
/// CMYK, stored as Adobe writes it, 255 = no ink). Each component is one 8×8 block with only its DC
/// coefficient; quantisation 1; DC codes: 4-bit code = size category; AC: EOB only, code "0".
let private flatCmykJpeg (stored: byte[]) =
    let out = ResizeArray<byte>()
    let add (xs: int list) = for x in xs do out.Add(byte x)
    let segment (marker: int) (body: int list) =
        add [ 0xFF; marker; (body.Length + 2) >>> 8; (body.Length + 2) &&& 0xFF ]
        add body
    add [ 0xFF; 0xD8 ]
    segment 0xEE ([ for c in "Adobe" -> int c ] @ [ 0; 100; 0; 0; 0; 0; 0 ])
    segment 0xDB (0 :: List.replicate 64 1)
    segment 0xC0 ([ 8; 0; 8; 0; 8; 4 ] @ List.concat [ for c in 1 .. 4 -> [ c; 0x11; 0 ] ])
    segment 0xC4 ([ 0x00; 0; 0; 0; 12 ] @ List.replicate 12 0 @ [ 0 .. 11 ])
    segment 0xC4 ([ 0x10; 1 ] @ List.replicate 15 0 @ [ 0 ])
    segment 0xDA ([ 4 ] @ List.concat [ for c in 1 .. 4 -> [ c; 0x00 ] ] @ [ 0; 63; 0 ])
    let bits = ResizeArray<int>()
    let put (value: int) (count: int) = for i in count - 1 .. -1 .. 0 do bits.Add((value >>> i) &&& 1)
    for v in stored do
        let dc = 8 * (int v - 128) // flat block: DC = 8 · (level-shifted value)
        let size = if dc = 0 then 0 else 32 - Numerics.BitOperations.LeadingZeroCount(uint32 (abs dc))
        put size 4
        put (if dc >= 0 then dc else dc - 1 + (1 <<< size)) size
        put 0 1 // EOB
    while bits.Count % 8 <> 0 do bits.Add 1
    for i in 0 .. 8 .. bits.Count - 1 do
        let b = Seq.fold (fun acc j -> (acc <<< 1) ||| bits.[i + j]) 0 [ 0 .. 7 ]
        out.Add(byte b)
        if b = 0xFF then out.Add 0uy
    add [ 0xFF; 0xD9 ]
    out.ToArray()

let private noiseImage (seed: int) (width: int) (height: int) =
    let rng = Random(seed)
    RgbImage(width, height, Array.init (width * height * 3) (fun _ -> byte (rng.Next 256)))

let private jpegOf (img: RgbImage) =
    use image = img.ToImage()
    use ms = new MemoryStream()
    image.SaveAsJpeg(ms, JpegEncoder(Quality = 90))
    ms.ToArray()

/// The JPEG with its SOF0 frame width set to 0.
let private zeroWidthJpeg () =
    let bytes = jpegOf (noiseImage 1 16 16)
    let rec sof pos = if bytes.[pos + 1] = 0xC0uy then pos else sof (pos + 2 + (int bytes.[pos + 2] <<< 8 ||| int bytes.[pos + 3]))
    let at = sof 2
    bytes.[at + 7] <- 0uy
    bytes.[at + 8] <- 0uy
    bytes

let private saved (ext: string) (bytes: byte[]) =
    let path = Path.Combine(Fixtures.tempDir (), "hostile" + ext)
    File.WriteAllBytes(path, bytes)
    path

let private savedWith (ext: string) (save: string -> unit) =
    let path = Path.Combine(Fixtures.tempDir (), "image" + ext)
    save path
    path

/// The hostile images that must be refused: (case, a function writing the file, words the problem must contain).
let private refusedImages : (string * (unit -> string) * string list) list =
    [ "truncated PNG", (fun () -> let b = File.ReadAllBytes(Path.Combine(Fixtures.tinyLlava, "probe_90x64.png")) in saved ".png" b.[.. b.Length / 2]), [ "truncated" ]
      "truncated JPEG", (fun () -> let b = jpegOf (noiseImage 2 64 64) in saved ".jpg" b.[.. b.Length / 2]), [ "truncated" ]
      "zero-size PNG (IHDR width 0)", (fun () -> saved ".png" (png 0 8 8uy 2uy (zeroRows 8 0))), []
      "zero-size JPEG (SOF width 0)", (fun () -> saved ".jpg" (zeroWidthJpeg ())), []
      "20000x20000 PNG", (fun () -> saved ".png" bomb.Value), [ "20000x20000"; "400000000" ] ]

let private imageTests =
    testList "images" [
        for case, make, words in refusedImages do
            test $"{case} is refused with an InputError naming the file" {
                let path = make ()
                let e = inputError path (fun () -> RgbImage.Load path |> ignore)
                for w in words do Expect.stringContains e.Problem w $"mentions {w}"
            }
        test "the 20000x20000 PNG (a 50 KB decompression bomb) is refused from its header, allocating under 16 MiB" {
            let path = saved ".png" bomb.Value
            let before = GC.GetAllocatedBytesForCurrentThread()
            inputError path (fun () -> RgbImage.Load path |> ignore) |> ignore
            Expect.isLessThan (GC.GetAllocatedBytesForCurrentThread() - before) (16L <<< 20) "allocated bytes"
        }
        test "grayscale JPEG becomes R = G = B" {
            let path = savedWith ".jpg" (fun p ->
                use img = new Image<L8>(16, 8, L8 90uy)
                img.SaveAsJpeg(p, JpegEncoder(ColorType = JpegColorType.Luminance, Quality = 100)))
            Expect.equal (Image.Identify(path).Metadata.GetJpegMetadata().ColorType) (Nullable JpegColorType.Luminance) "(a 1-component JPEG)"
            let rgb = RgbImage.Load path
            Expect.equal (rgb.Width, rgb.Height) (16, 8) "size"
            Expect.isTrue (rgb.Pixels |> Array.forall (fun v -> abs (int v - 90) <= 1)) "every channel ≈ 90"
        }
        for name, stored, expected in [ "C and K apart", [| 200uy; 30uy; 60uy; 255uy |], [| 200; 30; 60 |]
                                        "K only", [| 255uy; 255uy; 255uy; 100uy |], [| 100; 100; 100 |] ] do
            test $"CMYK JPEG (Adobe APP14, 4 components, {name}) decodes to the colour it encodes" {
                let path = saved ".jpg" (flatCmykJpeg stored)
                Expect.equal (Image.Identify(path).Metadata.GetJpegMetadata().ColorType) (Nullable JpegColorType.Cmyk) "(a CMYK JPEG)"
                let rgb = RgbImage.Load path
                Expect.equal (rgb.Width, rgb.Height) (8, 8) "size"
                for i in 0 .. 63 do
                    for c in 0 .. 2 do
                        let v = int rgb.Pixels.[i * 3 + c]
                        if abs (v - expected.[c]) > 2 then failtestf "pixel %d channel %d is %d, expected %d ± 2" i c v expected.[c]
            }
        test "grey + alpha PNG (8-bit) drops alpha: R = G = B = grey" {
            let path = savedWith ".png" (fun p ->
                use img = new Image<La16>(2, 1)
                img.[0, 0] <- La16(10uy, 0uy)
                img.[1, 0] <- La16(200uy, 128uy)
                img.SaveAsPng(p, PngEncoder(ColorType = PngColorType.GrayscaleWithAlpha, BitDepth = PngBitDepth.Bit8)))
            Expect.sequenceEqual (RgbImage.Load(path).Pixels) [| 10uy; 10uy; 10uy; 200uy; 200uy; 200uy |] "pixels"
        }
        test "palette PNG with transparency (tRNS) keeps the palette colours, alpha dropped" {
            let path = savedWith ".png" (fun p ->
                use img = new Image<Rgba32>(2, 1)
                img.[0, 0] <- Rgba32(255uy, 0uy, 0uy, 0uy)
                img.[1, 0] <- Rgba32(0uy, 0uy, 255uy, 255uy)
                img.SaveAsPng(p, PngEncoder(ColorType = PngColorType.Palette)))
            Expect.equal (Image.Identify(path).Metadata.GetPngMetadata().ColorType) (Nullable PngColorType.Palette) "(a palette PNG)"
            Expect.sequenceEqual (RgbImage.Load(path).Pixels) [| 255uy; 0uy; 0uy; 0uy; 0uy; 255uy |] "pixels"
        }
        test "16-bit RGB and RGBA PNGs keep each sample's high byte" {
            for colour in [ PngColorType.Rgb; PngColorType.RgbWithAlpha ] do
                let path = savedWith ".png" (fun p ->
                    use img = new Image<Rgba64>(2, 1)
                    img.[0, 0] <- Rgba64(0x1234us, 0xABCDus, 0x00FFus, 0xFFFFus)
                    img.[1, 0] <- Rgba64(0xFFFFus, 0x0100us, 0x7F80us, 0x0001us)
                    img.SaveAsPng(p, PngEncoder(ColorType = colour, BitDepth = PngBitDepth.Bit16)))
                Expect.equal (Image.Identify(path).Metadata.GetPngMetadata().BitDepth) (Nullable PngBitDepth.Bit16) "(16-bit)"
                Expect.sequenceEqual (RgbImage.Load(path).Pixels) [| 0x12uy; 0xABuy; 0x00uy; 0xFFuy; 0x01uy; 0x7Fuy |] $"{colour}"
        }
        test "16-bit grey PNG clips to 255 (PIL's I → RGB); 16-bit grey + alpha keeps the high byte" {
            let grey = savedWith ".png" (fun p ->
                use img = new Image<L16>(3, 1)
                img.[0, 0] <- L16 100us
                img.[1, 0] <- L16 255us
                img.[2, 0] <- L16 40000us
                img.SaveAsPng(p, PngEncoder(ColorType = PngColorType.Grayscale, BitDepth = PngBitDepth.Bit16)))
            Expect.sequenceEqual (RgbImage.Load(grey).Pixels) [| 100uy; 100uy; 100uy; 255uy; 255uy; 255uy; 255uy; 255uy; 255uy |] "grey"
            let greyAlpha = savedWith ".png" (fun p ->
                use img = new Image<La32>(1, 1)
                img.[0, 0] <- La32(0x9C40us, 0x1000us)
                img.SaveAsPng(p, PngEncoder(ColorType = PngColorType.GrayscaleWithAlpha, BitDepth = PngBitDepth.Bit16)))
            Expect.sequenceEqual (RgbImage.Load(greyAlpha).Pixels) [| 0x9Cuy; 0x9Cuy; 0x9Cuy |] "grey + alpha"
        }
    ]

// ==== prompts and dataset questions ==============================================================

let private promptTests =
    testList "prompts" [
        test "the context check: 31 prompt ids + 225 new tokens fit the fixture's 256 positions, one more does not" {
            use session = LlavaSession.Load Fixtures.tinyLlava
            Expect.isNull (session.ContextProblem(31, 225)) "256 positions fit"
            let problem = session.ContextProblem(31, 226)
            Expect.stringContains problem "257 positions" "says how many"
            Expect.stringContains problem "256 (max_position_embeddings)" "says the limit and where it comes from"
        }
        test "a dataset question holding <image> is refused, naming file and line" {
            let dir = Fixtures.tempDir ()
            Directory.CreateDirectory(Path.Combine(dir, "images")) |> ignore
            RgbImage(2, 2, Array.zeroCreate 12).Save(Path.Combine(dir, "images", "a.png"))
            let path = Path.Combine(dir, "data.jsonl")
            File.WriteAllText(path, """{"id": "a", "image": "images/a.png", "question": "What is <image>?", "answers": ["x"], "task": "vqa"}""" + "\n")
            let e = inputError path (fun () -> Dataset.read path |> ignore)
            Expect.stringContains e.Problem "line 1: \"question\" contains <image>" "says where and what"
        }
    ]

// ==== atomic writes ==============================================================================

/// Runs `write`, which must replace `path`, while a reader holds the old file open. A writer that
/// renames a finished temp file over the target leaves the reader's file as it was; one that
/// rewrites the target in place changes it under the reader (or fails on the reader's lock).
let private replacesAtomically (path: string) (write: unit -> unit) =
    let old = "old contents, must survive a crash\n"
    File.WriteAllText(path, old)
    use held = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite ||| FileShare.Delete)
    write ()
    use reader = new StreamReader(held)
    Expect.equal (reader.ReadToEnd()) old "the old file is untouched: replaced by a rename, not rewritten"
    Expect.notEqual (File.ReadAllText path) old "the new contents are in place"
    Expect.isEmpty (Directory.GetFiles(Path.GetDirectoryName path, "*.tmp")) "no temp file left"

let private record (defense: string) (split: string) (i: int) : Evaluation.Record =
    { Defense = defense; Split = split; Id = $"id-{i}"; Task = "vqa"; Answers = [| "red" |]; Output = "red"
      AsrHit = false; Distance = Some 1.5; Flagged = false; Pruned = [||]; VisualTokens = 16; Ms = 3.0 }

let private atomicTests (calibration: Lazy<Calibration.Calibration>) =
    let inFolder name = Path.Combine(Fixtures.tempDir (), name)
    testList "atomic writes" [
        test "writeAtomic: a writer that dies half-way leaves the old file and no temp file" {
            let path = inFolder "x.json"
            File.WriteAllText(path, "old")
            Expect.throwsT<IOException> (fun () ->
                Files.writeAtomic path (fun s -> s.Write("new, but on"B, 0, 11); raise (IOException "disk gone"))) "the error passes through"
            Expect.equal (File.ReadAllText path) "old" "old contents"
            Expect.sequenceEqual (Directory.GetFiles(Path.GetDirectoryName path)) [| path |] "no temp file"
        }
        test "calibration file" {
            let path = inFolder "calibration.json"
            replacesAtomically path (fun () -> Calibration.save path calibration.Value)
        }
        test "metrics.json" {
            let path = inFolder "metrics.json"
            let records = [| record "none" "clean" 1; record "none" "poisoned" 1 |]
            replacesAtomically path (fun () -> Summary.write path (Summary.ofRecords records))
        }
        test "report" {
            let path = inFolder "report.html"
            replacesAtomically path (fun () -> Report.write path "t" [ Report.Text "hello" ])
        }
        test "frames (CSV), and the attention-stealing frame and chart" {
            let rows: AttentionStealing.Row list =
                [ { Attack = "a"; Condition = "clean"; Layer = 0; MeanRatio = 1.0; MedianRatio = 1.0; VisualShare = 0.5; Samples = 1 }
                  { Attack = "a"; Condition = "triggered"; Layer = 0; MeanRatio = 2.0; MedianRatio = 2.0; VisualShare = 0.6; Samples = 1 } ]
            let path = inFolder "frame.csv"
            replacesAtomically path (fun () -> AttentionStealing.toFrame rows |> Files.saveCsv path)
            Expect.stringStarts (File.ReadAllText path) "Key,attack,condition,layer," "Deedle's CSV, row keys first"
            let dir = Fixtures.tempDir ()
            replacesAtomically (Path.Combine(dir, "attention-stealing.csv")) (fun () -> AttentionStealing.save dir rows [| 0 |])
            replacesAtomically (Path.Combine(dir, "attention-stealing.html")) (fun () -> AttentionStealing.save dir rows [| 0 |])
        }
        test "dataset, JSON output, safetensors" {
            let dir = Fixtures.tempDir ()
            Directory.CreateDirectory(Path.Combine(dir, "images")) |> ignore
            RgbImage(2, 2, Array.zeroCreate 12).Save(Path.Combine(dir, "images", "a.png"))
            let path = Path.Combine(dir, "data.jsonl")
            let item: Dataset.Item = { Id = "a"; Image = "images/a.png"; Question = "q"; Answers = [ "x" ]; Task = Dataset.Vqa }
            replacesAtomically path (fun () -> Dataset.write path [ item ])
            let json = Path.Combine(dir, "out.json")
            replacesAtomically json (fun () -> Files.writeJson json (dict [ "a", 1 ]))
            let weights = Path.Combine(dir, "w.safetensors")
            use t = torch.ones([| 2L |])
            replacesAtomically weights (fun () -> SafetensorsFile.Write(weights, [ struct ("w", t) ]))
        }
    ]

// ==== evaluation: kill -9 and resume, same seed ==================================================

let private questions = [| "What is in the picture?"; "How many shapes are there?"; "What colour is the circle?"; "Is there a red square?" |]

/// clean/ and poisoned/ datasets of 4 seeded noise images at 56 px (poisoned: a white 16-px square top
/// left), and the fixture model's calibration on 12 other noise images.
let private evalWorld =
    lazy (
        let dir = Fixtures.tempDir ()
        let patched (img: RgbImage) =
            RgbImage(56, 56, img.Pixels |> Array.mapi (fun i v -> let p = i / 3 in if p % 56 < 16 && p / 56 < 16 then 255uy else v))
        let write (folder: string) (images: RgbImage[]) =
            Directory.CreateDirectory(Path.Combine(folder, "images")) |> ignore
            let items =
                images |> Array.mapi (fun i img ->
                    img.Save(Path.Combine(folder, "images", $"{i}.png"))
                    ({ Id = $"s{i}"; Image = $"images/{i}.png"; Question = questions.[i % questions.Length]
                       Answers = [ "red" ]; Task = Dataset.Vqa }: Dataset.Item))
            let path = Path.Combine(folder, "data.jsonl")
            Dataset.write path items
            path
        let images = Array.init 4 (fun i -> noiseImage (100 + i) 56 56)
        let clean = write (Path.Combine(dir, "clean")) images
        let poisoned = write (Path.Combine(dir, "poisoned")) (images |> Array.map patched)
        use session = LlavaSession.Load Fixtures.tinyLlava
        let settings = { Calibration.defaultSettings 3 with Layers = [| 0; 1; 2 |] }
        let samples = [| for i in 0 .. 11 -> noiseImage (200 + i) 56 56, questions.[i % questions.Length], Dataset.Vqa |]
        let calibration = Calibration.calibrate session settings samples (fun _ _ -> ())
        let path = Path.Combine(dir, "calibration.json")
        Calibration.save path calibration
        clean, poisoned, path, calibration)

/// none (always first), random-prune and cleansight × 2 splits × 4 samples.
let private totalRecords = 3 * 2 * 4

let private evaluateArgs (out: string) (seed: int) =
    let clean, poisoned, calibration, _ = evalWorld.Value
    [ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; calibration; "--clean"; clean; "--poisoned"; poisoned
      "--target"; "you have been hacked lol"; "--defense"; "random-prune,cleansight"; "--limit"; "4"
      "--max-new-tokens"; "4"; "--seed"; string seed; "--out"; out; "--no-progress" ]

/// Runs the CLI with a bad option value: exit 1 and exactly `expected` on stderr (one line naming the
/// option); returns what it printed on stdout.
let private refused (case: string) (args: string list) (expected: string) =
    let code, out, err = Fixtures.runCli args
    Expect.equal code 1 $"{case}: exit 1"
    Expect.equal (err.Trim()) expected $"{case}: one line naming the option"
    out

let private samplesCsv out = Path.Combine(out, "samples.csv")
let private metricsJson out = Path.Combine(out, "metrics.json")

/// The records of a finished samples.csv.
let private recordsOf (out: string) =
    let records, writer = Evaluation.openStore (samplesCsv out)
    writer.Dispose()
    records

let private untimed (r: Evaluation.Record) = { r with Ms = 0.0 }

/// metrics.json without its one timing field.
let private withoutTime (out: string) =
    let root = JsonNode.Parse(File.ReadAllText(metricsJson out))
    for kv in root.["defenses"].AsObject() do kv.Value.AsObject().Remove "ms_per_sample" |> ignore
    root.ToJsonString()

/// The `cleansight` the tests were built with, run as `dotnet cleansight.dll`.
let private startCli (args: string list) =
    let host =
        match Environment.GetEnvironmentVariable "DOTNET_HOST_PATH", Environment.ProcessPath with
        | path, _ when not (String.IsNullOrEmpty path) -> path
        | _, self when Path.GetFileNameWithoutExtension self = "dotnet" -> self
        | _ -> "dotnet"
    let info = ProcessStartInfo(host, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "cleansight.dll"))
    for a in args do info.ArgumentList.Add a
    let output = StringBuilder()
    let p = new Process(StartInfo = info)
    let collect (e: DataReceivedEventArgs) = if not (isNull e.Data) then lock output (fun () -> output.AppendLine e.Data |> ignore)
    p.OutputDataReceived.Add collect
    p.ErrorDataReceived.Add collect
    p.Start() |> ignore
    p.BeginOutputReadLine()
    p.BeginErrorReadLine()
    p, output

let private finish (p: Process, output: StringBuilder) =
    if not (p.WaitForExit 120_000) then p.Kill true; failtest "cleansight did not finish within 120 s"
    p.WaitForExit()
    Expect.equal p.ExitCode 0 $"exit 0; output: {output}"

/// Lines in samples.csv now (header included), read while the child may be appending.
let private linesNow (out: string) =
    try
        use f = new FileStream(samplesCsv out, FileMode.Open, FileAccess.Read, FileShare.ReadWrite ||| FileShare.Delete)
        let bytes = Array.zeroCreate<byte> (int f.Length)
        f.ReadExactly(bytes, 0, bytes.Length)
        bytes |> Array.sumBy (fun b -> if b = '\n'B then 1 else 0)
    with :? FileNotFoundException -> 0

/// Starts `evaluate` again and again, killing it (SIGKILL) at seeded random points — while it starts,
/// after a random number of new records plus 0–150 ms (during a sample or a record's write), or
/// around the final metrics — up to `kills` times, then lets it finish. Returns where it killed.
let private killAndResume (out: string) (rng: Random) (kills: int) =
    let points = Collections.Generic.List<string>()
    let mutable finished = false
    while not finished do
        let p, output = startCli (evaluateArgs out 0)
        if points.Count < kills then
            let before = max 0 (linesNow out - 1)
            let target = if rng.Next 5 = 0 then 0 else before + rng.Next(1, totalRecords - before + 1)
            let delay = rng.Next 150
            let clock = Stopwatch.StartNew()
            while not p.HasExited && max 0 (linesNow out - 1) < target && clock.Elapsed.TotalSeconds < 120.0 do
                Thread.Sleep 10
            Thread.Sleep delay
            if p.HasExited then
                p.WaitForExit()
                Expect.equal p.ExitCode 0 $"exit 0; output: {output}"
                finished <- true
            else
                p.Kill true
                p.WaitForExit()
                points.Add $"{max 0 (linesNow out - 1)} records (aim {target} + {delay} ms)"
        else
            finish (p, output)
            finished <- true
    List.ofSeq points

let private evaluationTests =
    testList "evaluation crash safety" [
        test "killed with SIGKILL at random points and resumed: same records, same metrics.json (time aside)" {
            let reference = Fixtures.tempDir ()
            let code, _, err = Fixtures.runCli (evaluateArgs reference 0) // in-process: no start-up to wait for
            Expect.equal code 0 $"exit 0 (stderr: {err})"
            let expected = recordsOf reference
            Expect.equal expected.Length totalRecords "(the uninterrupted run has every record)"
            let out = Fixtures.tempDir ()
            let points = killAndResume out (Random 20260307) 4
            logger.info (eventX $"evaluate killed {points.Length} times, at: {String.Join(string ';', points)}")
            let got = recordsOf out
            let keys = got |> Array.map (fun r -> r.Defense, r.Split, r.Id)
            Expect.equal (Array.distinct keys).Length keys.Length "no duplicated record"
            Expect.equal (got |> Array.map untimed) (expected |> Array.map untimed) "no lost record; the same records in the same order"
            Expect.equal (withoutTime out) (withoutTime reference) "metrics.json equal but for ms_per_sample"
        }
        test "a samples.csv cut short in its header (killed while creating it) is started afresh" {
            for partial in [ ""; "\"defense\",\"spl" ] do
                let out = Fixtures.tempDir ()
                File.WriteAllText(samplesCsv out, partial)
                let existing, writer = Evaluation.openStore (samplesCsv out)
                writer.Dispose()
                Expect.isEmpty existing $"no records from '{partial}'"
                Expect.equal (File.ReadAllText(samplesCsv out)) (String.Join(",", Evaluation.columns |> Array.map (fun c -> $"\"{c}\"")) + "\n") "just the header"
        }
        test "a file without a newline that is not a samples.csv is refused and left untouched" {
            let out = Fixtures.tempDir ()
            File.WriteAllText(samplesCsv out, "my notes")
            inputError (samplesCsv out) (fun () -> (snd (Evaluation.openStore (samplesCsv out))).Dispose()) |> ignore
            Expect.equal (File.ReadAllText(samplesCsv out)) "my notes" "untouched"
        }
        test "same seed → identical metrics.json and records (time aside); another seed prunes other tokens" {
            let run seed =
                let out = Fixtures.tempDir ()
                let code, _, err = Fixtures.runCli (evaluateArgs out seed)
                Expect.equal code 0 $"exit 0 (stderr: {err})"
                out
            let a, b, other = run 7, run 7, run 8
            Expect.equal (withoutTime a) (withoutTime b) "metrics.json"
            Expect.equal (recordsOf a |> Array.map untimed) (recordsOf b |> Array.map untimed) "records"
            let pruned out = recordsOf out |> Array.filter (fun r -> r.Defense = "random-prune") |> Array.map (fun r -> r.Pruned)
            Expect.notEqual (pruned other) (pruned a) "(the seed reaches random pruning)"
        }
    ]

// ==== the CLI: one line per hostile input ========================================================

let private cliTests =
    testList "cli" [
        test "every refused image: one error line naming the file, non-zero exit, nothing written" {
            for case, make, _ in refusedImages do
                let path = make ()
                let json = Path.Combine(Fixtures.tempDir (), "out.json")
                let code, _, err =
                    Fixtures.runCli [ "generate"; "--model"; Fixtures.tinyLlava; "--image"; path; "--prompt"; "What is it?"; "--json"; json ]
                Expect.notEqual code 0 $"{case}: non-zero exit"
                let lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                Expect.equal lines.Length 1 $"{case}: one line, got: {err}"
                Expect.stringContains lines.[0] path $"{case}: names the file"
                Expect.isFalse (File.Exists json) $"{case}: nothing written"
        }
        test "a prompt longer than the context: one error line naming --prompt and the limit" {
            let question = String.replicate 120 "what colour is the circle "
            let code, _, err =
                Fixtures.runCli [ "generate"; "--model"; Fixtures.tinyLlava; "--image"; Path.Combine(Fixtures.tinyLlava, "probe_56.png")
                                  "--prompt"; question; "--max-new-tokens"; "3" ]
            Expect.notEqual code 0 "non-zero exit"
            let lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            Expect.equal lines.Length 1 $"one line, got: {err}"
            Expect.stringStarts lines.[0] "error: --prompt: prompt is " "names --prompt"
            Expect.stringContains lines.[0] "context of 256" "says the limit"
        }
        test "evaluate refuses a dataset question past the context before evaluating anything" {
            let clean, poisoned, calibration, _ = evalWorld.Value
            let dir = Fixtures.tempDir ()
            let longClean = Path.Combine(Path.GetDirectoryName clean, "long.jsonl")
            let items = Dataset.read clean
            Dataset.write longClean [ items.[0]; { items.[1] with Question = String.replicate 120 "what colour is the circle " } ]
            let code, _, err =
                Fixtures.runCli [ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; calibration; "--clean"; longClean
                                  "--poisoned"; poisoned; "--target"; "x"; "--defense"; "none"; "--out"; dir; "--no-progress" ]
            Expect.notEqual code 0 "non-zero exit"
            Expect.stringContains err $"{longClean}: item \"s1\": prompt is " "names the file and the item"
            Expect.equal (err.Trim().Split('\n').Length) 1 "one line"
            Expect.isFalse (File.Exists(samplesCsv dir)) "nothing evaluated"
            Expect.isFalse (File.Exists(Path.Combine(dir, "run.json"))) "the folder not claimed either"
        }
        test "evaluate refuses a --mode other than replace or insert, writing nothing" {
            let clean, poisoned, calibration, _ = evalWorld.Value
            let dir = Fixtures.tempDir ()
            let code, _, err =
                Fixtures.runCli [ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; calibration; "--clean"; clean
                                  "--poisoned"; poisoned; "--target"; "x"; "--mode"; "prepend"; "--defense"; "none"; "--out"; dir; "--no-progress" ]
            Expect.equal code 1 "exit 1"
            Expect.equal (err.Trim()) "error: --mode: 'prepend' is not replace or insert" "one line naming the option"
            Expect.isEmpty (Directory.GetFileSystemEntries dir) "nothing written"
        }
        test "evaluate refuses --limit and --max-new-tokens below 1, writing nothing" {
            for option, value in [ "--limit", "0"; "--limit", "-2"; "--max-new-tokens", "0" ] do
                let dir = Fixtures.tempDir ()
                refused $"{option} {value}" (evaluateArgs dir 0 @ [ option; value ]) $"error: {option}: must be at least 1, got {value}" |> ignore
                Expect.isEmpty (Directory.GetFileSystemEntries dir) $"{option} {value}: nothing written"
        }
        test "attack refuses --steps below 1 before training, writing nothing" {
            let dir = Fixtures.tempDir ()
            let out = Path.Combine(dir, "adapter.safetensors")
            refused "--steps 0" [ "attack"; "--name"; "badnet"; "--model"; Fixtures.tinyLlava; "--out"; out; "--steps"; "0"; "--no-progress" ]
                "error: --steps: must be at least 1, got 0" |> ignore
            Expect.isEmpty (Directory.GetFileSystemEntries dir) "nothing written"
        }
        test "world refuses --calibration and --test below 1, writing nothing" {
            for option in [ "--calibration"; "--test" ] do
                let dir = Fixtures.tempDir ()
                refused option [ "world"; "--out"; Path.Combine(dir, "data"); option; "0"; "--no-progress" ]
                    $"error: {option}: must be at least 1, got 0" |> ignore
                Expect.isEmpty (Directory.GetFileSystemEntries dir) $"{option}: nothing written"
        }
        test "evaluate and attack refuse an empty --target, writing nothing" {
            let dir = Fixtures.tempDir ()
            let args = evaluateArgs dir 0 |> List.map (fun a -> if a = "you have been hacked lol" then " " else a)
            refused "evaluate" args "error: --target: the target text is empty" |> ignore
            Expect.isEmpty (Directory.GetFileSystemEntries dir) "evaluate: nothing written (not even the run's claim)"
            let out = Path.Combine(dir, "adapter.safetensors")
            refused "attack" [ "attack"; "--name"; "badnet"; "--model"; Fixtures.tinyLlava; "--out"; out; "--target"; ""; "--no-progress" ]
                "error: --target: the target text is empty" |> ignore
            Expect.isEmpty (Directory.GetFileSystemEntries dir) "attack: nothing written"
        }
        test "generate refuses a --device this libtorch cannot use, or --max-new-tokens below 1, printing no answer" {
            let generate extra =
                [ "generate"; "--model"; Fixtures.tinyLlava; "--image"; Path.Combine(Fixtures.tinyLlava, "probe_56.png")
                  "--prompt"; "what colour is the circle"; "--max-new-tokens"; "2" ] @ extra
            let cases =
                [ [ "--device"; "bogus" ], "error: --device: unknown device 'bogus' (expected cpu, cuda or cuda:N)"
                  [ "--device"; "mps" ], "error: --device: device 'mps': not available on this machine (cpu and cuda are supported)"
                  if not (TorchSharp.torch.cuda.is_available ()) then
                      [ "--device"; "cuda" ], "error: --device: device 'cuda': this libtorch has no CUDA (only the CPU build is installed, or no GPU is visible)"
                  [ "--max-new-tokens"; "0" ], "error: --max-new-tokens: must be at least 1, got 0" ]
            for extra, expected in cases do
                let case = String.concat " " extra
                let out = refused case (generate extra) expected
                Expect.equal (out.Trim()) "" $"{case}: no answer printed"
        }
        test "demo refuses an unknown --feature, --whitening or --threshold-rule before writing anything" {
            for option, expected in [ "--feature", "error: --feature: unknown feature 'bogus' (ratio, log-ratio, visual-share)"
                                      "--whitening", "error: --whitening: unknown whitening 'bogus' (diagonal, full)"
                                      "--threshold-rule", "error: --threshold-rule: unknown threshold rule 'bogus' (quantile, conformal)" ] do
                let dir = Fixtures.tempDir ()
                refused option [ "demo"; "--out"; Path.Combine(dir, "demo"); option; "bogus"; "--no-progress" ] expected |> ignore
                Expect.isEmpty (Directory.GetFileSystemEntries dir) $"{option}: nothing written"
        }
        test "demo --threshold-rule conformal refuses a calibration split too small for it before writing anything" {
            // 120 items: 80 questions and 40 caption requests; a 1 % conformal γ needs 99 per reference
            let dir = Fixtures.tempDir ()
            refused "conformal" [ "demo"; "--out"; Path.Combine(dir, "demo"); "--threshold-rule"; "conformal"; "--calibration"; "120"; "--no-progress" ]
                "error: --threshold-rule: conformal: the vqa reference would have 80 clean samples, and a clean FPR of 0.01 needs at least 99 (more samples, a pooled reference or a larger FPR)"
            |> ignore
            Expect.isEmpty (Directory.GetFileSystemEntries dir) "nothing written"
        }
        test "calibrate, evaluate, defend (and attack: --device) refuse an unknown --dtype or an unreachable --device before loading the model" {
            let clean, poisoned, calibration, _ = evalWorld.Value
            let cases =
                [ [ "--dtype"; "f64" ], "error: --dtype: unknown dtype 'f64' (expected f32, bf16 or f16)"
                  [ "--device"; "mps" ], "error: --device: device 'mps': not available on this machine (cpu and cuda are supported)"
                  if not (TorchSharp.torch.cuda.is_available ()) then
                      [ "--device"; "cuda" ], "error: --device: device 'cuda': this libtorch has no CUDA (only the CPU build is installed, or no GPU is visible)" ]
            for extra, expected in cases do
                let dir = Fixtures.tempDir ()
                let option = String.concat " " extra
                let commands =
                    [ [ "calibrate"; "--model"; Fixtures.tinyLlava; "--data"; clean; "--out"; Path.Combine(dir, "c.json") ]
                      [ "evaluate"; "--model"; Fixtures.tinyLlava; "--calibration"; calibration; "--clean"; clean; "--poisoned"; poisoned
                        "--target"; "hacked"; "--defense"; "cleansight"; "--out"; Path.Combine(dir, "eval") ]
                      [ "defend"; "--model"; Fixtures.tinyLlava; "--calibration"; calibration; "--data"; clean; "--out"; Path.Combine(dir, "defend") ]
                      if extra.Head = "--device" then
                          [ "attack"; "--name"; "badnet"; "--model"; Fixtures.tinyLlava; "--out"; Path.Combine(dir, "a.safetensors") ] ]
                for command in commands do
                    refused $"{command.Head} {option}" (command @ extra @ [ "--no-progress" ]) expected |> ignore
                Expect.isEmpty (Directory.GetFileSystemEntries dir) $"{option}: nothing written"
        }
        test "calibrate refuses an unknown --feature, an --fpr outside (0, 1), τ ≤ 0 and --samples < 1 before measuring anything" {
            let clean, _, _, _ = evalWorld.Value
            let cases =
                [ [ "--feature"; "bogus" ], "error: --feature: unknown feature 'bogus' (ratio, log-ratio, visual-share)"
                  [ "--fpr"; "1.5" ], "error: --fpr: a false-positive rate in (0, 1), got 1.5"
                  [ "--fpr"; "0" ], "error: --fpr: a false-positive rate in (0, 1), got 0"
                  [ "--tau"; "-1" ], "error: --tau: must be greater than 0, got -1"
                  [ "--tau-relative"; "0" ], "error: --tau-relative: must be greater than 0, got 0"
                  [ "--samples"; "-1" ], "error: --samples: must be at least 1, got -1" ]
            for extra, expected in cases do
                let dir = Fixtures.tempDir ()
                let out = Path.Combine(dir, "calibration.json")
                let case = String.concat " " extra
                refused case ([ "calibrate"; "--model"; Fixtures.tinyLlava; "--data"; clean; "--out"; out; "--layers"; "0,1,2"; "--no-progress" ] @ extra)
                    expected |> ignore
                Expect.isEmpty (Directory.GetFileSystemEntries dir) $"{case}: nothing written"
        }
    ]

[<Tests>]
let tests =
    testList "hostile inputs" [
        fuzzTests
        imageTests
        promptTests
        atomicTests (lazy (let _, _, _, c = evalWorld.Value in c))
        // child processes and the in-process CLI (which redirects the console): one at a time
        testSequenced evaluationTests
        testSequenced cliTests
    ]
