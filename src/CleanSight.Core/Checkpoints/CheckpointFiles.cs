using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using static TorchSharp.torch;

namespace CleanSight.Core.Checkpoints
{
    /// <summary>
    /// The weights of a checkpoint: a llava-hf style folder holding <c>model.safetensors</c> or
    /// <c>model.safetensors.index.json</c> plus its shards, or one loose <c>.safetensors</c> file
    /// (an adapter). Opening reads the headers only; each <see cref="Read"/> opens the file holding
    /// the tensor and reads just that tensor. Pickle checkpoints (<c>.bin</c>, <c>.pt</c>, ...) are
    /// refused: unpickling can execute code.
    /// </summary>
    public sealed class CheckpointFiles
    {
        public const string SingleFileName = "model.safetensors";
        public const string IndexFileName = "model.safetensors.index.json";

        /// <summary>Largest index JSON accepted.</summary>
        const long MaxIndexBytes = 100_000_000;

        static readonly string[] PickleExtensions = { ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle" };

        /// <summary>The folder opened, or the file for <see cref="OpenFile"/> (absolute).</summary>
        public string Root { get; }

        /// <summary>The safetensors files holding the weights, with their headers.</summary>
        public IReadOnlyList<SafetensorsFile> Shards { get; }

        /// <summary>Every tensor of the checkpoint, by name.</summary>
        public IReadOnlyDictionary<string, TensorEntry> Tensors { get; }

        CheckpointFiles(string root, IReadOnlyList<SafetensorsFile> shards, IReadOnlyDictionary<string, TensorEntry> tensors)
        {
            Root = root;
            Shards = shards;
            Tensors = tensors;
        }

        /// <summary>Whether the checkpoint has a tensor called <paramref name="name"/>.</summary>
        public bool Contains(string name) => name != null && Tensors.ContainsKey(name);

        /// <summary>Reads one tensor into a new CPU tensor of the file's dtype.</summary>
        public Tensor Read(string name)
        {
            if (name == null) throw new ArgumentNullException(nameof(name));
            if (!Tensors.TryGetValue(name, out var entry))
                throw new InputError(Root, $"checkpoint has no tensor named '{Printable(name)}'");
            return SafetensorsFile.Read(entry);
        }

        /// <summary>
        /// Opens a checkpoint folder: <c>model.safetensors</c> when present, otherwise
        /// <c>model.safetensors.index.json</c> and the shards its weight_map names.
        /// </summary>
        public static CheckpointFiles Open(string dir)
        {
            if (dir == null) throw new ArgumentNullException(nameof(dir));
            var root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir));
            if (!Directory.Exists(root))
                throw new InputError(root, File.Exists(root)
                    ? "is a file, not a checkpoint folder (open a single .safetensors file as a file)"
                    : "checkpoint folder not found");

            var single = Path.Combine(root, SingleFileName);
            if (File.Exists(single))
                return FromFiles(root, new[] { SafetensorsFile.Open(single) });

            var index = Path.Combine(root, IndexFileName);
            if (File.Exists(index))
                return FromIndex(root, index);

            throw new InputError(root, DescribeMissingWeights(root));
        }

        /// <summary>Opens one loose <c>.safetensors</c> file (an adapter, a generated checkpoint).</summary>
        public static CheckpointFiles OpenFile(string path)
        {
            if (path == null) throw new ArgumentNullException(nameof(path));
            var full = Path.GetFullPath(path);
            if (Directory.Exists(full))
                throw new InputError(full, "is a folder, expected a .safetensors file");
            if (IsPickle(full))
                throw new InputError(full, PickleRefusal($"'{Path.GetFileName(full)}' is a pickle checkpoint"));
            return FromFiles(full, new[] { SafetensorsFile.Open(full) });
        }

        static CheckpointFiles FromFiles(string root, IReadOnlyList<SafetensorsFile> shards)
        {
            var tensors = new Dictionary<string, TensorEntry>(StringComparer.Ordinal);
            foreach (var shard in shards)
            {
                foreach (var (name, entry) in shard.Tensors)
                {
                    if (tensors.TryGetValue(name, out var other))
                        throw new InputError(shard.Path,
                            $"tensor '{Printable(name)}' is also in '{Printable(Path.GetFileName(other.File))}'; a tensor must be in one shard only");
                    tensors.Add(name, entry);
                }
            }
            if (tensors.Count == 0)
                throw new InputError(shards.Count == 1 ? shards[0].Path : root, "holds no tensors");
            return new CheckpointFiles(root, shards, tensors);
        }

