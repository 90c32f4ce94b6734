using System;
using System.Collections.Generic;
using System.Linq;

namespace CleanSight.Core.Text
{
    /// <summary>
    /// A llava-1.5 prompt as model input: the templated text, its token ids with the image
    /// placeholder expanded to <c>imageSeqLength</c> image tokens, and where those image tokens sit.
    ///
    /// The templated prompt is split on <c>&lt;image&gt;</c>; each text piece is SentencePiece-encoded
    /// on its own (so each gets the "▁" dummy prefix; BOS only on the first) and the pieces are joined
    /// with the image tokens. For the default template this gives HF's ids
    /// <c>&lt;s&gt; ▁US ER : ▁ &lt;image&gt;×n ▁ &lt;0x0A&gt; {question…} ▁A SS IST ANT :</c>.
    /// </summary>
    public sealed class LlavaPrompt
    {
        /// <summary>The llava-1.5 conversation template.</summary>
        public const string DefaultTemplate = "USER: <image>\n{question} ASSISTANT:";

        /// <summary>Where the image features go in the template.</summary>
        public const string ImagePlaceholder = "<image>";

        /// <summary>Where the question goes in the template.</summary>
        public const string QuestionPlaceholder = "{question}";

        /// <summary>The templated prompt text (still with its one <c>&lt;image&gt;</c>).</summary>
        public string Text { get; }

        /// <summary>Token ids: BOS, the text pieces and <see cref="ImageTokenCount"/> image tokens.</summary>
        public int[] InputIds { get; }

        /// <summary>Indices into <see cref="InputIds"/> of the image tokens, ascending.</summary>
        public int[] ImagePositions { get; }

        /// <summary>The image token id used.</summary>
        public int ImageTokenId { get; }

        public int ImageTokenCount => ImagePositions.Length;

        private LlavaPrompt(string text, int[] inputIds, int imageTokenId)
        {
            Text = text;
            InputIds = inputIds;
            ImageTokenId = imageTokenId;
            ImagePositions = ImagePositionsOf(inputIds, imageTokenId);
        }

        /// <summary>The template with the question filled in; checks there is exactly one <c>&lt;image&gt;</c>.</summary>
        public static string Format(string question, string template = DefaultTemplate)
        {
            if (question == null)
                throw new ArgumentNullException(nameof(question));
            if (template == null)
                throw new ArgumentNullException(nameof(template));
            if (!template.Contains(QuestionPlaceholder, StringComparison.Ordinal))
                throw new ArgumentException($"prompt template must contain {QuestionPlaceholder}: \"{template}\"", nameof(template));

            string text = template.Replace(QuestionPlaceholder, question, StringComparison.Ordinal);
            int found = CountOccurrences(text, ImagePlaceholder);
            if (found != 1)
                throw new ArgumentException(
                    $"prompt must contain exactly one {ImagePlaceholder}, found {found}",
                    CountOccurrences(template, ImagePlaceholder) == 1 ? nameof(question) : nameof(template));
            return text;
        }

        /// <summary>
        /// Builds the input ids of a question.
        /// </summary>
        /// <param name="tokenizer">The checkpoint's tokenizer.</param>
        /// <param name="question">The user's question; must not contain <c>&lt;image&gt;</c>.</param>
        /// <param name="imageSeqLength">Image tokens per image (config <c>image_seq_length</c>, 576 for llava-1.5).</param>
        /// <param name="imageTokenId">The config's <c>image_token_index</c>.</param>
        /// <param name="template">The conversation template, with one <c>&lt;image&gt;</c> and one <c>{question}</c>.</param>
        public static LlavaPrompt Build(
            LlavaTokenizer tokenizer, string question, int imageSeqLength, int imageTokenId,
            string template = DefaultTemplate)
        {
            if (tokenizer == null)
                throw new ArgumentNullException(nameof(tokenizer));
            if (imageSeqLength < 1)
                throw new ArgumentOutOfRangeException(nameof(imageSeqLength), imageSeqLength, "image_seq_length must be at least 1");

            string text = Format(question, template);
            string[] pieces = text.Split(ImagePlaceholder, StringSplitOptions.None);

            var ids = new List<int>();
            ids.AddRange(tokenizer.Encode(pieces[0], addBos: true));
            ids.AddRange(Enumerable.Repeat(imageTokenId, imageSeqLength));
            ids.AddRange(tokenizer.Encode(pieces[1], addBos: false));
            var prompt = new LlavaPrompt(text, ids.ToArray(), imageTokenId);
            if (prompt.ImageTokenCount != imageSeqLength)
                throw new ArgumentException(
                    $"image token id {imageTokenId} also occurs in the encoded text; it must not be a text piece id",
                    nameof(imageTokenId));
            return prompt;
        }

        /// <summary>Builds with the tokenizer's own image token id.</summary>
        public static LlavaPrompt Build(LlavaTokenizer tokenizer, string question, int imageSeqLength) =>
            Build(tokenizer, question, imageSeqLength, tokenizer?.ImageTokenId ?? throw new ArgumentNullException(nameof(tokenizer)));

        /// <summary>Indices of <paramref name="imageTokenId"/> in <paramref name="ids"/>.</summary>
        public static int[] ImagePositionsOf(IReadOnlyList<int> ids, int imageTokenId)
        {
            var positions = new List<int>();
            for (int i = 0; i < ids.Count; i++)
                if (ids[i] == imageTokenId)
                    positions.Add(i);
            return positions.ToArray();
        }

        private static int CountOccurrences(string text, string value)
        {
            int count = 0;
            for (int at = text.IndexOf(value, StringComparison.Ordinal); at >= 0;
                 at = text.IndexOf(value, at + value.Length, StringComparison.Ordinal))
                count++;
            return count;
        }
    }
}
