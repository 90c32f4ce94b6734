/// The checkpoint variants real llava-hf folders come in, each made by rewriting the tiny fixture
/// (key layout, file dtype, tied embeddings, select strategy, a list of feature layers, a config
/// default) and held against the original's first-token logits and 6 greedy ids of probe_56.png.
module CleanSight.Tests.CheckpointVariantTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Checkpoints
open CleanSight.Core.Inference
open CleanSight.Core.Vision

type private Tensor = torch.Tensor

let private question = "What is in the picture?"
let private probe = Path.Combine(Fixtures.tinyLlava, "probe_56.png")
let private image = lazy (RgbImage.Load probe)

/// Everything of the fixture folder except its weights.
let private nonWeightFiles =
    [ "config.json"; "tokenizer.model"; "tokenizer_config.json"; "special_tokens_map.json"; "preprocessor_config.json" ]

/// The fixture's tensors by classic key, in its file dtype (F16).
let private readFixtureWeights () : (string * Tensor) list =
    let files = CheckpointFiles.Open Fixtures.tinyLlava
    [ for name in files.Tensors.Keys |> Seq.sort -> name, files.Read name ]

/// A new folder holding the fixture's non-weight files with config.json passed through `editConfig`,
/// and `weights` as one model.safetensors (no index).
let private writeVariant (editConfig: JsonObject -> unit) (weights: (string * Tensor) list) =
    let dir = Fixtures.tempDir ()
    for f in nonWeightFiles do
        File.Copy(Path.Combine(Fixtures.tinyLlava, f), Path.Combine(dir, f))
    let configPath = Path.Combine(dir, "config.json")
    let config = JsonNode.Parse(File.ReadAllText configPath).AsObject()
    editConfig config
    File.WriteAllText(configPath, config.ToJsonString(Text.Json.JsonSerializerOptions(WriteIndented = true)))
    SafetensorsFile.Write(Path.Combine(dir, CheckpointFiles.SingleFileName), [ for n, t in weights -> struct (n, t) ])
    for _, t in weights do t.Dispose()
    dir

let private textConfig (c: JsonObject) = c["text_config"].AsObject()

/// Loads a folder (fp32 compute on CPU unless told) and generates 6 greedy tokens for probe_56.png.
let private generateWith (options: RunOptions) dir =
    use session = LlavaSession.Load(dir, options)
    session.Generate(image.Value, question, 6)

let private generate dir = generateWith RunOptions.Default dir

/// The unmodified fixture's answer: the reference every variant is held against.
let private original = lazy (generate Fixtures.tinyLlava)

let private maxAbs (xs: float32[]) = xs |> Array.map abs |> Array.max
let private maxAbsDiff (a: float32[]) (b: float32[]) = Array.map2 (fun x y -> abs (x - y)) a b |> Array.max

let private expectIdentical (actual: Generation) (reference: Generation) what =
    Expect.equal actual.FirstTokenLogits.Length reference.FirstTokenLogits.Length $"{what}: one logit per vocabulary entry"
    Expect.isTrue (Array.forall Single.IsFinite actual.FirstTokenLogits) $"{what}: finite logits"
    Expect.equal (maxAbsDiff actual.FirstTokenLogits reference.FirstTokenLogits) 0.0f $"{what}: first-token logits bit-identical"
    Expect.sequenceEqual actual.OutputIds reference.OutputIds $"{what}: 6 greedy ids"

let private expectDifferent (actual: Generation) (reference: Generation) what =
    let d = maxAbsDiff actual.FirstTokenLogits reference.FirstTokenLogits
    Expect.isGreaterThan d 1e-3f $"{what}: first-token logits differ (max |Δ| {d})"

/// Newer transformers (≥ 4.52) name for a classic key: the inverse of WeightLoader.ToClassicKey.
let private toNewerKey (key: string) =
    if key.StartsWith "language_model.model." then "model.language_model." + key.Substring "language_model.model.".Length
    elif key = "language_model.lm_head.weight" then "lm_head.weight"
    elif key.StartsWith "vision_tower." || key.StartsWith "multi_modal_projector." then "model." + key
    else failwith $"unexpected fixture key {key}"