        static CheckpointFiles FromIndex(string root, string index)
        {
            var weightMap = ReadWeightMap(index);
            var shardPaths = new Dictionary<string, string>(StringComparer.Ordinal); // shard name → full path
            foreach (var shard in weightMap.Values.Distinct(StringComparer.Ordinal))
                shardPaths[shard] = ResolveShard(root, index, shard);

            var shards = shardPaths
                .OrderBy(kv => kv.Key, StringComparer.Ordinal)
                .ToDictionary(kv => kv.Key, kv => SafetensorsFile.Open(kv.Value), StringComparer.Ordinal);

            foreach (var (tensor, shard) in weightMap)
            {
                if (!shards[shard].Tensors.ContainsKey(tensor))
                    throw new InputError(index, $"tensor '{Printable(tensor)}' is listed in the index under shard '{Printable(shard)}' but that shard does not contain it");
            }
            // Tensors a shard holds beyond those the index lists are kept, as transformers loads them too.
            return FromFiles(root, shards.Values.ToList());
        }

        static Dictionary<string, string> ReadWeightMap(string index)
        {
            byte[] bytes;
            try
            {
                var length = new FileInfo(index).Length;
                if (length > MaxIndexBytes)
                    throw new InputError(index, $"index is {length} bytes, over the {MaxIndexBytes}-byte limit");
                bytes = File.ReadAllBytes(index);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new InputError(index, $"cannot read the index: {ex.Message}", ex);
            }

            JsonDocument document;
            try
            {
                document = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 16 });
            }
            catch (JsonException ex)
            {
                throw new InputError(index, $"index is not valid JSON: {ex.Message}", ex);
            }

            using (document)
            {
                var root = document.RootElement;
                if (root.ValueKind != JsonValueKind.Object)
                    throw new InputError(index, $"index is a JSON {root.ValueKind.ToString().ToLowerInvariant()}, expected an object with \"weight_map\"");
                if (!root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                    throw new InputError(index, "index has no \"weight_map\" object");

                var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (var item in map.EnumerateObject())
                {
                    if (item.Value.ValueKind != JsonValueKind.String)
                        throw new InputError(index, $"weight_map entry for '{Printable(item.Name)}' is a JSON {item.Value.ValueKind.ToString().ToLowerInvariant()}, expected a shard file name");
                    if (!weightMap.TryAdd(item.Name, item.Value.GetString()))
                        throw new InputError(index, $"weight_map lists tensor '{Printable(item.Name)}' twice");
                }
                if (weightMap.Count == 0)
                    throw new InputError(index, "weight_map lists no tensors");
                return weightMap;
            }
        }

        /// <summary>The full path of a shard named in the index, refusing names that leave the folder or are not safetensors.</summary>
        static string ResolveShard(string root, string index, string shard)
        {
            if (string.IsNullOrWhiteSpace(shard))
                throw new InputError(index, "weight_map names an empty shard file name");
            var segments = shard.Split('/', '\\');
            if (Path.IsPathRooted(shard) || segments.Contains(".."))
                throw new InputError(index, $"shard name '{Printable(shard)}' points outside the checkpoint folder; refused");

            string full;
            try
            {
                full = Path.GetFullPath(Path.Combine(root, shard));
            }
            catch (Exception ex) when (ex is ArgumentException or NotSupportedException or PathTooLongException)
            {
                throw new InputError(index, $"shard name '{Printable(shard)}' is not a valid file name", ex);
            }
            if (!full.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new InputError(index, $"shard name '{Printable(shard)}' points outside the checkpoint folder; refused");
            if (IsPickle(shard))
                throw new InputError(index, PickleRefusal($"shard '{Printable(shard)}' is a pickle file"));
            if (!shard.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                throw new InputError(index, $"shard '{Printable(shard)}' is not a .safetensors file");
            if (!File.Exists(full))
                throw new InputError(index, $"shard '{Printable(shard)}' named in the index is missing (expected at {Printable(full)})");
            return full;
        }

        /// <summary>Why a folder without model.safetensors or its index cannot be loaded.</summary>
        static string DescribeMissingWeights(string root)
        {
            var files = Directory.EnumerateFiles(root).Select(Path.GetFileName).OrderBy(f => f, StringComparer.Ordinal).ToList();
            var safetensors = files.Where(f => f.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)).ToList();
            var pickles = files.Where(IsPickle).ToList();
            if (safetensors.Count > 0)
                return $"no {SingleFileName} or {IndexFileName}; found {List(safetensors)} (open a single file directly as a file)";
            if (pickles.Count > 0)
                return PickleRefusal($"only pickle checkpoint files found ({List(pickles)}), no safetensors");
            return $"no weights: neither {SingleFileName} nor {IndexFileName} is here";
        }

        static string PickleRefusal(string what) =>
            $"{what}; pickle checkpoints can execute code when loaded and are never loaded — " +
            "convert the checkpoint to safetensors (e.g. in Python: model.save_pretrained(folder, safe_serialization=True))";

        static string Printable(string s) => SafetensorsFile.Printable(s);

        static bool IsPickle(string name) =>
            PickleExtensions.Any(ext => name.EndsWith(ext, StringComparison.OrdinalIgnoreCase));

        static string List(IReadOnlyList<string> names) =>
            names.Count <= 5
                ? string.Join(", ", names.Select(Printable))
                : string.Join(", ", names.Take(5).Select(Printable)) + $" and {names.Count - 5} more";
    }
}
