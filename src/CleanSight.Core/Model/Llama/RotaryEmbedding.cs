using CleanSight.Core.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;
using static CleanSight.Core.Model.Primitives.TensorArithmetic;

namespace CleanSight.Core.Model.Llama
{
    /// <summary>
    /// RoPE in HF's rotate_half layout: x·cos + rotate_half(x)·sin with angles pos·θ^(−2i/d),
    /// computed in fp32 and cast to the activations' dtype. Not a module: nothing to load.
    /// </summary>
    public sealed class RotaryEmbedding
    {
        readonly Tensor invFreq; // [d/2] fp32

        public RotaryEmbedding(LlamaConfig cfg, Device device)
        {
            // 1 / θ^(arange(0, d, 2) / d), as HF computes it, with a held Scalar (see TensorArithmetic)
            using Scalar d = cfg.HeadDim;
            using var theta = tensor(cfg.RopeTheta);                                  // 0-dim f64
            var exponents = Arange(0, cfg.HeadDim, 2, ScalarType.Int64, device).to(ScalarType.Float32).div(d);
            invFreq = pow(theta, exponents).reciprocal().to(ScalarType.Float32).DetachFromDisposeScope();
        }

        /// <summary>cos and sin for absolute positions [T] → each [1, 1, T, d].</summary>
        public (Tensor cos, Tensor sin) At(Tensor positions, ScalarType dtype)
        {
            var freqs = positions.to(ScalarType.Float32).unsqueeze(1) * invFreq.unsqueeze(0); // [T, d/2]
            var emb = cat(new[] { freqs, freqs }, -1);                                          // [T, d]
            return (emb.cos().to(dtype).unsqueeze(0).unsqueeze(0), emb.sin().to(dtype).unsqueeze(0).unsqueeze(0));
        }

        /// <summary>Applies the rotation to x [B, H, T, d].</summary>
        public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
        {
            long half = x.shape[3] / 2;
            var x1 = x.narrow(3, 0, half);
            var x2 = x.narrow(3, half, half);
            var rotated = cat(new[] { -x2, x1 }, 3);
            return Add(x * cos, rotated * sin);
        }
    }
}
