using System;
using System.IO;
using System.Linq;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace CleanSight.Core.Native
{
    /// <summary>
    /// Runtime half of the libstdc++ compatibility step (see GlibcxxCompat). The build already
    /// patches output folders; this covers hosts that load TorchSharp's natives from elsewhere
    /// (`dotnet fsi` loads them from the NuGet cache): it writes a patched copy to a user cache and
    /// loads it, with its libtorch dependencies, before TorchSharp's own loader runs. The library's
    /// SONAME then resolves to the already-loaded patched copy.
    /// Runs automatically when CleanSight.Core is first used (module initializer); call
    /// <see cref="Ensure"/> first in code that touches TorchSharp before any CleanSight type.
    /// </summary>
    public static class TorchNative
    {
        static readonly object Gate = new();
        static bool done;

        [ModuleInitializer]
        internal static void OnLoad() => Ensure();

        public static void Ensure()
        {
            lock (Gate)
            {
                if (done) return;
                done = true;
                if (!OperatingSystem.IsLinux() || GlibcxxCompat.SystemProvides()) return;
                var lib = Candidates().FirstOrDefault(File.Exists);
                if (lib == null) return;
                var version = typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString() ?? "unknown";
                var cache = Path.Combine(
                    Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x
                        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"),
                    "cleansight", "native", version);
                var patched = Path.Combine(cache, "libLibTorchSharp.so");
                if (!GlibcxxCompat.NeedsPatch(lib))
                    patched = lib; // an output folder the build already patched
                else if (!File.Exists(patched) || GlibcxxCompat.NeedsPatch(patched))
                    GlibcxxCompat.WriteWeakened(lib, patched);
                // libtorch's libraries: next to the TorchSharp library in an output folder,
                // in the libtorch-cpu-linux-x64 package in the NuGet cache.
                var torchDir = new[] { Path.GetDirectoryName(lib), LibtorchPackageDir() }
                    .FirstOrDefault(d => d != null && File.Exists(Path.Combine(d, "libtorch_cpu.so")));
                if (torchDir != null)
                    foreach (var dep in new[] { "libc10.so", "libtorch_cpu.so", "libtorch.so" })
                        NativeLibrary.Load(Path.Combine(torchDir, dep));
                NativeLibrary.Load(patched);
            }
        }

        static System.Collections.Generic.IEnumerable<string> Candidates()
        {
            const string name = "libLibTorchSharp.so";
            var torchAssemblyDir = Path.GetDirectoryName(typeof(TorchSharp.torch).Assembly.Location);
            foreach (var dir in new[] { AppContext.BaseDirectory, torchAssemblyDir })
            {
                if (string.IsNullOrEmpty(dir)) continue;
                yield return Path.Combine(dir, name);
                yield return Path.Combine(dir, "runtimes", "linux-x64", "native", name);
            }
            if (!string.IsNullOrEmpty(torchAssemblyDir))
            {
                // .../torchsharp/<version>/lib/<tfm>/TorchSharp.dll → .../torchsharp/<version>/runtimes/...
                var packageRoot = Path.GetFullPath(Path.Combine(torchAssemblyDir, "..", ".."));
                yield return Path.Combine(packageRoot, "runtimes", "linux-x64", "native", name);
            }
        }

        static string LibtorchPackageDir()
        {
            var root = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p ? p
                : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            var pkg = Path.Combine(root, "libtorch-cpu-linux-x64");
            if (!Directory.Exists(pkg)) return null;
            return Directory.GetDirectories(pkg).OrderByDescending(d => d)
                .Select(d => Path.Combine(d, "runtimes", "linux-x64", "native"))
                .FirstOrDefault(Directory.Exists);
        }
    }
}
