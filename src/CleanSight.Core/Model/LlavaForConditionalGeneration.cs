using System;
using System.Linq;
using CleanSight.Core.Checkpoints;
using CleanSight.Core.Inference;
using CleanSight.Core.Model.Clip;
using CleanSight.Core.Model.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Model
{
    /// <summary>
    /// LLaVA: CLIP vision tower → chosen hidden state(s) → projector → features written at the
    /// image-token positions → LLaMA decoder. Field names are the classic llava-hf checkpoint keys.
    /// The model knows nothing of defenses: an <see cref="IAttentionPolicy"/> is its one seam.
    /// </summary>
    public sealed class LlavaForConditionalGeneration : nn.Module
    {
        readonly ClipVisionTower vision_tower;
        readonly MultiModalProjector multi_modal_projector;
        readonly LlamaForCausalLM language_model;

        public LlavaForConditionalGeneration(LlavaConfig cfg, ScalarType dtype, Device device) : base(nameof(LlavaForConditionalGeneration))
        {
            Config = cfg;
            Dtype = dtype;
            Device = device;
            vision_tower = new ClipVisionTower(cfg.Vision, dtype, device);
            multi_modal_projector = new MultiModalProjector(cfg, dtype, device);
            language_model = new LlamaForCausalLM(cfg.Text, dtype, device);
            RegisterComponents();
        }

        public LlavaConfig Config { get; }
        public ScalarType Dtype { get; }
        public Device Device { get; }
        public LlamaForCausalLM LanguageModel => language_model;
        public ClipVisionTower VisionTower => vision_tower;
        public MultiModalProjector Projector => multi_modal_projector;

        /// <summary>pixels [B, 3, H, W] → projected image features [B, N, Dt].</summary>
        public Tensor ImageFeatures(Tensor pixels)
        {
            using var scope = NewDisposeScope();
            return multi_modal_projector.forward(VisionFeatures(pixels)).MoveToOuterDisposeScope(); // [B, N, Dt]
        }

        /// <summary>pixels [B, 3, H, W] → the selected vision hidden states, before the projector: [B, N, Dv·k].</summary>
        public Tensor VisionFeatures(Tensor pixels)
        {
            using var scope = NewDisposeScope();
            var selected = vision_tower.HiddenStates(pixels.to(Dtype, Device), Config.VisionHiddenStateIndices) // k × [B, N+1, Dv]
                .Select(h => Config.SelectStrategy == VisionFeatureSelectStrategy.Default ? h.narrow(1, 1, h.shape[1] - 1) : h)
                .ToArray();
            return (selected.Length == 1 ? selected[0] : cat(selected, -1)).MoveToOuterDisposeScope();
        }

        /// <summary>Token embeddings with the image features written at the image-token positions: [B, T, Dt].</summary>
        public Tensor Embed(Tensor ids, Tensor imageFeatures)
        {
            using var scope = NewDisposeScope();
            var embeds = language_model.Embed(ids);                                 // [B, T, Dt]
            using Scalar imageToken = Config.ImageTokenIndex;                       // explicit: see TensorArithmetic
            var isImage = ids.eq(imageToken);                                       // [B, T]
            long tokens = isImage.sum().item<long>();
            long features = imageFeatures.shape[0] * imageFeatures.shape[1];
            if (tokens != features)
                throw new InvalidOperationException($"image tokens and image features do not match: tokens {tokens}, features {features}");
            var mask = isImage.unsqueeze(-1).expand_as(embeds);
            return embeds.masked_scatter(mask, imageFeatures.to(embeds.dtype)).MoveToOuterDisposeScope();
        }

        /// <summary>
        /// The prefill of one prompt (batch 1): ids [T] with the image tokens expanded, pixels
        /// [3, H, W]. Fills a new KV cache and returns it with the logits of the token after the prompt.
        /// </summary>
        public Prefilled Prefill(long[] ids, Tensor pixels, IAttentionPolicy policy = null, ExclusionMode mode = ExclusionMode.Drop)
        {
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            var idTensor = tensor(ids, device: Device).unsqueeze(0);                // [1, T]
            var embeds = Embed(idTensor, ImageFeatures(pixels.unsqueeze(0)));       // [1, T, Dt]
            var cache = new KvCache(language_model.NumLayers);
            using var state = new SequenceState(embeds, mode);
            var logits = language_model.Prefill(state, policy ?? NoPolicy.Instance, cache);
            return new Prefilled(logits.squeeze(0).to(ScalarType.Float32).cpu().data<float>().ToArray(), cache, ids.Length);
        }

        /// <summary>One greedy decode step for a token at an absolute position; logits [V].</summary>
        public float[] Decode(long token, long position, KvCache cache)
        {
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            var logits = language_model.Decode(tensor(new[] { token }, device: Device).unsqueeze(0), position, cache);
            return logits.squeeze(0).to(ScalarType.Float32).cpu().data<float>().ToArray();
        }
    }

    /// <summary>What a prefill leaves: the next-token logits, the cache, the prompt length.</summary>
    public sealed record Prefilled(float[] Logits, KvCache Cache, long PromptLength);
}
