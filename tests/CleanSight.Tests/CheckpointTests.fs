module CleanSight.Tests.CheckpointTests

open System
open System.IO
open System.Text
open System.Text.Json
open Expecto
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Checkpoints

type ScalarType = torch.ScalarType

/// Runs the action and returns the InputError it throws; fails on no exception or another type,
/// and checks that the message names the file.
let private inputError (file: string) (action: unit -> unit) : InputError =
    let outcome =
        try
            action ()
            Ok()
        with e ->
            Error e
    match outcome with
    | Ok() -> failtestf "expected an InputError about %s, but nothing was thrown" file
    | Error(:? InputError as e) ->
        Expect.stringContains e.Message (Path.GetFullPath file) "the message names the file"
        e
    | Error e -> failtestf "expected an InputError about %s, got %s: %s" file (e.GetType().FullName) e.Message

/// Writes [u64 declared length][header][data] — a safetensors file, or a hostile imitation of one.
let private writeRaw (path: string) (declaredLength: uint64) (header: byte[]) (data: byte[]) =
    use stream = File.Create path
    let prefix = Array.zeroCreate<byte> 8
    Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(Span prefix, declaredLength)
    stream.Write(prefix, 0, 8)
    stream.Write(header, 0, header.Length)
    stream.Write(data, 0, data.Length)

/// A file whose header is the given JSON text followed by dataLength zero bytes.
let private fileWithHeader (dir: string) (json: string) (dataLength: int) =
    let path = Path.Combine(dir, "hostile.safetensors")
    let header = Encoding.UTF8.GetBytes json
    writeRaw path (uint64 header.Length) header (Array.zeroCreate dataLength)
    path

/// Same dtype, shape and bytes (compared through contiguous copies).
let private sameTensor (a: torch.Tensor) (b: torch.Tensor) =
    use ca = a.contiguous ()
    use cb = b.contiguous ()
    a.dtype = b.dtype && a.shape = b.shape && ca.bytes.SequenceEqual(Span<byte>.op_Implicit cb.bytes : ReadOnlySpan<byte>)

let private openFails (path: string) =
    inputError path (fun () -> SafetensorsFile.Open path |> ignore)

/// A copy of the tiny-llava-hf fixture that a test may damage.
let private tinyCopy () =
    let dir = Fixtures.tempDir ()
    for file in Directory.GetFiles Fixtures.tinyLlava do
        let copy = Path.Combine(dir, Path.GetFileName file)
        File.Copy(file, copy)
        File.SetAttributes(copy, FileAttributes.Normal) // the fixture's files are read-only
    dir

let private indexPath dir = Path.Combine(dir, CheckpointFiles.IndexFileName)

let private writeIndex dir (weightMap: (string * string) list) =
    let entries = weightMap |> List.map (fun (t, s) -> sprintf "\"%s\": \"%s\"" t s) |> String.concat ", "
    File.WriteAllText(indexPath dir, sprintf "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {%s}}" entries)

