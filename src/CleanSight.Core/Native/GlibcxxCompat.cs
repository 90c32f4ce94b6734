// Makes TorchSharp 0.107's libLibTorchSharp.so load on systems whose libstdc++ predates GCC 13
// (Debian 12 stops at GLIBCXX_3.4.30). The library asks for GLIBCXX_3.4.32 for exactly one symbol,
// std::ios_base_library_init, which GCC 13 emits as a bare reference with no relocation: nothing
// ever calls it. Marking that version requirement weak (VER_FLG_WEAK in its Vernaux entry) lets
// the dynamic loader accept the library; no definition of the symbol is needed.
//
// This one file serves two callers:
//  - the build (Directory.Build.targets compiles it as an inline MSBuild task and patches the copy
//    of the library in every output folder), and
//  - the runtime (TorchNative.Ensure), for hosts such as `dotnet fsi` that load the library from
//    the NuGet cache instead of an output folder.
// CLEANSIGHT_CORE is defined by CleanSight.Core; the MSBuild task class is compiled only by MSBuild.
using System;
using System.IO;
using System.Text;

namespace CleanSight.Core.Native
{
    /// <summary>Reads and edits the GNU version-requirement table of an ELF64 little-endian file.</summary>
    public static class GlibcxxCompat
    {
        public const string MissingVersion = "GLIBCXX_3.4.32";
        const uint ShtGnuVerneed = 0x6ffffffe;
        const ushort VerFlgWeak = 0x2;

        /// <summary>True when the system libstdc++ already provides the version (GCC ≥ 13): nothing to do.</summary>
        public static bool SystemProvides(string version = MissingVersion)
        {
            foreach (var candidate in new[] {
                "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
                "/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6" })
            {
                if (File.Exists(candidate))
                    return IndexOf(File.ReadAllBytes(candidate), Encoding.ASCII.GetBytes(version + "\0")) >= 0;
            }
            return true; // no libstdc++ found where we look: do not touch anything
        }

        /// <summary>
        /// Offset of the vna_flags field of the requirement named <paramref name="version"/>,
        /// or -1 when the file requires no such version. Throws on a file that is not ELF64 LE.
        /// </summary>
        public static long FindRequirementFlags(byte[] elf, string version = MissingVersion)
        {
            if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
                throw new InvalidDataException("not an ELF file");
            if (elf[4] != 2 || elf[5] != 1)
                throw new InvalidDataException("not a 64-bit little-endian ELF file");
            long shoff = (long)BitConverter.ToUInt64(elf, 0x28);
            int shentsize = BitConverter.ToUInt16(elf, 0x3A);
            int shnum = BitConverter.ToUInt16(elf, 0x3C);
            for (int i = 0; i < shnum; i++)
            {
                long sh = shoff + (long)i * shentsize;
                if (BitConverter.ToUInt32(elf, (int)sh + 4) != ShtGnuVerneed) continue;
                long offset = (long)BitConverter.ToUInt64(elf, (int)sh + 0x18);
                int link = (int)BitConverter.ToUInt32(elf, (int)sh + 0x28);
                int count = (int)BitConverter.ToUInt32(elf, (int)sh + 0x2C);
                long strtab = (long)BitConverter.ToUInt64(elf, (int)(shoff + (long)link * shentsize) + 0x18);
                long need = offset;
                for (int n = 0; n < count; n++)
                {
                    // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32
                    int auxCount = BitConverter.ToUInt16(elf, (int)need + 2);
                    long aux = need + BitConverter.ToUInt32(elf, (int)need + 8);
                    for (int a = 0; a < auxCount; a++)
                    {
                        // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32
                        long name = strtab + BitConverter.ToUInt32(elf, (int)aux + 8);
                        if (CStringEquals(elf, name, version)) return aux + 4;
                        aux += BitConverter.ToUInt32(elf, (int)aux + 12);
                    }
                    uint next = BitConverter.ToUInt32(elf, (int)need + 12);
                    if (next == 0) break;
                    need += next;
                }
            }
            return -1;
        }

        /// <summary>Whether the library needs patching: it requires the version, not weakly.</summary>
        public static bool NeedsPatch(string path)
        {
            var elf = File.ReadAllBytes(path);
            long at = FindRequirementFlags(elf);
            return at >= 0 && (BitConverter.ToUInt16(elf, (int)at) & VerFlgWeak) == 0;
        }

        /// <summary>
        /// Writes to <paramref name="destination"/> a copy of <paramref name="source"/> whose
        /// requirement of the version is weak. Atomic (temp file + rename). Returns false when the
        /// source needed no change (then nothing is written).
        /// </summary>
        public static bool WriteWeakened(string source, string destination)
        {
            var elf = File.ReadAllBytes(source);
            long at = FindRequirementFlags(elf);
            if (at < 0 || (BitConverter.ToUInt16(elf, (int)at) & VerFlgWeak) != 0) return false;
            elf[at] |= (byte)VerFlgWeak;
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(destination)));
            var temp = destination + "." + Guid.NewGuid().ToString("N") + ".tmp";
            File.WriteAllBytes(temp, elf);
            if (File.Exists(destination)) File.Replace(temp, destination, null); else File.Move(temp, destination);
            return true;
        }

        static bool CStringEquals(byte[] data, long at, string s)
        {
            if (at + s.Length >= data.Length) return false;
            for (int i = 0; i < s.Length; i++) if (data[at + i] != (byte)s[i]) return false;
            return data[at + s.Length] == 0;
        }

        static int IndexOf(byte[] haystack, byte[] needle)
        {
            for (int i = 0; i + needle.Length <= haystack.Length; i++)
            {
                int j = 0;
                while (j < needle.Length && haystack[i + j] == needle[j]) j++;
                if (j == needle.Length) return i;
            }
            return -1;
        }
    }

#if !CLEANSIGHT_CORE
    /// <summary>MSBuild task: patch libLibTorchSharp.so in an output folder when the system needs it.</summary>
    public class PatchTorchSharpNative : Microsoft.Build.Utilities.Task
    {
        [Microsoft.Build.Framework.Required] public string Directory { get; set; }

        public override bool Execute()
        {
            if (!System.Runtime.InteropServices.RuntimeInformation.IsOSPlatform(System.Runtime.InteropServices.OSPlatform.Linux)
                || GlibcxxCompat.SystemProvides()) return true;
            foreach (var lib in System.IO.Directory.EnumerateFiles(Directory, "libLibTorchSharp.so", SearchOption.AllDirectories))
            {
                if (GlibcxxCompat.WriteWeakened(lib, lib))
                    Log.LogMessage(Microsoft.Build.Framework.MessageImportance.High,
                        $"CleanSight: marked {GlibcxxCompat.MissingVersion} weak in {lib} (system libstdc++ lacks it)");
            }
            return true;
        }
    }
#endif
}
