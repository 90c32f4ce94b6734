using System.Linq;
using CleanSight.Core.Checkpoints;
using CleanSight.Core.Inference;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using TorchSharp.Modules;
using LayerNorm = CleanSight.Core.Model.Primitives.LayerNorm;
using Linear = CleanSight.Core.Model.Primitives.Linear;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Llama
{
    /// <summary>
    /// The language model in HF's classic key layout: language_model.{model.{embed_tokens, layers.N,
    /// norm}, lm_head}. With tied embeddings there is no lm_head: logits use embed_tokens.weight.
    /// </summary>
    public sealed class LlamaForCausalLM : nn.Module
    {
        readonly LlamaModel model;
        readonly Linear lm_head;
        readonly RotaryEmbedding rope;

        public LlamaForCausalLM(LlamaConfig cfg, ScalarType dtype, Device device) : base(nameof(LlamaForCausalLM))
        {
            Config = cfg;
            model = new LlamaModel(cfg, dtype, device);
            if (!cfg.TieWordEmbeddings) lm_head = new Linear(cfg.HiddenSize, cfg.VocabSize, false, dtype, device);
            RegisterComponents();
            rope = new RotaryEmbedding(cfg, device);
        }

        public LlamaConfig Config { get; }
        public int NumLayers => model.layers.Count;

        /// <summary>ids [B, T] → embeddings [B, T, D]</summary>
        public Tensor Embed(Tensor ids) => model.embed_tokens.forward(ids);

        /// <summary>
        /// Runs every decoder layer over the state (batch 1), asking the policy at each, filling the
        /// cache; returns the logits of the last row [1, V] (the token after the prompt).
        /// </summary>
        public Tensor Prefill(SequenceState state, IAttentionPolicy policy, KvCache cache)
        {
            for (int layer = 0; layer < model.layers.Count; layer++)
                model.layers[layer].Prefill(state, layer, policy, cache, rope);
            var last = state.Hidden.narrow(1, state.Length - 1, 1);   // [1, 1, D]
            return Logits(model.norm.forward(last)).squeeze(1);       // [1, V]
        }

        /// <summary>One decode step for token ids [1, 1] at an absolute position → logits [1, V].</summary>
        public Tensor Decode(Tensor ids, long position, KvCache cache)
        {
            using var scope = NewDisposeScope();
            var pos = tensor(new[] { position }, device: ids.device);
            var h = Embed(ids);
            for (int layer = 0; layer < model.layers.Count; layer++)
                h = model.layers[layer].Decode(h, pos, layer, cache, rope);
            return Logits(model.norm.forward(h)).squeeze(1).MoveToOuterDisposeScope();
        }

        /// <summary>Full causal forward over a batch of embeddings [B, T, D] → logits [B, T, V] (training).</summary>
        public Tensor Forward(Tensor embeddings) => Logits(FinalHidden(embeddings));

        /// <summary>Full causal forward → final normed hidden states [B, T, D] (before lm_head).</summary>
        public Tensor FinalHidden(Tensor embeddings)
        {
            var positions = TensorArithmetic.Arange(embeddings.shape[1], ScalarType.Int64, embeddings.device);
            var (cos, sin) = rope.At(positions, embeddings.dtype);
            var h = embeddings;
            foreach (var layer in model.layers) h = layer.Forward(h, cos, sin);
            return model.norm.forward(h);
        }

        /// <summary>Token embedding matrix [V, D].</summary>
        public Tensor EmbeddingMatrix => model.embed_tokens.Weight;

        /// <summary>lm_head over final hidden states: [.., D] → [.., V].</summary>
        public Tensor Logits(Tensor h) => lm_head is null ? nn.functional.linear(h, model.embed_tokens.Weight) : lm_head.forward(h);

        sealed class LlamaModel : nn.Module
        {
            internal readonly Primitives.Embedding embed_tokens;
            internal readonly ModuleList<LlamaDecoderLayer> layers;
            internal readonly RmsNorm norm;

            public LlamaModel(LlamaConfig cfg, ScalarType dtype, Device device) : base(nameof(LlamaModel))
            {
                embed_tokens = new Primitives.Embedding(cfg.VocabSize, cfg.HiddenSize, dtype, device);
                layers = new ModuleList<LlamaDecoderLayer>(
                    Enumerable.Range(0, cfg.NumHiddenLayers).Select(_ => new LlamaDecoderLayer(cfg, dtype, device)).ToArray());
                norm = new RmsNorm(cfg.HiddenSize, cfg.RmsNormEps, dtype, device);
                RegisterComponents();
            }
        }
    }
}
