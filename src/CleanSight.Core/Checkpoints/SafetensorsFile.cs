using System;
using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Numerics;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace CleanSight.Core.Checkpoints
{
    /// <summary>
    /// Where one tensor lives: its name, safetensors dtype ("F16", "BF16", ...), shape, the file,
    /// the absolute offset of its first byte in that file and its length in bytes.
    /// </summary>
    public sealed record TensorEntry(string Name, string Dtype, long[] Shape, string File, long DataStart, long ByteLength);

    /// <summary>
    /// One <c>.safetensors</c> file: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
    /// describing the tensors, then the data section the JSON's <c>data_offsets</c> point into.
    /// <see cref="Open"/> reads and validates the header only; tensors are read one at a time by
    /// <see cref="Read(TensorEntry)"/>, straight from the file into the tensor's storage.
    /// Every problem with the file is an <see cref="InputError"/> naming it. Never unpickles anything.
    /// </summary>
    public sealed class SafetensorsFile
    {
        /// <summary>Largest header accepted (the reference implementation's limit).</summary>
        public const long MaxHeaderBytes = 100_000_000;

        /// <summary>Largest slice of a tensor read or written in one call (keeps spans well under 2 GiB).</summary>
        const long ChunkBytes = 1L << 26;

        sealed record DtypeInfo(ScalarType Type, int Size);

        static readonly IReadOnlyDictionary<string, DtypeInfo> Dtypes = new Dictionary<string, DtypeInfo>(StringComparer.Ordinal)
        {
            ["F16"] = new(ScalarType.Float16, 2),
            ["BF16"] = new(ScalarType.BFloat16, 2),
            ["F32"] = new(ScalarType.Float32, 4),
            ["F64"] = new(ScalarType.Float64, 8),
            ["I64"] = new(ScalarType.Int64, 8),
            ["I32"] = new(ScalarType.Int32, 4),
            ["I16"] = new(ScalarType.Int16, 2),
            ["I8"] = new(ScalarType.Int8, 1),
            ["U8"] = new(ScalarType.Byte, 1),
            ["BOOL"] = new(ScalarType.Bool, 1),
        };

        static readonly string SupportedDtypes = string.Join(", ", Dtypes.Keys);
        static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

        /// <summary>Absolute path of the file.</summary>
        public string Path { get; }

        /// <summary>Length N of the JSON header; the data section starts at byte 8 + N.</summary>
        public long HeaderLength { get; }

        /// <summary>The tensors, in header order.</summary>
        public IReadOnlyDictionary<string, TensorEntry> Tensors { get; }

        /// <summary>The header's <c>__metadata__</c> (empty when absent).</summary>
        public IReadOnlyDictionary<string, string> Metadata { get; }

        SafetensorsFile(string path, long headerLength, IReadOnlyDictionary<string, TensorEntry> tensors,
            IReadOnlyDictionary<string, string> metadata)
        {
            Path = path;
            HeaderLength = headerLength;
            Tensors = tensors;
            Metadata = metadata;
        }

        // ------------------------------------------------------------------ dtypes

        /// <summary>Whether <paramref name="dtype"/> is a safetensors dtype this reader supports.</summary>
        public static bool IsSupportedDtype(string dtype) => dtype != null && Dtypes.ContainsKey(dtype);

        /// <summary>The TorchSharp scalar type of a supported safetensors dtype.</summary>
        public static ScalarType ScalarTypeOf(string dtype) =>
            dtype != null && Dtypes.TryGetValue(dtype, out var info)
                ? info.Type
                : throw new ArgumentException($"unsupported safetensors dtype \"{dtype}\" (supported: {SupportedDtypes})", nameof(dtype));

        /// <summary>The safetensors dtype of a TorchSharp scalar type.</summary>
        public static string DtypeOf(ScalarType type)
        {
            foreach (var (name, info) in Dtypes)
                if (info.Type == type) return name;
            throw new ArgumentException($"tensors of type {type} cannot be stored in safetensors here (supported: {SupportedDtypes})", nameof(type));
        }

        // ------------------------------------------------------------------ header

        /// <summary>
        /// Opens <paramref name="path"/> and validates its header: lengths, JSON, every entry's dtype,
        /// shape and offsets, and that no two tensors overlap. Allocates at most the header
        /// (≤ <see cref="MaxHeaderBytes"/>), and only after checking the file really holds it.
        /// </summary>
        public static SafetensorsFile Open(string path)
        {
            if (path == null) throw new ArgumentNullException(nameof(path));
            var full = System.IO.Path.GetFullPath(path);
            using var stream = OpenForReading(full);
            long fileLength = stream.Length;
            if (fileLength < 8)
                throw new InputError(full, $"file is {fileLength} bytes, shorter than the 8-byte header length that starts a safetensors file");

            Span<byte> prefix = stackalloc byte[8];
            ReadFully(stream, prefix, full, "the header length");
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (headerLength > MaxHeaderBytes)
                throw new InputError(full, $"header length {headerLength} bytes exceeds the {MaxHeaderBytes}-byte limit{PickleHint(prefix)}");
            if (headerLength > (ulong)(fileLength - 8))
                throw new InputError(full, $"header length {headerLength} bytes runs past the end of the file ({fileLength} bytes, {fileLength - 8} after the length field){PickleHint(prefix)}");
            if (headerLength < 2)
                throw new InputError(full, $"header length {headerLength} bytes is too short for a JSON object");

            var header = new byte[(int)headerLength];
            ReadFully(stream, header, full, "the header");
            long dataLength = fileLength - 8 - (long)headerLength;
            return ParseHeader(full, header, dataLength);
        }

        /// <summary>" (looks like a PyTorch pickle ...)" when the first bytes are a zip or pickle signature.</summary>
        static string PickleHint(ReadOnlySpan<byte> prefix)
        {
            bool zip = prefix[0] == (byte)'P' && prefix[1] == (byte)'K' && prefix[2] == 3 && prefix[3] == 4;
            bool pickle = prefix[0] == 0x80 && prefix[1] >= 2 && prefix[1] <= 5;
            return zip || pickle
                ? "; the file looks like a PyTorch pickle checkpoint, which can execute code and is never loaded — convert it to safetensors"
                : "; not a safetensors file, or a corrupt one";
        }

        static SafetensorsFile ParseHeader(string file, byte[] header, long dataLength)
        {
            string json;
            try
            {
                json = StrictUtf8.GetString(header);
            }
            catch (DecoderFallbackException ex)
            {
                throw new InputError(file, $"header is not valid UTF-8 (bad byte at header offset {ex.Index})", ex);
            }

            JsonDocument document;
            try
            {
                document = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 16 });
            }
            catch (JsonException ex)
            {
                throw new InputError(file, $"header is not valid JSON: {ex.Message}", ex);
            }

            using (document)
            {
                try
                {
                    return ParseDocument(file, document.RootElement, header.Length, dataLength);
                }
                catch (Exception ex) when (ex is InvalidOperationException or FormatException or OverflowException
                                               or ArgumentException or KeyNotFoundException)
                {
                    throw new InputError(file, $"header is malformed: {ex.Message}", ex);
                }
            }
        }

        static SafetensorsFile ParseDocument(string file, JsonElement root, long headerLength, long dataLength)
        {
            if (root.ValueKind != JsonValueKind.Object)
                throw new InputError(file, $"header is a JSON {Kind(root)}, expected an object of tensors");

            long dataStart = 8 + headerLength;
            var tensors = new Dictionary<string, TensorEntry>(StringComparer.Ordinal);
            var ranges = new List<(string Name, long Begin, long End)>();
            IReadOnlyDictionary<string, string> metadata = null;

            foreach (var property in root.EnumerateObject())
            {
                var name = property.Name;
                if (name == "__metadata__")
                {
                    if (metadata != null)
                        throw new InputError(file, "header has \"__metadata__\" twice");
                    metadata = ParseMetadata(file, property.Value);
                    continue;
                }
                if (tensors.ContainsKey(name))
                    throw new InputError(file, $"tensor '{Printable(name)}' appears twice in the header");

                var (dtype, shape, begin, end) = ParseEntry(file, name, property.Value, dataLength);
                tensors.Add(name, new TensorEntry(name, dtype, shape, file, dataStart + begin, end - begin));
                ranges.Add((name, begin, end));
            }

            CheckNoOverlap(file, ranges);
            return new SafetensorsFile(file, headerLength, tensors,
                metadata ?? new Dictionary<string, string>(StringComparer.Ordinal));
        }

        static IReadOnlyDictionary<string, string> ParseMetadata(string file, JsonElement value)
        {
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            if (value.ValueKind == JsonValueKind.Null) return metadata;
            if (value.ValueKind != JsonValueKind.Object)
                throw new InputError(file, $"\"__metadata__\" is a JSON {Kind(value)}, expected an object of strings");
            foreach (var item in value.EnumerateObject())
            {
                if (item.Value.ValueKind != JsonValueKind.String)
                    throw new InputError(file, $"\"__metadata__\" value for '{Printable(item.Name)}' is a JSON {Kind(item.Value)}, expected a string");
                if (!metadata.TryAdd(item.Name, item.Value.GetString()))
                    throw new InputError(file, $"\"__metadata__\" has key '{Printable(item.Name)}' twice");
            }
            return metadata;
        }

        static (string Dtype, long[] Shape, long Begin, long End) ParseEntry(string file, string name, JsonElement value, long dataLength)
        {
            if (value.ValueKind != JsonValueKind.Object)
                throw new InputError(file, $"tensor '{Printable(name)}': entry is a JSON {Kind(value)}, expected an object with \"dtype\", \"shape\" and \"data_offsets\"");

            var dtypeValue = Field(file, name, value, "dtype", JsonValueKind.String, "a string");
            var dtype = dtypeValue.GetString();
            if (!Dtypes.TryGetValue(dtype, out var info))
                throw new InputError(file, $"tensor '{Printable(name)}': unknown dtype \"{Printable(dtype)}\" (supported: {SupportedDtypes})");

            var shapeValue = Field(file, name, value, "shape", JsonValueKind.Array, "an array of integers");
            var shape = new long[shapeValue.GetArrayLength()];
            int i = 0;
            foreach (var dim in shapeValue.EnumerateArray())
            {
                long d = Integer(file, name, $"shape[{i}]", dim);
                if (d < 0)
                    throw new InputError(file, $"tensor '{Printable(name)}': shape[{i}] is {d}, a negative dimension");
                shape[i++] = d;
            }

            var offsetsValue = Field(file, name, value, "data_offsets", JsonValueKind.Array, "an array [begin, end]");
            if (offsetsValue.GetArrayLength() != 2)
                throw new InputError(file, $"tensor '{Printable(name)}': \"data_offsets\" has {offsetsValue.GetArrayLength()} elements, expected 2 [begin, end]");
            long begin = Integer(file, name, "data_offsets[0]", offsetsValue[0]);
            long end = Integer(file, name, "data_offsets[1]", offsetsValue[1]);
            if (begin < 0 || end < 0)
                throw new InputError(file, $"tensor '{Printable(name)}': data_offsets [{begin}, {end}] are negative");
            if (end < begin)
                throw new InputError(file, $"tensor '{Printable(name)}': data_offsets [{begin}, {end}] end before they begin");
            if (end > dataLength)
                throw new InputError(file, $"tensor '{Printable(name)}': data_offsets [{begin}, {end}] run past the end of the data section ({dataLength} bytes)");

            BigInteger expected = info.Size;
            foreach (var d in shape) expected *= d;
            if (expected != end - begin)
                throw new InputError(file, $"tensor '{Printable(name)}': {dtype} shape [{string.Join(", ", shape)}] needs {expected} bytes but data_offsets [{begin}, {end}] hold {end - begin}");

            // An empty tensor can still name huge dimensions ([0, 2^62, 2^62]); libtorch's stride and
            // storage arithmetic multiplies them (zeros as 1) and fails on overflow, so refuse them here.
            BigInteger extent = info.Size;
            foreach (var d in shape) extent *= Math.Max(d, 1);
            if (extent > long.MaxValue)
                throw new InputError(file, $"tensor '{Printable(name)}': shape [{string.Join(", ", shape)}] is too large to address (its non-zero dimensions multiply past 64 bits)");

            return (dtype, shape, begin, end);
        }

        static JsonElement Field(string file, string name, JsonElement entry, string field, JsonValueKind kind, string expected)
        {
            if (!entry.TryGetProperty(field, out var value))
                throw new InputError(file, $"tensor '{Printable(name)}': missing \"{field}\"");
            if (value.ValueKind != kind)
                throw new InputError(file, $"tensor '{Printable(name)}': \"{field}\" is a JSON {Kind(value)}, expected {expected}");
            return value;
        }

        static long Integer(string file, string name, string what, JsonElement value)
        {
            if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out var n))
                throw new InputError(file, $"tensor '{Printable(name)}': {what} is {Abbreviate(value.GetRawText())}, expected an integer that fits in 64 bits");
            return n;
        }

        /// <summary>Sorted by begin, each tensor must start at or after the furthest end seen so far.</summary>
        static void CheckNoOverlap(string file, List<(string Name, long Begin, long End)> ranges)
        {
            ranges.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
            (string Name, long Begin, long End)? furthest = null;
            foreach (var r in ranges)
            {
                if (furthest is { } f && r.Begin < f.End)
                    throw new InputError(file, $"tensors '{Printable(f.Name)}' [{f.Begin}, {f.End}] and '{Printable(r.Name)}' [{r.Begin}, {r.End}] overlap");
                if (furthest == null || r.End > furthest.Value.End) furthest = r;
            }
        }

        static string Kind(JsonElement e) => e.ValueKind.ToString().ToLowerInvariant();

        static string Abbreviate(string s) => s.Length <= 40 ? s : s[..40] + "…";

        /// <summary>
        /// A name from a file made safe to print in a one-line message: control characters
        /// (newlines, terminal escapes) as \uXXXX, and at most 200 characters.
        /// </summary>
        internal static string Printable(string s)
        {
            if (s == null) return "(null)";
            var shown = s.Length <= 200 ? s : s[..200] + "…";
            if (!shown.Any(char.IsControl)) return shown;
            var sb = new StringBuilder(shown.Length + 16);
            foreach (var c in shown)
                if (char.IsControl(c)) sb.Append($"\\u{(int)c:x4}"); else sb.Append(c);
            return sb.ToString();
        }

        // ------------------------------------------------------------------ reading

        /// <summary>Reads the tensor called <paramref name="name"/> from this file.</summary>
        public Tensor Read(string name) =>
            Tensors.TryGetValue(name, out var entry)
                ? Read(entry)
                : throw new InputError(Path, $"no tensor named '{Printable(name)}'");

        /// <summary>
        /// Allocates a CPU tensor of the entry's dtype and shape and reads its bytes from the file
        /// straight into the tensor's storage (no intermediate buffer). A file that has become
        /// shorter than the header promised is an <see cref="InputError"/> "truncated".
        /// </summary>
        public static Tensor Read(TensorEntry entry)
        {
            if (entry == null) throw new ArgumentNullException(nameof(entry));
            var type = ScalarTypeOf(entry.Dtype);
            var tensor = torch.empty(entry.Shape, type, device: torch.CPU);
            try
            {
                long bytes = tensor.NumberOfElements * tensor.ElementSize;
                if (bytes != entry.ByteLength)
                    throw new ArgumentException(
                        $"entry '{entry.Name}' says {entry.ByteLength} bytes but {entry.Dtype} [{string.Join(", ", entry.Shape)}] is {bytes}", nameof(entry));
                if (bytes == 0) return tensor;

                using var stream = OpenForReading(entry.File);
                long needed = entry.DataStart + entry.ByteLength;
                if (stream.Length < needed)
                    throw new InputError(entry.File,
                        $"truncated: tensor '{Printable(entry.Name)}' needs bytes up to offset {needed} but the file has {stream.Length}");
                stream.Position = entry.DataStart;
                var what = $"tensor '{Printable(entry.Name)}'";
                ForEachChunk(tensor, span => ReadFully(stream, span, entry.File, what));
                return tensor;
            }
            catch
            {
                tensor.Dispose();
                throw;
            }
        }

        /// <summary>
        /// Calls <paramref name="action"/> with spans over the storage of a contiguous CPU tensor,
        /// in order, each at most <see cref="ChunkBytes"/> long (views of the flattened tensor).
        /// </summary>
        static void ForEachChunk(Tensor tensor, SpanAction action)
        {
            long total = tensor.NumberOfElements * tensor.ElementSize;
            if (total == 0) return;
            if (total <= ChunkBytes)
            {
                action(tensor.bytes);
                return;
            }
            long elements = tensor.NumberOfElements;
            long perChunk = Math.Max(1, ChunkBytes / tensor.ElementSize);
            using var flat = tensor.view(-1);
            for (long start = 0; start < elements; start += perChunk)
            {
                using var part = flat.narrow(0, start, Math.Min(perChunk, elements - start));
                action(part.bytes);
            }
        }

        delegate void SpanAction(Span<byte> span);

        static FileStream OpenForReading(string file)
        {
            try
            {
                // bufferSize 0: reads go straight from the OS into the caller's span.
                return new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.SequentialScan);
            }
            catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
            {
                throw new InputError(file, "file not found", ex);
            }
            catch (UnauthorizedAccessException ex)
            {
                throw new InputError(file, "cannot open: permission denied", ex);
            }
            catch (IOException ex)
            {
                throw new InputError(file, $"cannot open: {ex.Message}", ex);
            }
        }

        static void ReadFully(Stream stream, Span<byte> destination, string file, string what)
        {
            long start = stream.Position;
            int done = 0;
            while (done < destination.Length)
            {
                int n;
                try
                {
                    n = stream.Read(destination[done..]);
                }
                catch (IOException ex)
                {
                    throw new InputError(file, $"cannot read {what} at offset {start + done}: {ex.Message}", ex);
                }
                if (n == 0)
                    throw new InputError(file, $"truncated: {what} ends at offset {start + done}, {destination.Length - done} bytes short");
                done += n;
            }
        }

        // ------------------------------------------------------------------ writing

        /// <summary>
        /// Writes <paramref name="tensors"/> as a safetensors file at <paramref name="path"/>:
        /// tensors sorted by name, header padded with spaces to a multiple of 8 bytes, optional
        /// <c>__metadata__</c>. Atomic: a temporary file in the same folder renamed over the target.
        /// Tensors on other devices or with non-contiguous layouts are copied to contiguous CPU first.
        /// </summary>
        public static void Write(string path, IEnumerable<(string name, Tensor t)> tensors, IDictionary<string, string> metadata = null)
        {
            if (path == null) throw new ArgumentNullException(nameof(path));
            if (tensors == null) throw new ArgumentNullException(nameof(tensors));
            var items = tensors.ToList();
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (name, t) in items)
            {
                if (name == null) throw new ArgumentException("a tensor name is null", nameof(tensors));
                if (name == "__metadata__") throw new ArgumentException("\"__metadata__\" cannot name a tensor", nameof(tensors));
                if (t is null) throw new ArgumentException($"tensor '{Printable(name)}' is null", nameof(tensors));
                if (!names.Add(name)) throw new ArgumentException($"tensor name '{Printable(name)}' given twice", nameof(tensors));
            }
            items.Sort((a, b) => string.CompareOrdinal(a.name, b.name));

            byte[] header = BuildHeader(items, metadata);
            var full = System.IO.Path.GetFullPath(path);
            var folder = System.IO.Path.GetDirectoryName(full);
            Directory.CreateDirectory(folder);
            var temp = System.IO.Path.Combine(folder, $".{System.IO.Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
            try
            {
                using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 20))
                {
                    Span<byte> prefix = stackalloc byte[8];
                    BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
                    stream.Write(prefix);
                    stream.Write(header);
                    foreach (var (_, t) in items) WriteData(stream, t);
                    stream.Flush(flushToDisk: true);
                }
                File.Move(temp, full, overwrite: true);
            }
            catch
            {
                try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
                throw;
            }
        }

        static byte[] BuildHeader(List<(string name, Tensor t)> items, IDictionary<string, string> metadata)
        {
            var buffer = new ArrayBufferWriter<byte>();
            using (var json = new Utf8JsonWriter(buffer))
            {
                json.WriteStartObject();
                if (metadata != null && metadata.Count > 0)
                {
                    json.WriteStartObject("__metadata__");
                    foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                        json.WriteString(key, value ?? throw new ArgumentException($"metadata value for '{key}' is null", nameof(metadata)));
                    json.WriteEndObject();
                }
                long offset = 0;
                foreach (var (name, t) in items)
                {
                    long length = t.NumberOfElements * t.ElementSize;
                    json.WriteStartObject(name);
                    json.WriteString("dtype", DtypeOf(t.dtype));
                    json.WriteStartArray("shape");
                    foreach (var d in t.shape) json.WriteNumberValue(d);
                    json.WriteEndArray();
                    json.WriteStartArray("data_offsets");
                    json.WriteNumberValue(offset);
                    json.WriteNumberValue(offset + length);
                    json.WriteEndArray();
                    json.WriteEndObject();
                    offset += length;
                }
                json.WriteEndObject();
            }
            int padding = (8 - buffer.WrittenCount % 8) % 8;
            var header = new byte[buffer.WrittenCount + padding];
            buffer.WrittenSpan.CopyTo(header);
            header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
            return header;
        }

        static void WriteData(Stream stream, Tensor t)
        {
            if (t.NumberOfElements == 0) return;
            var onCpu = t.device_type == DeviceType.CPU ? t : t.cpu();
            var dense = onCpu.is_contiguous() ? onCpu : onCpu.contiguous();
            try
            {
                ForEachChunk(dense, span => stream.Write(span));
            }
            finally
            {
                if (!ReferenceEquals(dense, t)) dense.Dispose();
                if (!ReferenceEquals(onCpu, t) && !ReferenceEquals(onCpu, dense)) onCpu.Dispose();
            }
        }
    }
}
