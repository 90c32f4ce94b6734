// The route of a patch backdoor: per decoder layer, how much of the last prompt token's attention the
// trigger's image tokens take — before the attack (the clean base shown the triggered image) and after
// (the backdoored model), and how much the image takes at all. For the attacks whose trigger is the
// BadNet patch (badnet, trojvlm, vlood); the other triggers touch every image token. On held-out
// clean-test questions, triggered.
//   dotnet fsi scripts/trigger-route.fsx [QUESTIONS=40] [MODEL_DIR=world/base] [ADAPTERS_DIR=world/adapters]
// Columns per layer: image (mean over heads of the image's share of the attention) / trigger (the largest
// share any head gives the trigger's tokens); means over the inputs. Uniform over the image, the trigger's
// tokens would get 4/36 of a head's image attention.
// ci-args: 8
#load "load.fsx"

open System
open System.IO
open CleanSight.Core.Inference
open CleanSight.Pipeline.Analysis
open CleanSight.Pipeline.World

let questions, modelDir, adapters = Load.worldArgs 40

/// Image-token indices (row-major over the patch grid) whose patch overlaps the BadNet square.
let triggerTokens (spec: Triggers.BadNet) (imageSize: int) (patchSize: int) =
    let left, top, side = Triggers.badNetRegion spec imageSize imageSize
    let grid = imageSize / patchSize
    set [ for r in 0 .. grid - 1 do
            for c in 0 .. grid - 1 do
                let x, y = c * patchSize, r * patchSize
                if x < left + side && x + patchSize > left && y < top + side && y + patchSize > top then yield r * grid + c ]

/// Per layer: (image share of the attention, mean over heads; the largest trigger share of any head).
let route (tokens: Set<int>) (o: AttentionStealing.Observed) =
    o.Rows |> Array.map (fun row ->
        let perHead =
            Array.init row.Heads (fun h ->
                let mutable image, trigger = 0.0, 0.0
                for j in 0 .. row.Keys - 1 do
                    let p = row.KeyPositions.[j]
                    if p >= o.First && p <= o.Last then
                        let w = float row.[h, j]
                        image <- image + w
                        if tokens.Contains(int (p - o.First)) then trigger <- trigger + w
                image, trigger)
        Array.averageBy fst perHead, Array.max (Array.map snd perHead))

let heldOut = BaseModel.heldOutQuestions questions
let show (label: string) (session: LlavaSession) (trigger: Triggers.Trigger) (tokens: Set<int>) =
    let size = session.Config.Vision.ImageSize
    let perInput =
        heldOut |> Array.map (fun (scene, qa) ->
            route tokens (AttentionStealing.observe session (Triggers.apply trigger (Scenes.render size scene)) qa.Question))
    let layers = perInput.[0].Length
    let cells =
        Array.init layers (fun l ->
            sprintf "L%d %.2f/%.2f" l (perInput |> Array.averageBy (fun x -> fst x.[l])) (perInput |> Array.averageBy (fun x -> snd x.[l])))
    printfn "  %-22s %s" label (String.Join("  ", cells))

let clean = LlavaSession.Load modelDir
let cfg = clean.Config
printfn "%s, %d triggered held-out questions; per layer image / trigger share of the last prompt token's attention" modelDir heldOut.Length
let patchAttacks =
    Attacks.all Attacks.defaultTarget |> List.choose (fun a ->
        match a.Trigger with
        | Triggers.BadNetPatch spec when File.Exists(Path.Combine(adapters, a.Name + ".safetensors")) -> Some(spec, a)
        | _ -> None)
for spec, attacks in patchAttacks |> List.groupBy fst do
    let tokens = triggerTokens spec cfg.Vision.ImageSize cfg.Vision.PatchSize
    let trigger = Triggers.BadNetPatch spec
    printfn "trigger tokens %s of %d" (String.Join(",", tokens)) cfg.ImageSeqLength
    show "clean base" clean trigger tokens
    for _, attack in attacks do
        use backdoored = LlavaSession.Load(modelDir, adapter = Path.Combine(adapters, attack.Name + ".safetensors"))
        show attack.Name backdoored trigger tokens