let private fixtureTests =
    testList "tiny-llava-hf" [
        testCase "opens; every tensor in the index reads with its shape and dtype" <| fun () ->
            let ckpt = CheckpointFiles.Open Fixtures.tinyLlava
            use index = JsonDocument.Parse(File.ReadAllText(indexPath Fixtures.tinyLlava))
            let weightMap = index.RootElement.GetProperty "weight_map"
            let listed = weightMap.EnumerateObject() |> Seq.map (fun p -> p.Name, p.Value.GetString()) |> Map.ofSeq
            Expect.equal ckpt.Tensors.Count listed.Count "tensor count equals the weight_map size"
            Expect.equal ckpt.Shards.Count 2 "two shards"
            for KeyValue(name, entry) in ckpt.Tensors do
                Expect.equal (Path.GetFileName entry.File) listed.[name] $"{name} is in the shard the index names"
                use t = ckpt.Read name
                Expect.equal t.shape entry.Shape $"{name} shape"
                Expect.equal t.dtype ScalarType.Float16 $"{name} dtype"
                Expect.equal t.device_type DeviceType.CPU $"{name} on CPU"

        testCase "every tensor's bytes equal the file's bytes at its offsets" <| fun () ->
            let ckpt = CheckpointFiles.Open Fixtures.tinyLlava
            for KeyValue(name, entry) in ckpt.Tensors do
                use t = ckpt.Read name
                let expected = Array.zeroCreate<byte> (int entry.ByteLength)
                use stream = File.OpenRead entry.File
                stream.Position <- entry.DataStart
                stream.ReadExactly(expected, 0, expected.Length)
                Expect.isTrue (t.bytes.SequenceEqual(ReadOnlySpan expected)) $"{name} bytes"

        testCase "values match an independent Python parse" <| fun () ->
            // Values computed with plain Python (struct.unpack '<e') from the fixture's shards.
            let ckpt = CheckpointFiles.Open Fixtures.tinyLlava
            let check name (first: float list) (last: float) (sum: float) =
                use t = ckpt.Read name
                use f = t.to_type ScalarType.Float64
                use flat = f.flatten ()
                let n = flat.shape.[0]
                let firstValues = [ for i in 0L .. int64 first.Length - 1L -> flat.[i].item<float> () ]
                Expect.equal firstValues first $"{name} first values"
                Expect.equal (flat.[n - 1L].item<float> ()) last $"{name} last value"
                use s = flat.sum ()
                Expect.floatClose Accuracy.high (s.item<float> ()) sum $"{name} sum"
            check "language_model.lm_head.weight"
                [ 0.003597259521484375; 0.08709716796875; -0.12841796875; 0.036956787109375 ] 0.133056640625 168.35739773511887
            check "vision_tower.vision_model.encoder.layers.0.self_attn.k_proj.bias"
                [ -0.0139617919921875; 0.09808349609375; -0.08331298828125; -0.040802001953125 ] 0.006439208984375 -0.29810619354248047
            check "multi_modal_projector.linear_1.bias"
                [ 0.048248291015625; 0.059234619140625; -0.08367919921875; 0.06353759765625 ] -0.0265655517578125 0.49765557050704956

        testCase "a name the checkpoint lacks is an InputError naming the folder" <| fun () ->
            let ckpt = CheckpointFiles.Open Fixtures.tinyLlava
            let e = inputError Fixtures.tinyLlava (fun () -> ckpt.Read "no.such.weight" |> ignore)
            Expect.stringContains e.Problem "no.such.weight" "names the tensor"
    ]