let private converted (dtype: torch.ScalarType) =
    [ for n, t in readFixtureWeights () ->
        let c = t.``to``(dtype)
        t.Dispose()
        n, c ]

let private lmHead = "language_model.lm_head.weight"
let private embedTokens = "language_model.model.embed_tokens.weight"
let private linear1 = "multi_modal_projector.linear_1.weight"

[<Tests>]
let tests =
    testSequenced <| testList "checkpoint variants" [
        test "base fingerprint: the same weights in any layout agree; other bytes, another embedding value differ; the projector does not count" {
            let original = BaseFingerprint.Of Fixtures.tinyLlava
            Expect.equal original.Length 64 "SHA-256 hex"
            let newer = writeVariant ignore (readFixtureWeights () |> List.map (fun (n, t) -> toNewerKey n, t))
            Expect.equal (BaseFingerprint.Of newer) original "two shards, classic keys = one file, newer keys"
            Expect.notEqual (BaseFingerprint.Of(writeVariant ignore (converted torch.ScalarType.Float32))) original "the same values stored as F32"
            let nudged (name: string) =
                writeVariant ignore [
                    for n, t in readFixtureWeights () ->
                        if n = name then
                            use _ = torch.no_grad ()
                            t.view(-1L).narrow(0L, 0L, 1L).add_(torch.tensor(0.5f, torch.ScalarType.Float16)) |> ignore
                        n, t ]
            Expect.notEqual (BaseFingerprint.Of(nudged embedTokens)) original "one embedding value changed"
            Expect.equal (BaseFingerprint.Of(nudged linear1)) original "a projector value changed (what an adapter changes)"
        }
        test "newer key layout in one model.safetensors gives identical logits and ids" {
            let weights = readFixtureWeights () |> List.map (fun (n, t) -> toNewerKey n, t)
            let dir = writeVariant ignore weights
            Expect.isFalse (File.Exists(Path.Combine(dir, CheckpointFiles.IndexFileName))) "no index in the variant"
            let keys = (CheckpointFiles.Open dir).Tensors.Keys |> Set.ofSeq
            Expect.isTrue (keys.Contains "lm_head.weight" && keys.Contains "model.language_model.norm.weight"
                           && keys.Contains "model.vision_tower.vision_model.pre_layrnorm.weight"
                           && keys.Contains "model.multi_modal_projector.linear_1.weight") "the file holds newer-layout keys"
            Expect.isFalse (keys |> Set.exists (fun k -> k.StartsWith "language_model.")) "and no classic key"
            expectIdentical (generate dir) original.Value "newer layout"
        }

        test "F32 file gives identical logits and ids" {
            let dir = writeVariant ignore (converted torch.ScalarType.Float32)
            let dtypes = (CheckpointFiles.Open dir).Tensors.Values |> Seq.map (fun e -> e.Dtype) |> Set.ofSeq
            Expect.equal dtypes (Set.singleton "F32") "every tensor stored as F32"
            // F16 → F32 is exact and the model computes in fp32 either way.
            expectIdentical (generate dir) original.Value "F32 file"
        }

        test "BF16 file loads and runs, logits within bf16 rounding" {
            let dir = writeVariant ignore (converted torch.ScalarType.BFloat16)
            let dtypes = (CheckpointFiles.Open dir).Tensors.Values |> Seq.map (fun e -> e.Dtype) |> Set.ofSeq
            Expect.equal dtypes (Set.singleton "BF16") "every tensor stored as BF16"
            let gen = generate dir
            let reference = original.Value.FirstTokenLogits
            // The weights lose 3 mantissa bits (F16 → BF16); the computation stays fp32.
            let d, scale = maxAbsDiff gen.FirstTokenLogits reference, maxAbs reference
            printfn "BF16 file: max |Δlogit| %g, max |logit| %g, ratio %g; ids %A vs %A"
                d scale (d / scale) gen.OutputIds original.Value.OutputIds
            Expect.isGreaterThan d 0.0f "rounding to bf16 changed something (the file really is bf16)"
            Expect.isLessThan (d / scale) 0.15f $"max |Δlogit| {d} is under 0.15 of max |logit| {scale}"
            Expect.isNonEmpty gen.OutputIds "generation ran"
        }

        test "tied embeddings: no lm_head, logits use embed_tokens" {
            // What is checkable exactly: the tied model computes logits = h · Eᵀ with the same E it
            // embeds with, so it must equal the UNTIED model whose lm_head is a copy of E (same
            // inputs, same hidden states h, same matrix). Comparing against the original fixture
            // alone could not tell "uses E" from "uses some other matrix"; the copy can.
            let tiedDir =
                writeVariant (fun c -> (textConfig c)["tie_word_embeddings"] <- JsonValue.Create true)
                             (readFixtureWeights ()
                              |> List.filter (fun (n, t) ->
                                  if n = lmHead then t.Dispose()
                                  n <> lmHead))
            Expect.isFalse ((CheckpointFiles.Open tiedDir).Contains lmHead) "the tied file has no lm_head"
            let tied = generate tiedDir
            let untiedWithECopy =
                let weights = readFixtureWeights ()
                let e = weights |> List.find (fst >> (=) embedTokens) |> snd
                weights |> List.map (fun (n, t) -> if n = lmHead then (t.Dispose(); n, e.clone()) else n, t)
                |> writeVariant ignore
            expectIdentical tied (generate untiedWithECopy) "tied vs untied with lm_head := embed_tokens"
            expectDifferent tied original.Value "tied vs the original lm_head"
        }

        test "select strategy 'full' keeps CLS: 17 image tokens, generation runs, logits differ" {
            let dir =
                writeVariant (fun c ->
                    c["vision_feature_select_strategy"] <- JsonValue.Create "full"
                    c["image_seq_length"] <- JsonValue.Create 17) (readFixtureWeights ())
            use session = LlavaSession.Load dir
            let imageTokens = session.Prompt(question).InputIds |> Array.filter ((=) session.Config.ImageTokenIndex) |> Array.length
            Expect.equal imageTokens 17 "16 patches + CLS image tokens in the prompt"
            let gen = session.Generate(image.Value, question, 6)
            Expect.equal gen.FirstTokenLogits.Length original.Value.FirstTokenLogits.Length "one logit per vocabulary entry"
            Expect.isNonEmpty gen.OutputIds "generation ran"
            expectDifferent gen original.Value "'full' vs 'default'"
            // 'full' is 'default' with CLS in front: rows 1..16 of its image features are the
            // default model's rows 0..15 (same weights, same layer), row 0 is the CLS feature.
            use fixture = LlavaSession.Load Fixtures.tinyLlava
            use pixels = session.Pixels image.Value
            use full = session.Model.ImageFeatures(pixels.unsqueeze 0)       // [1, 17, 96]
            use dflt = fixture.Model.ImageFeatures(pixels.unsqueeze 0)       // [1, 16, 96]
            Expect.sequenceEqual full.shape [| 1L; 17L; 96L |] "17 feature rows"
            use patches = full.narrow(1, 1, 16)
            let d = (patches - dflt).abs().max().item<float32>()
            printfn "'full' rows 1..16 vs 'default' rows: max |Δ| %g" d
            Expect.isLessThan d 1e-5f "rows 1..16 of 'full' are the default features (CLS first)"
        }

        test "vision_feature_layer [-2, -1] concatenates in order: [W | 0] projector gives identical logits" {
            // linear_1 [96, 64] → [96, 128]: the original columns read layer −2 (first), zeros read
            // layer −1. Any other order or a dropped layer would feed W the wrong features.
            let withProjector order (pad: Tensor -> Tensor list) =
                readFixtureWeights ()
                |> List.map (fun (n, t) ->
                    if n = linear1 then
                        let wide = torch.cat(List.toArray (pad t), 1L)
                        t.Dispose()
                        n, wide
                    else n, t)
                |> writeVariant (fun c -> c["vision_feature_layer"] <- JsonArray(order |> List.map (fun (l: int) -> JsonValue.Create l :> JsonNode) |> List.toArray))
            let zerosLike (t: Tensor) = torch.zeros_like t
            let dir = withProjector [ -2; -1 ] (fun w -> [ w; zerosLike w ])
            let shape = (CheckpointFiles.Open dir).Tensors[linear1].Shape
            Expect.sequenceEqual shape [| 96L; 128L |] "linear_1 widened to 2 × 64 inputs"
            let gen = generate dir
            printfn "[-2, -1] with [W | 0]: max |Δlogit| %g" (maxAbsDiff gen.FirstTokenLogits original.Value.FirstTokenLogits)
            expectIdentical gen original.Value "[-2, -1] with [W | 0]"
            // The same weights under the other order read layer −1 through W: different answer.
            let swapped = withProjector [ -1; -2 ] (fun w -> [ w; zerosLike w ])
            expectDifferent (generate swapped) original.Value "[-1, -2] with [W | 0]"
        }

        test "num_key_value_heads omitted defaults to num_attention_heads: one InputError naming the shard and k_proj" {
            let dir = Fixtures.tinyLlavaCopy ()
            let configPath = Path.Combine(dir, "config.json")
            let config = JsonNode.Parse(File.ReadAllText configPath).AsObject()
            Expect.isTrue ((textConfig config).Remove "num_key_value_heads") "the fixture config has num_key_value_heads"
            File.WriteAllText(configPath, config.ToJsonString())
            let error =
                try
                    (LlavaSession.Load dir).Dispose()
                    failtest "loading should fail: k_proj is [48, 96] in the file, the config implies [96, 96]"
                with :? InputError as e -> e
            let shard = Path.Combine(dir, "model-00001-of-00002.safetensors")
            Expect.equal (Path.GetFullPath error.File) (Path.GetFullPath shard) "the error names the shard holding the tensor"
            Expect.stringContains error.Message "language_model.model.layers.0.self_attn.k_proj.weight" "names the tensor"
            Expect.stringContains error.Message "[48, 96]" "gives the file's shape"
            Expect.stringContains error.Message "[96, 96]" "gives the shape the config implies"
            Expect.isFalse (error.Message.Contains '\n') "one line"
        }

        test "cli generate --dtype bf16 exits 0 and computes in bf16" {
            let run = Fixtures.runCli
            let json = Path.Combine(Fixtures.tempDir (), "out.json")
            let code, out, err =
                run [ "generate"; "--model"; Fixtures.tinyLlava; "--image"; probe; "--prompt"; question
                      "--max-new-tokens"; "3"; "--dtype"; "bf16"; "--json"; json ]
            Expect.equal code 0 $"exit 0 (stderr: {err})"
            let doc = JsonNode.Parse(File.ReadAllText json)
            Expect.equal (doc["text"].GetValue<string>()) (out.TrimEnd('\n')) "prints the answer it wrote"
            Expect.equal (doc["output_ids"].AsArray().Count) 3 "3 new tokens"
            let logits = doc["first_token_logits"].AsArray() |> Seq.map (fun x -> x.GetValue<float32>()) |> Array.ofSeq
            let reference = original.Value.FirstTokenLogits
            let d, scale = maxAbsDiff logits reference, maxAbs reference
            printfn "CLI bf16 compute: max |Δlogit| %g, max |logit| %g, ratio %g" d scale (d / scale)
            Expect.isGreaterThan d 0.0f "bf16 compute differs from fp32 (the flag reached the model)"
            Expect.isLessThan (d / scale) 0.15f $"max |Δlogit| {d} is under 0.15 of max |logit| {scale}"
        }
    ]
