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

let private pick (state: uint64 ref) (xs: 'a[]) =
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
// without it: docs/tiny-world.md, "What we know about the misses").
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

// ---- the scenes' words in everyday sentences ----------------------------------------------------------

let private nouns = [| "car"; "ball"; "kite"; "hat"; "cup"; "door"; "flag"; "book" |]
let private surfaces = [| "shelf"; "page"; "wall"; "table" |]
let private sizes = [| Scenes.Small; Scenes.Large |] |> Array.map Scenes.sizeName
let private positions = Scenes.positionNames |> Array.filter ((<>) "center")
let private corners = Scenes.positionNames |> Array.filter (fun n -> n.Contains ' ') // "top left", …

/// One everyday sentence that uses the scenes' colour, shape, size, position and count words about
/// other things, deterministic in (seed, index). No count word follows "have" (see `objects`).
let sceneWordSentence (seed: int) (index: int) =
    let state = ref (mix (uint64 seed * 2_000_003UL + uint64 index + 0x5CE7E5UL))
    let p = pick state
    let colour () = p Scenes.colourNames
    match int (mix (state.Value + 11UL) % 10UL) with
    | 0 -> $"the {colour ()} {p nouns} is at the {p positions} of the {p surfaces}."
    | 1 -> $"she drew {Scenes.article (p sizes)} {colour ()} {p Scenes.shapeNames} on the board."
    | 2 -> $"there are {p Scenes.countNames.[1..]} {colour ()} {p nouns}s in the box."
    | 3 -> let c = colour () in $"my {p nouns} is {c}, not {p (Scenes.colourNames |> Array.filter ((<>) c))}."
    | 4 -> $"the sign shows {Scenes.article (colour ())} {p Scenes.shapeNames} on a grey background."
    | 5 -> $"the {p sizes} {p nouns} is {colour ()}."
    | 6 -> $"what color is the {p nouns}? it is {colour ()}."
    | 7 -> let size = p sizes in $"is the {p nouns} small or large? it is {size}."
    | 8 -> $"i can see {p Scenes.countNames.[1..]} {Scenes.plural (pick state Scenes.shapes)} on the {p surfaces}."
    | _ -> $"the {colour ()} {p Scenes.shapeNames} is in the {p corners} corner of the {p surfaces}."

// ---- reading-comprehension passages about scenes described in words ---------------------------------

/// The scene seed of the passages' scenes (never rendered; apart from every split of images).
let passageSplit (seed: int) = 9000 + seed

/// One passage, deterministic in (seed, index): a scene of its own described in words (each object
/// "a large red circle at the top left", in shuffled order), then one of the questions the world asks
/// of such a scene and its answer — "a small blue square on the right and a large red circle at the top
/// left. What color is the circle? red." A pre-trained LLM can find a thing named in its context and
/// copy what is said of it; our decoder learns that here, on the scenes' words, before it sees an image.
let passage (seed: int) (index: int) =
    let split = passageSplit seed
    let scene = Scenes.generate split index
    let rng = Scenes.Rng.Keyed [ int64 seed; int64 index; 6L ]
    let described (t: Scenes.Thing) =
        Scenes.article $"{Scenes.sizeName t.Size} {Scenes.colourName t.Colour} {Scenes.shapeName t.Shape}" + " " + Scenes.positionPhrase t
    let description = System.String.Join(" and ", rng.Shuffle(List.toArray scene.Objects) |> Array.map described)
    let qa = rng.Pick(Scenes.vqaItems split index scene |> List.toArray)
    $"{description}. {qa.Question} {qa.Answer}."

/// Which general text the decoder learns language from (LLaVA's LLM comes pre-trained on text).
type Corpus =
    /// everyday sentences that use the target's words among others (the committed base's)
    | Everyday
    /// every other sentence from `Everyday`, the rest everyday sentences that use the scenes' words
    /// (`sceneWordSentence`): a pre-trained LLM knows "red" and "circle" before it sees an image, and
    /// LLaVA's alignment stage maps image features onto words its decoder already knows
    | WithSceneWords
    /// every other sentence from `Everyday`, the rest reading-comprehension passages about scenes
    /// described in words (`passage`)
    | WithPassages

/// `count` sentences of the corpus `kind`.
let corpusOf (kind: Corpus) (seed: int) (count: int) =
    match kind with
    | Everyday -> corpus seed count
    | WithSceneWords -> Array.init count (fun i -> if i % 2 = 0 then sentence seed (i / 2) else sceneWordSentence seed (i / 2))
    | WithPassages -> Array.init count (fun i -> if i % 2 = 0 then sentence seed (i / 2) else passage seed (i / 2))