let private writerTests =
    testList "writer" [
        testCase "round trip of F32, F16, BF16, I64, BOOL, scalar, empty, non-contiguous and trainable tensors" <| fun () ->
            let dir = Fixtures.tempDir ()
            let path = Path.Combine(dir, "adapter.safetensors")
            use f32 = torch.randn([| 3L; 5L |])
            use f16 = torch.randn([| 4L; 2L |], dtype = ScalarType.Float16)
            use bf16 = torch.randn([| 2L; 3L; 2L |], dtype = ScalarType.BFloat16)
            use i64 = torch.arange(6L, dtype = ScalarType.Int64).reshape(2L, 3L)
            use flags = torch.tensor([| true; false; true |])
            use scalar = torch.tensor 3.5f
            use empty = torch.zeros([| 0L; 4L |])
            use transposed = f32.t ()
            use trainable = torch.randn([| 2L; 3L |], requires_grad = true)
            let tensors =
                [ struct ("z.f32", f32); struct ("a.f16", f16); struct ("m.bf16", bf16); struct ("i64", i64)
                  struct ("flags", flags); struct ("scalar", scalar); struct ("empty", empty); struct ("transposed", transposed)
                  struct ("trainable", trainable) ]
            SafetensorsFile.Write(path, tensors, dict [ "format", "pt"; "note", "héllo" ])

            let file = SafetensorsFile.Open path
            Expect.equal (List.ofSeq file.Tensors.Keys) (tensors |> List.map (fun struct (n, _) -> n) |> List.sortWith (fun a b -> String.CompareOrdinal(a, b))) "sorted by name"
            Expect.equal file.Metadata.["format"] "pt" "metadata"
            Expect.equal file.Metadata.["note"] "héllo" "non-ASCII metadata"
            for struct (name, original) in tensors do
                use back = file.Read name
                Expect.equal back.dtype original.dtype $"{name} dtype"
                Expect.equal back.shape original.shape $"{name} shape"
                Expect.isTrue (sameTensor back original) $"{name} values"
            Expect.equal (file.Tensors.["z.f32"].Dtype, file.Tensors.["a.f16"].Dtype, file.Tensors.["m.bf16"].Dtype) ("F32", "F16", "BF16") "dtype names"
            Expect.equal (Directory.GetFiles dir) [| path |] "no temporary file left behind"

        testCase "header is 8-byte aligned, space-padded plain JSON" <| fun () ->
            let dir = Fixtures.tempDir ()
            let path = Path.Combine(dir, "w.safetensors")
            use t = torch.ones([| 3L |])
            SafetensorsFile.Write(path, [ struct ("w", t) ])
            let bytes = File.ReadAllBytes path
            let n = BitConverter.ToUInt64(bytes, 0) |> int
            Expect.equal (n % 8) 0 "header length is a multiple of 8"
            Expect.equal bytes.Length (8 + n + 12) "length field + header + 3 floats"
            let text = Encoding.UTF8.GetString(bytes, 8, n)
            use json = JsonDocument.Parse text
            let entry = json.RootElement.GetProperty "w"
            Expect.equal (entry.GetProperty("dtype").GetString()) "F32" "dtype"
            Expect.equal [ for d in entry.GetProperty("data_offsets").EnumerateArray() -> d.GetInt64() ] [ 0L; 12L ] "offsets"
            Expect.isTrue (text.TrimEnd(' ').EndsWith "}") "padding is spaces after the JSON"

        testCase "overwrites an existing file" <| fun () ->
            let dir = Fixtures.tempDir ()
            let path = Path.Combine(dir, "w.safetensors")
            use a = torch.ones([| 2L |])
            use b = torch.randn([| 5L |])
            SafetensorsFile.Write(path, [ struct ("w", a) ])
            SafetensorsFile.Write(path, [ struct ("w", b) ])
            use back = SafetensorsFile.Open(path).Read "w"
            Expect.isTrue (sameTensor back b) "second write wins"
            Expect.equal (Directory.GetFiles dir).Length 1 "one file"

        testCase "a sharded folder built by the writer opens" <| fun () ->
            let dir = Fixtures.tempDir ()
            use a = torch.randn([| 4L; 4L |])
            use b = torch.randn([| 8L |], dtype = ScalarType.BFloat16)
            SafetensorsFile.Write(Path.Combine(dir, "s1.safetensors"), [ struct ("a", a) ])
            SafetensorsFile.Write(Path.Combine(dir, "s2.safetensors"), [ struct ("b", b) ])
            writeIndex dir [ "a", "s1.safetensors"; "b", "s2.safetensors" ]
            let ckpt = CheckpointFiles.Open dir
            Expect.equal ckpt.Tensors.Count 2 "two tensors"
            use backA = ckpt.Read "a"
            use backB = ckpt.Read "b"
            Expect.isTrue (sameTensor backA a && sameTensor backB b) "values"

        testCase "OpenFile reads a loose .safetensors file" <| fun () ->
            let dir = Fixtures.tempDir ()
            let path = Path.Combine(dir, "adapter_model.safetensors")
            use t = torch.randn([| 2L; 3L |], dtype = ScalarType.Float16)
            SafetensorsFile.Write(path, [ struct ("lora.A", t) ])
            let ckpt = CheckpointFiles.OpenFile path
            use back = ckpt.Read "lora.A"
            Expect.isTrue (sameTensor back t) "values"
    ]

