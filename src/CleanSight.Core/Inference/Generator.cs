using System.Collections.Generic;
using System.Linq;
using CleanSight.Core.Model;
using static TorchSharp.torch;

namespace CleanSight.Core.Inference
{
    /// <summary>The outcome of one greedy generation.</summary>
    public sealed record Generation(float[] FirstTokenLogits, long[] OutputIds);

    /// <summary>Greedy decoding with a KV cache, stopping at EOS or after a token budget.</summary>
    public static class Generator
    {
        public static Generation Greedy(LlavaForConditionalGeneration model, long[] ids, Tensor pixels, int maxNewTokens,
            IAttentionPolicy policy = null, ExclusionMode mode = ExclusionMode.Drop)
        {
            var eos = model.Config.Text.EosTokenIds.Select(e => (long)e).ToHashSet();
            var prefilled = model.Prefill(ids, pixels, policy, mode);
            using var cache = prefilled.Cache;
            var output = new List<long>();
            var logits = prefilled.Logits;
            long position = prefilled.PromptLength;
            while (output.Count < maxNewTokens)
            {
                long next = ArgMax(logits);
                output.Add(next);
                if (eos.Contains(next) || output.Count == maxNewTokens) break;
                logits = model.Decode(next, position++, cache);
            }
            return new Generation(prefilled.Logits, output.ToArray());
        }

        /// <summary>Index of the largest logit; the first on ties (as torch.argmax).</summary>
        public static long ArgMax(float[] logits)
        {
            int best = 0;
            for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
            return best;
        }
    }
}
