using CleanSight.Core.Checkpoints;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;
using static CleanSight.Core.Model.Primitives.TensorArithmetic;

namespace CleanSight.Core.Model.Clip
{
    /// <summary>Conv patch embedding (no bias) + prepended class embedding + learned positions.</summary>
    public sealed class ClipVisionEmbeddings : nn.Module<Tensor, Tensor>
    {
        readonly Parameter class_embedding;     // [D]
        readonly PatchEmbedding patch_embedding; // conv weight [D, C, P, P]
        readonly Primitives.Embedding position_embedding; // [N+1, D]
        readonly Tensor positionIds;

        public ClipVisionEmbeddings(ClipVisionConfig cfg, ScalarType dtype, Device device) : base(nameof(ClipVisionEmbeddings))
        {
            class_embedding = new Parameter(empty(new long[] { cfg.HiddenSize }, dtype, device), requires_grad: false);
            patch_embedding = new PatchEmbedding(cfg, dtype, device);
            position_embedding = new Primitives.Embedding(cfg.NumPositions, cfg.HiddenSize, dtype, device);
            RegisterComponents();
            positionIds = Arange(cfg.NumPositions, ScalarType.Int64, device).unsqueeze(0); // [1, N+1]
            register_buffer("position_ids", positionIds, persistent: false);
        }

        public override Tensor forward(Tensor pixels) // [B, C, H, W]
        {
            using var scope = NewDisposeScope();
            var patches = patch_embedding.forward(pixels);                    // [B, D, H/P, W/P]
            patches = patches.flatten(2).transpose(1, 2);                     // [B, N, D]
            var batch = pixels.shape[0];
            var cls = class_embedding.expand(batch, 1, -1);                   // [B, 1, D]
            var x = cat(new[] { cls, patches }, dim: 1);                      // [B, N+1, D]
            return Add(x, position_embedding.forward(positionIds)).MoveToOuterDisposeScope();
        }

        /// <summary>The conv stem; its own module so the key reads patch_embedding.weight.</summary>
        sealed class PatchEmbedding : nn.Module<Tensor, Tensor>
        {
            readonly Parameter weight; // [D, C, P, P]
            readonly long patch;

            public PatchEmbedding(ClipVisionConfig cfg, ScalarType dtype, Device device) : base(nameof(PatchEmbedding))
            {
                patch = cfg.PatchSize;
                weight = new Parameter(empty(new long[] { cfg.HiddenSize, cfg.NumChannels, cfg.PatchSize, cfg.PatchSize }, dtype, device), requires_grad: false);
                RegisterComponents();
            }

            public override Tensor forward(Tensor x) =>
                nn.functional.conv2d(x, weight, null, strides: new[] { patch, patch });
        }
    }
}
