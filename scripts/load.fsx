// Shared prelude of every script: references the Release build and makes TorchSharp load here.
// Build first:  dotnet build CleanSight.sln -c Release
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/TorchSharp.dll"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/CleanSight.Core.dll"
#r "../src/CleanSight.Pipeline/bin/Release/net10.0/cleansight.dll"

CleanSight.Core.Native.TorchNative.Ensure()
