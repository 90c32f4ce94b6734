using System;
using System.Linq;

namespace CleanSight.Core.Inference
{
    /// <summary>
    /// The paper's per-head statistic: attention of the query on the image tokens divided by its
    /// attention on the prompt text after the image. BOS and the text before the image (attention
    /// sinks) count in neither sum. Spans are derived from positions, never hard-coded.
    /// </summary>
    public static class AttentionRatio
    {
        /// <summary>Per head: (Σ over image positions, Σ over positions after the last image position).</summary>
        public static (double Visual, double Prompt)[] Sums(AttentionRow row, long firstImage, long lastImage)
        {
            var sums = new (double, double)[row.Heads];
            for (int h = 0; h < row.Heads; h++)
            {
                double visual = 0, prompt = 0;
                for (int j = 0; j < row.Keys; j++)
                {
                    long p = row.KeyPositions[j];
                    if (p >= firstImage && p <= lastImage) visual += row[h, j];
                    else if (p > lastImage) prompt += row[h, j];
                }
                sums[h] = (visual, prompt);
            }
            return sums;
        }

        /// <summary>S[h] = visual / prompt per head.</summary>
        public static double[] VisualToPrompt(AttentionRow row, long firstImage, long lastImage) =>
            Sums(row, firstImage, lastImage).Select(s => s.Visual / s.Prompt).ToArray();

        /// <summary>First and last image position in ids (the image block is contiguous).</summary>
        public static (long First, long Last) ImageSpan(long[] ids, long imageTokenId)
        {
            long first = Array.IndexOf(ids, imageTokenId), last = Array.LastIndexOf(ids, imageTokenId);
            if (first < 0) throw new ArgumentException("no image token in the ids");
            if (last - first + 1 != ids.Count(i => i == imageTokenId))
                throw new ArgumentException("the image tokens are not contiguous");
            return (first, last);
        }
    }
}
