using System;
using System.Linq;
using System.Security.Cryptography;
using System.Text;
using System.IO;

namespace CleanSight.Core.Checkpoints
{
    /// <summary>
    /// A short fingerprint of a checkpoint's weights outside the projector: SHA-256 over the names,
    /// dtypes, shapes and first bytes (as stored) of the token embedding and of the vision patch
    /// embedding. It tells two bases of one architecture apart (another seed, another fine-tune)
    /// without reading billions of parameters; it depends on the files, not on the dtype or device a
    /// model is loaded with; and an adapter overlaid on the base (projector tensors only) leaves it
    /// unchanged — so an adapter can name the base it was trained on, and a calibration the base it
    /// was made with.
    /// </summary>
    public static class BaseFingerprint
    {
        /// <summary>The adapter metadata key holding the fingerprint of the base it was trained on.</summary>
        public const string MetadataKey = "base_fingerprint";

        /// <summary>The tensors sampled (classic llava-hf names; newer-layout keys are mapped).</summary>
        public static readonly string[] Sampled =
        {
            "language_model.model.embed_tokens.weight",
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
        };

        /// <summary>Bytes hashed from the start of each sampled tensor.</summary>
        public const long SampledBytes = 1 << 18;

        /// <summary>The fingerprint of the checkpoint <paramref name="files"/> (lower-case hex).</summary>
        public static string Of(CheckpointFiles files)
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            foreach (var name in Sampled)
            {
                var entry = files.Tensors.Values.FirstOrDefault(e => WeightLoader.ToClassicKey(e.Name) == name)
                            ?? throw new InputError(files.Root, $"checkpoint has no tensor '{name}' (needed to fingerprint the base)");
                hash.AppendData(Encoding.UTF8.GetBytes($"{name}:{entry.Dtype}:{string.Join('x', entry.Shape)}\n"));
                var head = new byte[Math.Min(SampledBytes, entry.ByteLength)];
                using var stream = new FileStream(entry.File, FileMode.Open, FileAccess.Read, FileShare.Read);
                if (stream.Length < entry.DataStart + head.Length)
                    throw new InputError(entry.File, $"truncated: tensor '{entry.Name}' ends past the end of the file");
                stream.Position = entry.DataStart;
                stream.ReadExactly(head);
                hash.AppendData(head);
            }
            return Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant();
        }

        /// <summary>The fingerprint of the checkpoint folder <paramref name="dir"/>.</summary>
        public static string Of(string dir) => Of(CheckpointFiles.Open(dir));

        /// <summary>
        /// Null when <paramref name="adapter"/> names no base or names <paramref name="baseFiles"/>
        /// (whose fingerprint is computed only when the adapter names one); otherwise the problem, in one line.
        /// </summary>
        public static string AdapterProblem(SafetensorsFile adapter, CheckpointFiles baseFiles)
        {
            if (adapter.Metadata == null || !adapter.Metadata.TryGetValue(MetadataKey, out var expected))
                return null;
            var actual = Of(baseFiles);
            if (expected == actual)
                return null;
            return $"was trained on another base model (its {MetadataKey} {Short(expected)}…, this base's {Short(actual)}…): "
                   + "overlay it on the base it was made from";
        }

        static string Short(string hex) => hex.Length > 12 ? hex[..12] : hex;
    }
}
