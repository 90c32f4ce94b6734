/// The llava-1.5-7b and -13b module trees, built on the meta device (no memory), pinned in the
/// classic llava-hf key layout: every parameter name and shape, and the total parameter count.
module CleanSight.Tests.ModuleTreeTests

open System.Text.Json.Nodes
open Expecto
open TorchSharp
open CleanSight.Core.Checkpoints
open CleanSight.Core.Model

/// llava-hf/llava-1.5-{7b,13b}-hf config.json as shipped (image_seq_length absent: HF default).
let private configJson (hidden: int) (mlp: int) (layers: int) (heads: int) =
    $"""{{ "model_type": "llava", "image_token_index": 32000, "pad_token_id": 32001,
          "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
          "text_config": {{ "model_type": "llama", "hidden_size": {hidden}, "intermediate_size": {mlp},
                             "num_hidden_layers": {layers}, "num_attention_heads": {heads},
                             "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "vocab_size": 32064 }},
          "vision_config": {{ "model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                               "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                               "patch_size": 14, "projection_dim": 768, "vocab_size": 32000 }} }}"""

/// The expected tree, written out from HF's modeling code (not from ours).
let private expectedTree (hidden: int64) (mlp: int64) (layers: int) =
    let v, vmlp, vocab = 1024L, 4096L, 32064L
    [ yield "vision_tower.vision_model.embeddings.class_embedding", [ v ]
      yield "vision_tower.vision_model.embeddings.patch_embedding.weight", [ v; 3L; 14L; 14L ]
      yield "vision_tower.vision_model.embeddings.position_embedding.weight", [ 577L; v ]
      yield "vision_tower.vision_model.pre_layrnorm.weight", [ v ]
      yield "vision_tower.vision_model.pre_layrnorm.bias", [ v ]
      for i in 0 .. 23 do
          let p = $"vision_tower.vision_model.encoder.layers.{i}."
          for proj in [ "k_proj"; "v_proj"; "q_proj"; "out_proj" ] do
              yield p + $"self_attn.{proj}.weight", [ v; v ]
              yield p + $"self_attn.{proj}.bias", [ v ]
          yield p + "layer_norm1.weight", [ v ]
          yield p + "layer_norm1.bias", [ v ]
          yield p + "mlp.fc1.weight", [ vmlp; v ]
          yield p + "mlp.fc1.bias", [ vmlp ]
          yield p + "mlp.fc2.weight", [ v; vmlp ]
          yield p + "mlp.fc2.bias", [ v ]
          yield p + "layer_norm2.weight", [ v ]
          yield p + "layer_norm2.bias", [ v ]
      yield "vision_tower.vision_model.post_layernorm.weight", [ v ]
      yield "vision_tower.vision_model.post_layernorm.bias", [ v ]
      yield "multi_modal_projector.linear_1.weight", [ hidden; v ]
      yield "multi_modal_projector.linear_1.bias", [ hidden ]
      yield "multi_modal_projector.linear_2.weight", [ hidden; hidden ]
      yield "multi_modal_projector.linear_2.bias", [ hidden ]
      yield "language_model.model.embed_tokens.weight", [ vocab; hidden ]
      for i in 0 .. layers - 1 do
          let p = $"language_model.model.layers.{i}."
          for proj in [ "q_proj"; "k_proj"; "v_proj"; "o_proj" ] do
              yield p + $"self_attn.{proj}.weight", [ hidden; hidden ]
          yield p + "mlp.gate_proj.weight", [ mlp; hidden ]
          yield p + "mlp.up_proj.weight", [ mlp; hidden ]
          yield p + "mlp.down_proj.weight", [ hidden; mlp ]
          yield p + "input_layernorm.weight", [ hidden ]
          yield p + "post_attention_layernorm.weight", [ hidden ]
      yield "language_model.model.norm.weight", [ hidden ]
      yield "language_model.lm_head.weight", [ vocab; hidden ] ]
    |> Map.ofList

let private pin name hidden mlp layers heads (total: int64) =
    test $"{name}: parameter names and shapes" {
        let cfg = LlavaConfig.Parse(JsonNode.Parse(configJson hidden mlp layers heads).AsObject()).Validate()
        Expect.equal cfg.ImageSeqLength 576 "image_seq_length defaults to the 576 patches"
        use model = new LlavaForConditionalGeneration(cfg, torch.ScalarType.Float16, torch.device "meta")
        let ours = model.named_parameters() |> Seq.map (fun struct (n, p) -> n, List.ofArray p.shape) |> Map.ofSeq
        let expected = expectedTree (int64 hidden) (int64 mlp) layers
        let missing = expected |> Map.filter (fun k _ -> not (ours.ContainsKey k)) |> Map.keys |> List.ofSeq
        let extra = ours |> Map.filter (fun k _ -> not (expected.ContainsKey k)) |> Map.keys |> List.ofSeq
        Expect.isEmpty missing "parameters HF has and we lack"
        Expect.isEmpty extra "parameters we have and HF lacks"
        for KeyValue(k, shape) in expected do
            Expect.equal ours.[k] shape k
        let count = ours |> Map.toSeq |> Seq.sumBy (fun (_, s) -> List.fold (*) 1L s)
        Expect.equal count total "total parameters"
    }

[<Tests>]
let tests =
    testList "module tree (meta device)" [
        pin "llava-1.5-7b" 4096 11008 32 32 7_063_427_072L
        pin "llava-1.5-13b" 5120 13824 40 40 13_351_494_656L
    ]