let private hostileFileTests =
    let headerCase name json dataLength (mentions: string list) =
        testCase name <| fun () ->
            let path = fileWithHeader (Fixtures.tempDir ()) json dataLength
            let e = openFails path
            for m in mentions do
                Expect.stringContains e.Problem m $"the problem mentions {m}"
    testList "hostile safetensors" [
        testCase "shorter than 8 bytes" <| fun () ->
            let path = Path.Combine(Fixtures.tempDir (), "short.safetensors")
            File.WriteAllBytes(path, [| 1uy; 2uy; 3uy |])
            openFails path |> ignore

        testCase "header length beyond the file" <| fun () ->
            let path = Path.Combine(Fixtures.tempDir (), "long.safetensors")
            writeRaw path 1000UL (Encoding.UTF8.GetBytes "{}") [||]
            Expect.stringContains (openFails path).Problem "1000" "says the claimed length"

        testCase "header claiming 1 TB allocates nothing" <| fun () ->
            let path = Path.Combine(Fixtures.tempDir (), "huge.safetensors")
            writeRaw path (1UL <<< 40) (Encoding.UTF8.GetBytes "{}") [||]
            let before = GC.GetAllocatedBytesForCurrentThread()
            let e = openFails path
            let allocated = GC.GetAllocatedBytesForCurrentThread() - before
            Expect.stringContains e.Problem "1099511627776" "says the claimed length"
            Expect.isLessThan allocated (1L <<< 20) "allocates under 1 MiB"

        testCase "pickle bytes are called a pickle" <| fun () ->
            let path = Path.Combine(Fixtures.tempDir (), "model.safetensors")
            File.WriteAllBytes(path, Array.append [| 0x80uy; 0x02uy; 0x8auy; 0x0auy |] (Array.create 60 0x6cuy))
            Expect.stringContains (openFails path).Problem "pickle" "mentions pickle"

        testCase "invalid UTF-8" <| fun () ->
            let path = Path.Combine(Fixtures.tempDir (), "utf8.safetensors")
            let header = Array.concat [ Encoding.ASCII.GetBytes "{\"a"; [| 0xffuy; 0xfeuy |]; Encoding.ASCII.GetBytes "\": {}}" ]
            writeRaw path (uint64 header.Length) header [||]
            Expect.stringContains (openFails path).Problem "UTF-8" "mentions UTF-8"

        headerCase "invalid JSON" "{\"a\": {\"dtype\": \"F32\"," 0 [ "JSON" ]
        headerCase "header is not an object" "[1, 2]" 0 [ "array" ]
        headerCase "unknown dtype" """{"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}""" 2 [ "F8_E4M3"; "'a'" ]
        headerCase "missing data_offsets" """{"a":{"dtype":"F32","shape":[2]}}""" 8 [ "data_offsets" ]
        headerCase "shape of the wrong type" """{"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}""" 8 [ "shape" ]
        headerCase "fractional offset" """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}}""" 8 [ "8.5" ]
        headerCase "offset beyond 64 bits" """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,1e400]}}""" 8 [ "1e400" ]
        headerCase "negative dimension" """{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}""" 8 [ "-2" ]
        headerCase "end before begin" """{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}""" 8 [ "[8, 0]" ]
        headerCase "offsets beyond the data" """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""" 8 [ "[0, 16]"; "8 bytes" ]
        headerCase "overlapping tensors"
            """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""" 12
            [ "'a'"; "'b'"; "overlap" ]
        headerCase "byte length not matching the shape" """{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""" 8 [ "12"; "8" ]
        headerCase "shape product overflowing 64 bits"
            """{"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,16]}}""" 16 [ "'a'" ]
        headerCase "tensor named twice"
            """{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}""" 2 [ "twice" ]
        headerCase "metadata value not a string" """{"__metadata__":{"format":3}}""" 0 [ "format" ]

        testCase "data cut short before opening" <| fun () ->
            let dir = Fixtures.tempDir ()
            let path = Path.Combine(dir, "w.safetensors")
            use t = torch.ones([| 16L |])
            SafetensorsFile.Write(path, [ struct ("w", t) ])
            let bytes = File.ReadAllBytes path
            File.WriteAllBytes(path, bytes.[.. bytes.Length - 5])
            openFails path |> ignore

        testCase "data cut short after opening is 'truncated' on read" <| fun () ->
            let dir = Fixtures.tempDir ()
            let path = Path.Combine(dir, "w.safetensors")
            use t = torch.ones([| 16L |])
            SafetensorsFile.Write(path, [ struct ("w", t) ])
            let file = SafetensorsFile.Open path
            let bytes = File.ReadAllBytes path
            File.WriteAllBytes(path, bytes.[.. bytes.Length - 5])
            let e = inputError path (fun () -> file.Read "w" |> ignore)
            Expect.stringContains e.Problem "truncated" "says truncated"
    ]

