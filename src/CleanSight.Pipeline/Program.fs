module CleanSight.Pipeline.Program
[<EntryPoint>]
let main _ =
    let t = TorchSharp.torch.ones(3L, 3L)
    printfn "%A" (t.sum().item<float32>())
    0
