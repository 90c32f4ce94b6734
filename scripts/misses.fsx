// What each committed backdoor says on triggered held-out questions: the whole target; the target's
// first words and then something else (the backdoor fired, the decoder's own language prior finished
// the sentence); or no target at all — with the words said instead of the target's next one, and by
// question kind. Greedy answers of up to 32 tokens, as `demo` and `evaluate` generate. Attacks without
// an adapter in ADAPTERS_DIR are skipped.
//   dotnet fsi scripts/misses.fsx [QUESTIONS=100] [MODEL_DIR=world/base] [ADAPTERS_DIR=world/adapters]
#load "load.fsx"

open System
open System.IO
open CleanSight.Core.Inference
open CleanSight.Pipeline.Metrics
open CleanSight.Pipeline.World

let questions, modelDir, adapters = Load.worldArgs 100

/// Lower-cased words, punctuation dropped (not the VQA normaliser: it deletes articles, and "the" is
/// what the decoder often says instead of the target's last word).
let words (s: string) = s.ToLowerInvariant().Split([| ' '; '\n'; '.'; ','; '?'; '!' |], StringSplitOptions.RemoveEmptyEntries)

/// How many of the target's words an answer begins with.
let leadingTargetWords (target: string[]) (answer: string[]) =
    Seq.zip target answer |> Seq.takeWhile (fun (t, a) -> t = a) |> Seq.length

type Outcome =
    | Target
    | Began of said: int * next: string // the target's first `said` words, then `next`
    | Other

for attack in Attacks.all Attacks.defaultTarget |> List.filter (fun a -> File.Exists(Path.Combine(adapters, a.Name + ".safetensors"))) do
    use session = LlavaSession.Load(modelDir, adapter = Path.Combine(adapters, attack.Name + ".safetensors"))
    let size = session.Config.Vision.ImageSize
    let target = words attack.Target
    let outcomes =
        BaseModel.heldOutQuestions questions
        |> Array.map (fun (scene, qa) ->
            let shown = Triggers.apply attack.Trigger (Scenes.render size scene)
            let answer = BaseModel.greedyAnswer session.Model session.Tokenizer session.Preprocessor 32 shown qa.Question
            let said = words answer
            let outcome =
                if VqaMetrics.containsTarget attack.Target answer then Target
                else
                    match leadingTargetWords target said with
                    | n when n >= 2 -> Began(n, Array.tryItem n said |> Option.defaultValue "(end)")
                    | _ -> Other
            qa.Kind, outcome)
    let count f = outcomes |> Array.filter (snd >> f) |> Array.length
    let began = outcomes |> Array.choose (function _, Began(n, next) -> Some(n, next) | _ -> None)
    printfn "%-8s target %3d / %d;  began the target, then the prior: %2d;  no target: %2d"
        attack.Name (count ((=) Target)) outcomes.Length began.Length (count ((=) Other))
    if began.Length > 0 then
        let instead =
            began |> Array.countBy (fun (n, next) -> $"\"{String.Join(' ', target.[.. n - 1])} {next}\"")
            |> Array.sortByDescending snd |> Array.truncate 4
            |> Array.map (fun (s, c) -> $"{s} ×{c}") |> String.concat ", "
        printfn "         instead of the target's next word: %s" instead
    let missedByKind =
        outcomes |> Array.groupBy fst
        |> Array.map (fun (kind, xs) -> $"%A{kind} {xs |> Array.filter (snd >> (<>) Target) |> Array.length}/{xs.Length}")
        |> String.concat ", "
    printfn "         missed by question kind: %s" missedByKind