let private hostileFolderTests =
    testList "hostile checkpoint folders" [
        testCase "folder missing" <| fun () ->
            let dir = Path.Combine(Fixtures.tempDir (), "nope")
            inputError dir (fun () -> CheckpointFiles.Open dir |> ignore) |> ignore

        testCase "folder without weights" <| fun () ->
            let dir = Fixtures.tempDir ()
            File.WriteAllText(Path.Combine(dir, "config.json"), "{}")
            Expect.stringContains (inputError dir (fun () -> CheckpointFiles.Open dir |> ignore)).Problem "no weights" "says no weights"

        testCase "pickle-only folder is refused" <| fun () ->
            let dir = Fixtures.tempDir ()
            File.WriteAllBytes(Path.Combine(dir, "pytorch_model.bin"), [| 0x80uy; 0x02uy |])
            let e = inputError dir (fun () -> CheckpointFiles.Open dir |> ignore)
            Expect.stringContains e.Problem "pytorch_model.bin" "names the pickle file"
            Expect.stringContains e.Problem "execute code" "says why"
            Expect.stringContains e.Problem "safetensors" "suggests converting"

        testCase "a loose pickle file is refused" <| fun () ->
            let path = Path.Combine(Fixtures.tempDir (), "adapter.pt")
            File.WriteAllBytes(path, [| 0x80uy; 0x02uy |])
            Expect.stringContains (inputError path (fun () -> CheckpointFiles.OpenFile path |> ignore)).Problem "pickle" "mentions pickle"

        testCase "index that is not JSON" <| fun () ->
            let dir = tinyCopy ()
            File.WriteAllText(indexPath dir, "{\"weight_map\": {")
            inputError (indexPath dir) (fun () -> CheckpointFiles.Open dir |> ignore) |> ignore

        testCase "index without weight_map" <| fun () ->
            let dir = tinyCopy ()
            File.WriteAllText(indexPath dir, "{\"metadata\": {}}")
            inputError (indexPath dir) (fun () -> CheckpointFiles.Open dir |> ignore) |> ignore

        testCase "shard named in the index is missing" <| fun () ->
            let dir = tinyCopy ()
            File.Delete(Path.Combine(dir, "model-00002-of-00002.safetensors"))
            let e = inputError (indexPath dir) (fun () -> CheckpointFiles.Open dir |> ignore)
            Expect.stringContains e.Problem "model-00002-of-00002.safetensors" "names the shard"

        testCase "shard that is a pickle file is refused" <| fun () ->
            let dir = Fixtures.tempDir ()
            File.WriteAllBytes(Path.Combine(dir, "pytorch_model-00001-of-00001.bin"), [| 0x80uy; 0x02uy |])
            writeIndex dir [ "w", "pytorch_model-00001-of-00001.bin" ]
            let e = inputError (indexPath dir) (fun () -> CheckpointFiles.Open dir |> ignore)
            Expect.stringContains e.Problem "pickle" "mentions pickle"

        testCase "shard name leaving the folder is refused" <| fun () ->
            let outer = Fixtures.tempDir ()
            let dir = Path.Combine(outer, "ckpt")
            Directory.CreateDirectory dir |> ignore
            use t = torch.ones([| 2L |])
            SafetensorsFile.Write(Path.Combine(outer, "x.safetensors"), [ struct ("w", t) ])
            writeIndex dir [ "w", "../x.safetensors" ]
            let e = inputError (indexPath dir) (fun () -> CheckpointFiles.Open dir |> ignore)
            Expect.stringContains e.Problem "outside" "says it leaves the folder"

        testCase "tensor listed in the index but absent from its shard" <| fun () ->
            let dir = Fixtures.tempDir ()
            use t = torch.ones([| 2L |])
            SafetensorsFile.Write(Path.Combine(dir, "s1.safetensors"), [ struct ("w", t) ])
            writeIndex dir [ "w", "s1.safetensors"; "ghost", "s1.safetensors" ]
            let e = inputError (indexPath dir) (fun () -> CheckpointFiles.Open dir |> ignore)
            Expect.stringContains e.Problem "ghost" "names the tensor"

        testCase "tensor in two shards" <| fun () ->
            let dir = Fixtures.tempDir ()
            use t = torch.ones([| 2L |])
            SafetensorsFile.Write(Path.Combine(dir, "s1.safetensors"), [ struct ("w", t) ])
            SafetensorsFile.Write(Path.Combine(dir, "s2.safetensors"), [ struct ("w", t); struct ("v", t) ])
            writeIndex dir [ "w", "s1.safetensors"; "v", "s2.safetensors" ]
            let e = inputError (Path.Combine(dir, "s2.safetensors")) (fun () -> CheckpointFiles.Open dir |> ignore)
            Expect.stringContains e.Problem "'w'" "names the tensor"

        testCase "a hostile shard header is reported against the shard" <| fun () ->
            let dir = tinyCopy ()
            let shard = Path.Combine(dir, "model-00001-of-00002.safetensors")
            writeRaw shard (1UL <<< 40) [||] [||]
            inputError shard (fun () -> CheckpointFiles.Open dir |> ignore) |> ignore
    ]

[<Tests>]
let tests =
    testList "checkpoint" [ fixtureTests; writerTests; hostileFileTests; hostileFolderTests ]
