// Shared prelude of every script: references the Release build and makes TorchSharp load here.
// Build first:  dotnet build CleanSight.sln -c Release
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/TorchSharp.dll"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/CleanSight.Core.dll"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/cleansight.dll"

CleanSight.Core.Native.TorchNative.Ensure()

/// The first positional argument [MODEL_DIR=world/base] of the scripts that probe one base model.
let modelDirArg () =
    fsi.CommandLineArgs |> Array.tryItem 1 |> Option.defaultValue (System.IO.Path.Combine(__SOURCE_DIRECTORY__, "..", "world", "base"))

/// The positional arguments [COUNT] [MODEL_DIR=world/base] [ADAPTERS_DIR=world/adapters] of the scripts that
/// measure a world's backdoors (misses.fsx, trigger-route.fsx).
let worldArgs (defaultCount: int) =
    let argv = fsi.CommandLineArgs |> Array.skip 1
    let world = System.IO.Path.Combine(__SOURCE_DIRECTORY__, "..", "world")
    let item i fallback = argv |> Array.tryItem i |> Option.defaultValue fallback
    int (item 0 (string defaultCount)), item 1 (System.IO.Path.Combine(world, "base")), item 2 (System.IO.Path.Combine(world, "adapters"))
