/// Our side of the prefill comparison: the real `LlavaForConditionalGeneration.Prefill` (vision
/// tower → projector → merge → decoder layers → last-token logits, KV cache filled, no policy) of
/// a randomly initialised model of the bench shape, on the CPU.
module CleanSight.Pipeline.Bench.DotnetPrefill

open TorchSharp
open CleanSight.Core.Inference
open CleanSight.Core.Model
open CleanSight.Pipeline.Bench
open CleanSight.Pipeline.World

/// A model of the shape with seeded N(0, 0.02) weights (the tiny world's initialisation).
let build (shape: PrefillShape.Shape) (dtype: torch.ScalarType) =
    let model = new LlavaForConditionalGeneration(PrefillShape.config shape, dtype, torch.CPU)
    TinyLlava.initialize 0L model
    model.eval ()
    model

/// Seconds of each timed prefill (after `warmup` untimed ones).
let time (shape: PrefillShape.Shape) (dtype: torch.ScalarType) (warmup: int) (runs: int) =
    use model = build shape dtype
    let ids = PrefillShape.ids shape
    let size = int64 (PrefillShape.sizes shape).ImageSize
    use generator = new torch.Generator(1UL)
    use pixels = torch.randn([| 3L; size; size |], generator = generator)
    Stats.repeat warmup runs (fun () ->
        let prefilled = model.Prefill(ids, pixels, NoPolicy.Instance)
        prefilled.Cache.Dispose())
