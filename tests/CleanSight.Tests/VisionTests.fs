module CleanSight.Tests.VisionTests

open System
open System.IO
open System.Text.Json
open Expecto
open SixLabors.ImageSharp
open SixLabors.ImageSharp.PixelFormats
open CleanSight.Core
open CleanSight.Core.Vision

let private fixture name = Path.Combine(Fixtures.tinyLlava, name)

let private config () = ClipPreprocessorConfig.Load(fixture "preprocessor_config.json")

/// expected.json: image file name → HF's normalised CHW pixel_values.
let private expectedPixelValues () =
    use doc = JsonDocument.Parse(File.ReadAllText(fixture "expected.json"))
    [ for case in doc.RootElement.GetProperty("cases").EnumerateArray() ->
        case.GetProperty("image").GetString(),
        [| for v in case.GetProperty("pixel_values").EnumerateArray() -> v.GetDouble() |] ]

/// A fresh temp file path with the given extension, in a folder of its own under the run's temp root.
let private tempFile (ext: string) = Path.Combine(Fixtures.tempDir (), $"image{ext}")

let private withTempFile ext (body: string -> unit) =
    let path = tempFile ext
    try body path finally (if File.Exists path then File.Delete path)

/// Runs f, which must throw an InputError whose message names `file`.
let private expectInputError (file: string) (f: unit -> 'a) =
    try
        f () |> ignore
        failtest $"expected an InputError for {file}"
    with :? InputError as e ->
        Expect.stringContains e.Message file "the message names the file"

let private bytesOf (img: RgbImage) = Array.copy img.Pixels

[<Tests>]
let tests =
    testList "vision" [
        testList "CLIP preprocessing vs HF (expected.json)" [
            for name in [ "probe_56.png"; "probe_90x64.png" ] do
                test $"{name}: resized+cropped pixels within 1/255 of HF before normalisation" {
                    let cfg = config ()
                    let expected = expectedPixelValues () |> List.find (fun (n, _) -> n = name) |> snd
                    let cropped = ClipImageProcessor.ResizeAndCrop(RgbImage.Load(fixture name), cfg)
                    Expect.equal (cropped.Width, cropped.Height) (cfg.CropWidth, cfg.CropHeight) "crop size"
                    let plane = cropped.Width * cropped.Height
                    Expect.equal expected.Length (3 * plane) "expected length"
                    let mutable maxDiff = 0.0
                    for c in 0 .. 2 do
                        for i in 0 .. plane - 1 do
                            let hf = expected.[c * plane + i] * cfg.ImageStd.[c] + cfg.ImageMean.[c] // de-normalised, in [0, 1]
                            let ours = float cropped.Pixels.[i * 3 + c] / 255.0
                            maxDiff <- max maxDiff (abs (hf - ours))
                    Expect.isLessThanOrEqual maxDiff (1.0 / 255.0 + 1e-6) "max |diff| before normalisation"
                }
                test $"{name}: normalised CHW output within 1e-4 of HF" {
                    let expected = expectedPixelValues () |> List.find (fun (n, _) -> n = name) |> snd
                    let got = ClipImageProcessor.Preprocess(RgbImage.Load(fixture name), config ())
                    Expect.equal got.Length expected.Length "3 x crop_h x crop_w values"
                    let maxDiff = Array.map2 (fun (g: float32) e -> abs (float g - e)) got expected |> Array.max
                    Expect.isLessThanOrEqual maxDiff 1e-4 "max |diff| after normalisation"
                }
        ]

        testList "PIL resize port" [
            // 4x3 RGB input (HWC bytes) and outputs of Pillow 9.4 Image.resize on it.
            let input =
                [| 255uy; 255uy; 255uy; 0uy; 0uy; 0uy; 233uy; 32uy; 103uy; 122uy; 13uy; 204uy
                   138uy; 172uy; 208uy; 127uy; 124uy; 100uy; 12uy; 151uy; 222uy; 203uy; 251uy; 153uy
                   211uy; 235uy; 80uy; 182uy; 176uy; 41uy; 88uy; 7uy; 141uy; 241uy; 73uy; 124uy |]
            let small = RgbImage(4, 3, input)
            let check (w, h, filter, expected: int list) =
                test $"{filter} {w}x{h} equals Pillow" {
                    let out = PilResize.Resize(small, w, h, filter)
                    Expect.equal (out.Width, out.Height) (w, h) "size"
                    Expect.sequenceEqual (out.Pixels |> Array.map int) expected "pixels"
                }
            check (3, 2, PilFilter.Bicubic,
                   [ 163; 176; 186; 91; 53; 84; 156; 100; 184; 184; 204; 103; 104; 108; 119; 180; 119; 149 ])
            check (3, 2, PilFilter.Bilinear,
                   [ 163; 171; 178; 99; 62; 93; 152; 95; 174; 177; 195; 109; 111; 109; 117; 177; 116; 146 ])
            check (6, 5, PilFilter.Bicubic,
                   [ 255; 255; 255; 120; 132; 127; 8; 0; 0; 223; 17; 72; 194; 10; 161; 107; 0; 216
                     211; 224; 247; 125; 135; 141; 46; 42; 41; 137; 72; 131; 157; 96; 176; 149; 105; 190
                     139; 175; 215; 140; 148; 150; 110; 123; 109; 15; 141; 210; 106; 206; 193; 216; 255; 148
                     182; 213; 128; 182; 193; 90; 151; 147; 76; 55; 70; 163; 139; 101; 159; 243; 150; 129
                     219; 244; 73; 208; 222; 49; 171; 153; 47; 96; 14; 123; 167; 19; 134; 254; 64; 121 ])
            check (4, 5, PilFilter.Bicubic, // width unchanged: vertical pass only
                   [ 255; 255; 255; 0; 0; 0; 250; 23; 94; 116; 0; 208; 211; 223; 244; 42; 41; 38; 152; 80
                     148; 149; 104; 187; 138; 172; 208; 127; 124; 100; 12; 151; 222; 203; 251; 153; 180; 209; 123; 168
                     163; 66; 51; 63; 175; 231; 146; 132; 217; 240; 70; 186; 180; 37; 94; 0; 135; 244; 60; 122 ])

            test "same size is the identity" {
                let img = RgbImage.Load(fixture "probe_90x64.png")
                let out = PilResize.Resize(img, img.Width, img.Height)
                Expect.sequenceEqual out.Pixels img.Pixels "pixels unchanged"
                let probe = RgbImage.Load(fixture "probe_56.png") // 56x56 = shortest edge = crop: no-op
                Expect.sequenceEqual (ClipImageProcessor.ResizeAndCrop(probe, config ()).Pixels) probe.Pixels "CLIP resize+crop is a no-op"
            }

            test "shortest-edge output size follows HF (int(s * long / short))" {
                let cfg = config ()
                Expect.equal (ClipImageProcessor.ResizeOutputSize(64, 90, cfg)) (56, 78) "landscape"
                Expect.equal (ClipImageProcessor.ResizeOutputSize(90, 64, cfg)) (78, 56) "portrait"
                Expect.equal (ClipImageProcessor.ResizeOutputSize(56, 56, cfg)) (56, 56) "square"
            }

            test "centre crop pads with zeros when the image is smaller (HF center_crop)" {
                let img = RgbImage(2, 1, [| 1uy; 2uy; 3uy; 4uy; 5uy; 6uy |])
                let out = ClipImageProcessor.CenterCrop(img, 3, 5)
                // top = (1 - 3) // 2 = -1, left = (2 - 5) // 2 = -2: the input lands at row 1, columns 2..3.
                let expected = Array.zeroCreate<byte> (3 * 5 * 3)
                Array.blit img.Pixels 0 expected ((1 * 5 + 2) * 3) 6
                Expect.sequenceEqual out.Pixels expected "zero padding, HF's offsets"
            }
        ]

        testList "loading" [
            test "grayscale PNG becomes R=G=B" {
                withTempFile ".png" (fun path ->
                    use img = new Image<L8>(3, 2)
                    for y in 0 .. 1 do
                        for x in 0 .. 2 do
                            img.[x, y] <- L8(byte (40 * y + 10 * x + 5))
                    img.SaveAsPng(path)
                    let rgb = RgbImage.Load(path)
                    Expect.equal (rgb.Width, rgb.Height) (3, 2) "size"
                    for y in 0 .. 1 do
                        for x in 0 .. 2 do
                            let v = byte (40 * y + 10 * x + 5)
                            Expect.equal [ rgb.[y, x, 0]; rgb.[y, x, 1]; rgb.[y, x, 2] ] [ v; v; v ] $"pixel ({x}, {y})")
            }

            test "RGBA PNG drops alpha without compositing (PIL convert(\"RGB\"))" {
                withTempFile ".png" (fun path ->
                    use img = new Image<Rgba32>(2, 1)
                    img.[0, 0] <- Rgba32(200uy, 100uy, 50uy, 0uy)   // fully transparent: colour kept as is
                    img.[1, 0] <- Rgba32(10uy, 20uy, 30uy, 128uy)
                    img.SaveAsPng(path)
                    Expect.sequenceEqual (RgbImage.Load(path).Pixels) [| 200uy; 100uy; 50uy; 10uy; 20uy; 30uy |] "RGB kept, alpha dropped")
            }

            test "Save then Load round-trips" {
                withTempFile ".png" (fun path ->
                    let img = RgbImage(2, 2, [| 0uy .. 11uy |])
                    img.Save(path)
                    Expect.sequenceEqual (bytesOf (RgbImage.Load(path))) img.Pixels "same pixels")
            }

            test "undecodable file raises InputError naming the file" {
                withTempFile ".png" (fun path ->
                    File.WriteAllBytes(path, Array.init 1000 (fun i -> byte ((i * 7919 + 13) % 251)))
                    expectInputError path (fun () -> RgbImage.Load(path)))
            }

            test "truncated PNG raises InputError" {
                withTempFile ".png" (fun path ->
                    let bytes = File.ReadAllBytes(fixture "probe_90x64.png")
                    File.WriteAllBytes(path, bytes.[.. bytes.Length / 2])
                    expectInputError path (fun () -> RgbImage.Load(path)))
            }

            test "empty and missing files raise InputError" {
                withTempFile ".png" (fun path ->
                    expectInputError path (fun () -> RgbImage.Load(path))
                    File.WriteAllBytes(path, [||])
                    expectInputError path (fun () -> RgbImage.Load(path)))
            }

            test "images above the pixel limit are refused from the header" {
                let path = fixture "probe_90x64.png"
                expectInputError path (fun () -> RgbImage.Load(path, 90L * 64L - 1L))
            }
        ]

        testList "preprocessor config" [
            test "fixture config" {
                let cfg = config ()
                Expect.equal cfg.ShortestEdge (Nullable 56) "shortest edge"
                Expect.equal (cfg.CropHeight, cfg.CropWidth) (56, 56) "crop"
                Expect.equal cfg.Resample PilFilter.Bicubic "bicubic"
                Expect.floatClose Accuracy.veryHigh cfg.RescaleFactor (1.0 / 255.0) "rescale"
            }

            test "absent fields take CLIPImageProcessor defaults" {
                let cfg = ClipPreprocessorConfig.Parse("{}", "mem.json")
                Expect.equal cfg.ShortestEdge (Nullable 224) "shortest edge"
                Expect.equal (cfg.CropHeight, cfg.CropWidth) (224, 224) "crop"
                Expect.sequenceEqual cfg.ImageMean [ 0.48145466; 0.4578275; 0.40821073 ] "mean"
                Expect.sequenceEqual cfg.ImageStd [ 0.26862954; 0.26130258; 0.27577711 ] "std"
            }

            test "bad JSON, wrong types and unsupported resample raise InputError naming the file" {
                for json in [ "{"; """{"do_resize": "yes"}"""; """{"size": {"shortest_edge": "big"}}"""
                              """{"resample": 1}"""; """{"image_mean": [0.5, 0.5]}""" ] do
                    expectInputError "mem.json" (fun () -> ClipPreprocessorConfig.Parse(json, "mem.json"))
            }
        ]
    ]
