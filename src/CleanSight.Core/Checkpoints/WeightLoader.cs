using System;
using System.Collections.Generic;
using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Checkpoints
{
    /// <summary>
    /// Fills a module's parameters from a checkpoint whose keys equal the parameter names (the
    /// classic llava-hf layout), accepting the newer layout by renaming. Every parameter must be
    /// present with its exact shape; nothing is loaded from pickle files.
    /// </summary>
    public static class WeightLoader
    {
        /// <summary>Keys a checkpoint may carry that are not parameters (older transformers saved them).</summary>
        static bool Ignorable(string key) =>
            key.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || key.EndsWith("embeddings.position_ids", StringComparison.Ordinal);

        /// <summary>Newer transformers (≥ 4.52) key → classic key.</summary>
        public static string ToClassicKey(string key)
        {
            if (key.StartsWith("model.vision_tower.", StringComparison.Ordinal)) return key["model.".Length..];
            if (key.StartsWith("model.multi_modal_projector.", StringComparison.Ordinal)) return key["model.".Length..];
            if (key.StartsWith("model.language_model.", StringComparison.Ordinal)) return "language_model.model." + key["model.language_model.".Length..];
            if (key.StartsWith("lm_head.", StringComparison.Ordinal)) return "language_model." + key;
            return key;
        }

        /// <summary>
        /// Loads every parameter of <paramref name="module"/> from <paramref name="files"/>.
        /// With <paramref name="onlyPrefix"/>, only parameters under it are loaded and the file may
        /// hold nothing else (adapters). Throws InputError naming the file and the tensor.
        /// </summary>
        public static void Load(nn.Module module, CheckpointFiles files, string onlyPrefix = null, Action<int, int> progress = null)
        {
            var byClassic = new Dictionary<string, TensorEntry>();
            foreach (var (key, entry) in files.Tensors)
            {
                var classic = ToClassicKey(key);
                if (!byClassic.TryAdd(classic, entry))
                    throw new InputError(entry.File, $"tensor '{key}' appears twice (under both key layouts)");
            }
            var parameters = module.named_parameters()
                .Where(p => onlyPrefix is null || p.name.StartsWith(onlyPrefix, StringComparison.Ordinal)).ToList();
            var names = parameters.Select(p => p.name).ToHashSet();
            // A tied model has no lm_head parameter; some exports still store the (identical) matrix: HF ignores it.
            bool tiedHead(string k) => onlyPrefix is null && k == "language_model.lm_head.weight";
            var unexpected = byClassic.Keys.Where(k => !names.Contains(k) && !Ignorable(k) && !tiedHead(k)).OrderBy(k => k).ToList();
            if (unexpected.Count > 0)
                throw new InputError(files.Root, onlyPrefix is null
                    ? $"{unexpected.Count} tensor(s) this model does not have, e.g. '{unexpected[0]}'"
                    : $"{unexpected.Count} tensor(s) outside '{onlyPrefix}*', e.g. '{unexpected[0]}' (an adapter holds projector tensors only)");
            var missing = parameters.Where(p => !byClassic.ContainsKey(p.name)).Select(p => p.name).ToList();
            if (missing.Count > 0)
                throw new InputError(files.Root, $"{missing.Count} tensor(s) missing, e.g. '{missing[0]}'");

            using var noGrad = no_grad();
            int done = 0;
            foreach (var (name, parameter) in parameters)
            {
                var entry = byClassic[name];
                var expected = parameter.shape;
                if (!entry.Shape.SequenceEqual(expected))
                    throw new InputError(entry.File,
                        $"tensor '{entry.Name}' has shape [{string.Join(", ", entry.Shape)}] but the config implies [{string.Join(", ", expected)}]");
                using (var source = files.Read(entry.Name))
                    parameter.copy_(source);
                progress?.Invoke(++done, parameters.Count);
            }
        }
    }
}
