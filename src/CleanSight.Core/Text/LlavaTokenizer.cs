using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace CleanSight.Core.Text
{
    /// <summary>
    /// The tokenizer of a llava-hf checkpoint: the SentencePiece BPE model in <c>tokenizer.model</c>
    /// (read with Microsoft.ML.Tokenizers) plus the added tokens of <c>tokenizer_config.json</c>
    /// (<c>added_tokens_decoder</c>, e.g. <c>&lt;image&gt;</c> and <c>&lt;pad&gt;</c>) and the token roles of
    /// <c>special_tokens_map.json</c>.
    ///
    /// <see cref="Encode"/> is plain SentencePiece encoding of one piece of text (dummy "▁" prefix,
    /// spaces as "▁", byte fallback); it never parses added or special tokens out of the text —
    /// <see cref="LlavaPrompt"/> places the image tokens itself. <see cref="Decode"/> reproduces
    /// HF <c>tokenizer.decode(ids, skip_special_tokens)</c> of the llama fast tokenizer.
    /// The fast-tokenizer file <c>tokenizer.json</c> is not read.
    /// </summary>
    public sealed class LlavaTokenizer
    {
        public const string ModelFileName = "tokenizer.model";
        public const string ConfigFileName = "tokenizer_config.json";
        public const string SpecialTokensMapFileName = "special_tokens_map.json";
        public const string DefaultImageToken = "<image>";

        /// <summary>What an id beyond (or overriding) the SentencePiece vocabulary stands for.</summary>
        private readonly struct AddedToken
        {
            public AddedToken(string content, bool special)
            {
                Content = content;
                Special = special;
            }

            public string Content { get; }
            public bool Special { get; }
        }

        private readonly SentencePieceTokenizer _sentencePiece;
        private readonly string[] _pieces;
        private readonly Dictionary<int, AddedToken> _added;
        private readonly HashSet<int> _specialIds;
        private readonly bool _cleanUpTokenizationSpaces;

        /// <summary>Id of the beginning-of-sentence token (<c>&lt;s&gt;</c>).</summary>
        public int BosId { get; }

        /// <summary>Id of the end-of-sentence token (<c>&lt;/s&gt;</c>).</summary>
        public int EosId { get; }

        /// <summary>Id of the unknown token (<c>&lt;unk&gt;</c>).</summary>
        public int UnkId { get; }

        /// <summary>Id of the padding token, or null when the checkpoint defines none.</summary>
        public int? PadId { get; }

        /// <summary>Id that stands for one image feature in a prompt (<c>&lt;image&gt;</c>).</summary>
        public int ImageTokenId { get; }

        /// <summary>Number of pieces in the SentencePiece model (HF <c>tokenizer.vocab_size</c>).</summary>
        public int SentencePieceVocabSize => _pieces.Length;

        /// <summary>
        /// Number of ids this tokenizer knows: the SentencePiece pieces plus the added tokens beyond
        /// them (HF <c>len(tokenizer)</c>). The model's embedding table may be larger (padded).
        /// </summary>
        public int VocabSize { get; }

        private LlavaTokenizer(
            SentencePieceTokenizer sentencePiece,
            Dictionary<int, AddedToken> added,
            int bosId, int eosId, int unkId, int? padId, int imageTokenId,
            bool cleanUpTokenizationSpaces)
        {
            _sentencePiece = sentencePiece;
            _pieces = new string[sentencePiece.Vocabulary.Count];
            foreach (var kv in sentencePiece.Vocabulary)
                _pieces[kv.Value] = kv.Key;
            _added = added;
            _cleanUpTokenizationSpaces = cleanUpTokenizationSpaces;
            BosId = bosId;
            EosId = eosId;
            UnkId = unkId;
            PadId = padId;
            ImageTokenId = imageTokenId;

            _specialIds = new HashSet<int>(added.Where(kv => kv.Value.Special).Select(kv => kv.Key))
            {
                bosId, eosId, unkId, imageTokenId,
            };
            if (padId.HasValue)
                _specialIds.Add(padId.Value);

            int maxId = Math.Max(_pieces.Length - 1, added.Count == 0 ? -1 : added.Keys.Max());
            VocabSize = Math.Max(maxId, imageTokenId) + 1;
        }

        /// <summary>
        /// Loads the tokenizer of a llava-hf checkpoint folder: <c>tokenizer.model</c> (required),
        /// <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c> (optional).
        /// </summary>
        /// <param name="checkpointDir">The checkpoint folder.</param>
        /// <param name="imageTokenId">
        /// The config's <c>image_token_index</c>; it wins over the <c>&lt;image&gt;</c> added token.
        /// Required when the folder has no <c>tokenizer_config.json</c> declaring <c>&lt;image&gt;</c>.
        /// </param>
        public static LlavaTokenizer Load(string checkpointDir, int? imageTokenId = null)
        {
            if (!Directory.Exists(checkpointDir))
                throw new InputError(checkpointDir, "checkpoint folder not found");

            string modelPath = Path.Combine(checkpointDir, ModelFileName);
            if (!File.Exists(modelPath))
            {
                string problem = File.Exists(Path.Combine(checkpointDir, "tokenizer.json"))
                    ? "missing: the folder has only tokenizer.json (a fast-tokenizer file, not read here); "
                      + "add the SentencePiece tokenizer.model of the checkpoint"
                    : "missing: the folder has no SentencePiece tokenizer model";
                throw new InputError(modelPath, problem);
            }

            SentencePieceTokenizer sentencePiece = ReadModel(modelPath);

            string configPath = Path.Combine(checkpointDir, ConfigFileName);
            string mapPath = Path.Combine(checkpointDir, SpecialTokensMapFileName);
            JsonElement? config = File.Exists(configPath) ? ReadJsonObject(configPath) : null;
            JsonElement? map = File.Exists(mapPath) ? ReadJsonObject(mapPath) : null;

            var added = config.HasValue
                ? ReadAddedTokens(configPath, config.Value)
                : new Dictionary<int, AddedToken>();

            int IdOfRole(string role, int fallback)
            {
                string content = TokenContent(mapPath, map, role) ?? TokenContent(configPath, config, role);
                if (content == null)
                    return fallback;
                int? id = FindId(sentencePiece, added, content);
                if (id == null)
                {
                    string file = TokenContent(mapPath, map, role) != null ? mapPath : configPath;
                    throw new InputError(file, $"{role} \"{content}\" is neither an added token nor a piece of {ModelFileName}");
                }
                return id.Value;
            }

            int bosId = IdOfRole("bos_token", sentencePiece.BeginningOfSentenceId);
            int eosId = IdOfRole("eos_token", sentencePiece.EndOfSentenceId);
            int unkId = IdOfRole("unk_token", sentencePiece.UnknownId);
            int padIdOrMinus = IdOfRole("pad_token", -1);
            int? padId = padIdOrMinus >= 0 ? padIdOrMinus : (int?)null;

            int imageId;
            if (imageTokenId.HasValue)
            {
                imageId = imageTokenId.Value;
            }
            else
            {
                string imageContent = TokenContent(mapPath, map, "image_token")
                                      ?? TokenContent(configPath, config, "image_token")
                                      ?? DefaultImageToken;
                var found = added.Where(kv => kv.Value.Content == imageContent).Select(kv => (int?)kv.Key).FirstOrDefault();
                if (found == null)
                    throw new InputError(
                        config.HasValue ? configPath : Path.Combine(checkpointDir, ConfigFileName),
                        (config.HasValue ? $"added_tokens_decoder has no \"{imageContent}\" token" : "missing")
                        + "; pass the image token id (config.json image_token_index)");
                imageId = found.Value;
            }
            EnsureImageToken(added, imageId);

            bool cleanUp = config.HasValue
                           && config.Value.TryGetProperty("clean_up_tokenization_spaces", out var c)
                           && c.ValueKind == JsonValueKind.True;

            return new LlavaTokenizer(sentencePiece, added, bosId, eosId, unkId, padId, imageId, cleanUp);
        }

        /// <summary>
        /// Loads a bare SentencePiece <c>tokenizer.model</c> (no config files): BOS/EOS/UNK come from
        /// the model, there is no pad token, and <paramref name="imageTokenId"/> is the image token
        /// (e.g. 32000 for LLaVA-1.5 on the LLaMA tokenizer).
        /// </summary>
        public static LlavaTokenizer FromModelFile(string tokenizerModelPath, int imageTokenId)
        {
            if (!File.Exists(tokenizerModelPath))
                throw new InputError(tokenizerModelPath, "tokenizer model not found");
            SentencePieceTokenizer sentencePiece = ReadModel(tokenizerModelPath);
            var added = new Dictionary<int, AddedToken>();
            EnsureImageToken(added, imageTokenId);
            return new LlavaTokenizer(
                sentencePiece, added,
                sentencePiece.BeginningOfSentenceId, sentencePiece.EndOfSentenceId, sentencePiece.UnknownId,
                padId: null, imageTokenId, cleanUpTokenizationSpaces: false);
        }

        /// <summary>
        /// SentencePiece encoding of one piece of text: "▁" dummy prefix, spaces as "▁", byte
        /// fallback for characters outside the vocabulary; BOS first when <paramref name="addBos"/>.
        /// Added and special tokens written in the text are encoded as ordinary text.
        /// </summary>
        public int[] Encode(string text, bool addBos)
        {
            if (text == null)
                throw new ArgumentNullException(nameof(text));
            var ids = _sentencePiece.EncodeToIds(
                text, addBeginningOfSentence: false, addEndOfSentence: false,
                considerPreTokenization: true, considerNormalization: true);
            if (!addBos)
                return ids.ToArray();
            var withBos = new int[ids.Count + 1];
            withBos[0] = BosId;
            for (int i = 0; i < ids.Count; i++)
                withBos[i + 1] = ids[i];
            return withBos;
        }

        /// <summary>True for the ids HF's <c>skip_special_tokens=True</c> drops (BOS, EOS, UNK, pad, image, other special added tokens).</summary>
        public bool IsSpecial(int id) => _specialIds.Contains(id);

        /// <summary>The token string of an id: the added token's content, else the SentencePiece piece.</summary>
        public string IdToToken(int id)
        {
            if (_added.TryGetValue(id, out var addedToken))
                return addedToken.Content;
            if (id >= 0 && id < _pieces.Length)
                return _pieces[id];
            throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary (0..{VocabSize - 1})");
        }

        /// <summary>
        /// HF <c>tokenizer.decode(ids, skip_special_tokens)</c> for the llama fast tokenizer: the
        /// decoder chain Replace("▁", " ") → ByteFallback (<c>&lt;0x0A&gt;</c>… to bytes, invalid UTF-8
        /// as one U+FFFD per byte) → Fuse → Strip one leading space; then HF's
        /// <c>clean_up_tokenization</c> when the config enables it.
        /// </summary>
        public string Decode(IEnumerable<int> ids, bool skipSpecial = true)
        {
            if (ids == null)
                throw new ArgumentNullException(nameof(ids));

            var text = new StringBuilder();
            var pendingBytes = new List<byte>();
            foreach (int id in ids)
            {
                if (skipSpecial && IsSpecial(id))
                    continue;
                // An id past the tokenizer (the model's padded vocabulary rows) has no text: HF's fast
                // tokenizer drops it the same way.
                if (!_added.ContainsKey(id) && (id < 0 || id >= _pieces.Length))
                    continue;
                string token = IdToToken(id);
                if (TryParseByteToken(token, out byte b))
                {
                    pendingBytes.Add(b);
                    continue;
                }
                FlushBytes(pendingBytes, text);
                text.Append(token.Replace('\u2581', ' '));
            }
            FlushBytes(pendingBytes, text);

            if (text.Length > 0 && text[0] == ' ')
                text.Remove(0, 1);
            string decoded = text.ToString();
            return _cleanUpTokenizationSpaces ? CleanUpTokenization(decoded) : decoded;
        }

        // ---- decoding helpers ------------------------------------------------------------------

        /// <summary>A byte-fallback piece is exactly "&lt;0xHH&gt;".</summary>
        private static bool TryParseByteToken(string token, out byte value)
        {
            value = 0;
            return token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
                   && byte.TryParse(token.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out value);
        }

        private static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, throwOnInvalidBytes: true);

        /// <summary>Like HF's ByteFallback decoder: a run of bytes that is not valid UTF-8 becomes one U+FFFD per byte.</summary>
        private static void FlushBytes(List<byte> bytes, StringBuilder text)
        {
            if (bytes.Count == 0)
                return;
            try
            {
                text.Append(StrictUtf8.GetString(bytes.ToArray()));
            }
            catch (DecoderFallbackException)
            {
                text.Append('\uFFFD', bytes.Count);
            }
            bytes.Clear();
        }

        /// <summary>HF <c>PreTrainedTokenizerBase.clean_up_tokenization</c>.</summary>
        private static string CleanUpTokenization(string text) =>
            text.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",")
                .Replace(" ' ", "'").Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s")
                .Replace(" 've", "'ve").Replace(" 're", "'re");

        // ---- loading helpers -------------------------------------------------------------------

        private static SentencePieceTokenizer ReadModel(string modelPath)
        {
            if (new FileInfo(modelPath).Length == 0)
                throw new InputError(modelPath, "empty file; expected a SentencePiece model");

            SentencePieceTokenizer model;
            try
            {
                using var stream = File.OpenRead(modelPath);
                model = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false, specialTokens: null);
            }
            catch (Exception e) when (e is not InputError)
            {
                throw new InputError(modelPath, $"not a readable SentencePiece BPE model ({e.GetType().Name}: {e.Message})", e);
            }

            int count = model.Vocabulary?.Count ?? 0;
            if (count == 0)
                throw new InputError(modelPath, "not a SentencePiece model: it has no pieces");
            if (model.Vocabulary.Values.Any(id => id < 0 || id >= count))
                throw new InputError(modelPath, "not a SentencePiece model: piece ids are not 0..n-1");
            foreach (int id in new[] { model.BeginningOfSentenceId, model.EndOfSentenceId, model.UnknownId })
                if (id < 0 || id >= count)
                    throw new InputError(modelPath, $"not a usable SentencePiece model: special id {id} is outside its {count} pieces");
            return model;
        }

        private static JsonElement ReadJsonObject(string path)
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(path));
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                    throw new InputError(path, "expected a JSON object");
                return doc.RootElement.Clone();
            }
            catch (JsonException e)
            {
                throw new InputError(path, $"not valid JSON ({e.Message})", e);
            }
        }

        /// <summary><c>added_tokens_decoder</c>: { "id": { "content": "...", "special": bool, ... } }.</summary>
        private static Dictionary<int, AddedToken> ReadAddedTokens(string configPath, JsonElement config)
        {
            var added = new Dictionary<int, AddedToken>();
            if (!config.TryGetProperty("added_tokens_decoder", out var decoder))
                return added;
            if (decoder.ValueKind != JsonValueKind.Object)
                throw new InputError(configPath, "added_tokens_decoder must be an object of id -> token");

            foreach (var entry in decoder.EnumerateObject())
            {
                if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                    throw new InputError(configPath, $"added_tokens_decoder key \"{entry.Name}\" is not a token id");
                var token = entry.Value;
                if (token.ValueKind != JsonValueKind.Object
                    || !token.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new InputError(configPath, $"added_tokens_decoder[{id}] has no string \"content\"");
                bool special = token.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True;
                added[id] = new AddedToken(content.GetString(), special);
            }
            return added;
        }

        /// <summary>
        /// The content of a token role ("bos_token", "image_token", …) in special_tokens_map.json or
        /// tokenizer_config.json: a string or an object with "content"; null when absent or null.
        /// </summary>
        private static string TokenContent(string path, JsonElement? json, string role)
        {
            if (json == null || !json.Value.TryGetProperty(role, out var value))
                return null;
            switch (value.ValueKind)
            {
                case JsonValueKind.Null:
                    return null;
                case JsonValueKind.String:
                    return value.GetString();
                case JsonValueKind.Object when value.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String:
                    return content.GetString();
                default:
                    throw new InputError(path, $"{role} must be a string or an object with \"content\"");
            }
        }

        private static int? FindId(SentencePieceTokenizer sentencePiece, Dictionary<int, AddedToken> added, string content)
        {
            foreach (var kv in added.OrderBy(kv => kv.Key))
                if (kv.Value.Content == content)
                    return kv.Key;
            return sentencePiece.Vocabulary.TryGetValue(content, out int id) ? id : null;
        }

        /// <summary>The image id always decodes (as the special "&lt;image&gt;" unless an added token names it).</summary>
        private static void EnsureImageToken(Dictionary<int, AddedToken> added, int imageTokenId)
        {
            if (imageTokenId < 0)
                throw new ArgumentOutOfRangeException(nameof(imageTokenId), imageTokenId, "image token id must be >= 0");
            if (!added.ContainsKey(imageTokenId))
                added[imageTokenId] = new AddedToken(DefaultImageToken, special: true);
        }
    }
}
