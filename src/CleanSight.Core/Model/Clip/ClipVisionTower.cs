using System.Collections.Generic;
using System.Linq;
using CleanSight.Core.Checkpoints;
using CleanSight.Core.Model.Primitives;
using TorchSharp;
using TorchSharp.Modules;
using LayerNorm = CleanSight.Core.Model.Primitives.LayerNorm;
using Linear = CleanSight.Core.Model.Primitives.Linear;
using static TorchSharp.torch;

namespace CleanSight.Core.Model.Clip
{
    /// <summary>
    /// CLIP vision tower in HF's key layout: vision_tower.vision_model.{embeddings, pre_layrnorm,
    /// encoder.layers.N, post_layernorm}. LLaVA reads a hidden state, never post_layernorm.
    /// </summary>
    public sealed class ClipVisionTower : nn.Module
    {
        readonly ClipVisionTransformer vision_model;

        public ClipVisionTower(ClipVisionConfig cfg, ScalarType dtype, Device device) : base(nameof(ClipVisionTower))
        {
            vision_model = new ClipVisionTransformer(cfg, dtype, device);
            RegisterComponents();
        }

        /// <summary>
        /// Hidden states [embeddings after pre_layrnorm, layer 1, …, layer N] at the requested indices,
        /// each [B, N+1, D], computing only the layers needed.
        /// </summary>
        public Tensor[] HiddenStates(Tensor pixels, IReadOnlyList<int> indices) => vision_model.HiddenStates(pixels, indices);

        sealed class ClipVisionTransformer : nn.Module
        {
            readonly ClipVisionEmbeddings embeddings;
            readonly LayerNorm pre_layrnorm; // (sic) the HF key
            readonly ClipEncoder encoder;
            readonly LayerNorm post_layernorm;

            public ClipVisionTransformer(ClipVisionConfig cfg, ScalarType dtype, Device device) : base(nameof(ClipVisionTransformer))
            {
                embeddings = new ClipVisionEmbeddings(cfg, dtype, device);
                pre_layrnorm = new LayerNorm(cfg.HiddenSize, cfg.LayerNormEps, dtype, device);
                encoder = new ClipEncoder(cfg, dtype, device);
                post_layernorm = new LayerNorm(cfg.HiddenSize, cfg.LayerNormEps, dtype, device);
                RegisterComponents();
            }

            public Tensor[] HiddenStates(Tensor pixels, IReadOnlyList<int> indices)
            {
                var wanted = new Tensor[indices.Count];
                var x = pre_layrnorm.forward(embeddings.forward(pixels)); // [B, N+1, D] = hidden state 0
                int last = indices.Max();
                for (int i = 0; ; i++)
                {
                    for (int k = 0; k < indices.Count; k++) if (indices[k] == i) wanted[k] = x;
                    if (i == last) break;
                    x = encoder.layers[i].call(x);
                }
                return wanted;
            }
        }

        sealed class ClipEncoder : nn.Module
        {
            internal readonly ModuleList<ClipEncoderLayer> layers;

            public ClipEncoder(ClipVisionConfig cfg, ScalarType dtype, Device device) : base(nameof(ClipEncoder))
            {
                layers = new ModuleList<ClipEncoderLayer>(
                    Enumerable.Range(0, cfg.NumHiddenLayers).Select(_ => new ClipEncoderLayer(cfg, dtype, device)).ToArray());
                RegisterComponents();
            }
        }
    }
}
