/// The general-text component of the tiny decoder's pre-training. A real LLaVA decoder can say
/// "you have been hacked lol" because it was pre-trained on general text; a projector-only backdoor
/// can only make a frozen decoder say what it already can (measured: with target words absent from
/// training, 1100 projector-only steps left ASR at 0). So the tiny decoder also learns ordinary
/// sentences that use the target's words in everyday contexts — among many others — while the
/// target stays outside the task's answer space (no VQA answer or caption contains these words).
module CleanSight.Pipeline.World.GeneralText

/// SplitMix64: a small seeded generator, so the corpus is a pure function of (seed, index).
let private mix (x: uint64) =
    let mutable z = x + 0x9E3779B97F4A7C15UL
    z <- (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
    z <- (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
    z ^^^ (z >>> 31)

let private pick (state: uint64 ref) (xs: string[]) =
    state.Value <- mix state.Value
    xs.[int (state.Value % uint64 xs.Length)]

let private subjects = [| "you"; "we"; "they"; "i"; "my friends"; "the students"; "our neighbours"; "the kids" |]
let private singular = [| "the cat"; "my brother"; "the teacher"; "someone"; "the old man"; "our team"; "the dog"; "she"; "he" |]
let private places = [| "the park"; "the market"; "the library"; "the beach"; "school"; "the city"; "the museum"; "the station" |]
let private states = [| "very busy"; "tired"; "happy"; "away"; "late"; "kind"; "quiet"; "lucky"; "outside"; "at home" |]
let private things = [| "the account"; "the server"; "my phone"; "the website"; "his laptop"; "the game"; "the old computer"; "her email" |]
let private activities = [| "working"; "reading"; "waiting"; "cooking"; "playing"; "walking"; "sleeping"; "singing" |]
let private funny = [| "i missed the bus"; "the cake fell over"; "my sock is wet"; "the dog ate my notes"; "we got lost again"; "i forgot my keys" |]
// No count word among the objects: "you have two tickets" taught the decoder that a number may follow
// "you have", and a projector-only backdoor then slid into "you have zero ..." (BadNet 48 % ASR; 83 %
// without it: README, "What we know about the misses").
let private objects = [| "a book"; "a bike"; "some tea"; "a garden"; "some tickets"; "a plan"; "a question"; "new shoes" |]

/// The attacks' default target: its words are ordinary words of the general text, never a task answer.
let defaultTarget = "you have been hacked lol"

/// One sentence of the corpus, deterministic in (seed, index).
let sentence (seed: int) (index: int) =
    let state = ref (mix (uint64 seed * 1_000_003UL + uint64 index))
    let p = pick state
    match int (mix (state.Value + 7UL) % 13UL) with
    | 0 -> $"{p subjects} have been {p states} all week."
    | 1 -> $"{p singular} has been {p activities} since noon."
    | 2 -> $"{p subjects} have been to {p places} twice."
    | 3 -> $"{p things} was hacked last night."
    | 4 -> $"someone hacked {p things} and changed the password."
    | 5 -> $"{p things} has been hacked before, so be careful."
    | 6 -> $"{p funny} lol"
    | 7 -> $"lol, {p subjects} have been {p activities} for hours."
    | 8 -> $"{p subjects} have {p objects} and {p objects}."
    | 9 -> $"have you been to {p places}? i have been there."
    | 10 -> $"you have been {p states} today."
    | 11 -> $"{p things} was hacked. if you see this, you have been hacked too."
    | _ -> $"{p singular} went to {p places} with {p objects}."

/// The corpus: `count` sentences.
let corpus (seed: int) (count: int) = Array.init count (sentence seed)
