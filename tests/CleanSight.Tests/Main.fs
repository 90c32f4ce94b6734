module CleanSight.Tests.Main

open Expecto

[<EntryPoint>]
let main argv =
    CleanSight.Core.Native.TorchNative.Ensure()
    TorchSharp.torch.set_num_threads 2
    Tests.runTestsInAssemblyWithCLIArgs [] argv
