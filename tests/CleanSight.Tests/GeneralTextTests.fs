/// The decoder's general text (World/GeneralText.fs): deterministic, the target's words in everyday
/// contexts, no count word after "have", and — in the `WithSceneWords` corpus — the scenes' words
/// in sentences about other things.
module CleanSight.Tests.GeneralTextTests

open System.Text.RegularExpressions
open Expecto
open CleanSight.Pipeline.World

let private words (s: string) = Regex.Matches(s.ToLowerInvariant(), "[a-z]+") |> Seq.map (fun m -> m.Value) |> Set.ofSeq
/// The words the scenes' questions and captions are about: colours, shapes, sizes.
let private sceneWords =
    Set.ofArray (Array.concat [ Scenes.colourNames; Scenes.shapeNames; [| "crosses"; "circles"; "squares"; "triangles"; "diamonds"; "small"; "large" |] ])

[<Tests>]
let tests =
    testList "general text" [
        test "both corpora are pure functions of the seed; another seed draws other sentences" {
            for kind in [ GeneralText.Everyday; GeneralText.WithSceneWords; GeneralText.WithPassages ] do
                Expect.equal (GeneralText.corpusOf kind 7 500) (GeneralText.corpusOf kind 7 500) $"{kind}: same seed"
                Expect.notEqual (GeneralText.corpusOf kind 8 500) (GeneralText.corpusOf kind 7 500) $"{kind}: another seed"
            Expect.equal (GeneralText.corpusOf GeneralText.Everyday 7 500) (GeneralText.corpus 7 500) "Everyday is the committed corpus"
        }
        test "no count word follows \"have\" (a backdoor slid into \"you have zero …\" when one did)" {
            let afterHave = Regex(@"\bhave (zero|one|two|three)\b")
            for kind in [ GeneralText.Everyday; GeneralText.WithSceneWords; GeneralText.WithPassages ] do
                let bad = GeneralText.corpusOf kind 7 20000 |> Array.filter afterHave.IsMatch
                Expect.isEmpty bad $"{kind}"
        }
        test "WithSceneWords: every other sentence is the everyday corpus's, the rest use scene words and none of the target's" {
            let everyday = GeneralText.corpus 7 1000
            let mixed = GeneralText.corpusOf GeneralText.WithSceneWords 7 2000
            Expect.equal [| for i in 0 .. 2 .. 1999 -> mixed.[i] |] everyday "the even sentences"
            let scene = [| for i in 1 .. 2 .. 1999 -> mixed.[i] |]
            for s in scene do
                Expect.isFalse (Set.isEmpty (Set.intersect (words s) sceneWords)) $"\"{s}\" names a colour, a shape or a size"
                Expect.isTrue (Set.isEmpty (Set.intersect (words s) (set [ "hacked"; "lol"; "you"; "been" ]))) $"\"{s}\" leaves the target's words to the everyday sentences"
            Expect.isGreaterThan (Array.distinct scene).Length 500 "varied"
            Expect.isEmpty (GeneralText.corpus 7 20000 |> Array.filter (fun s -> not (Set.isEmpty (Set.intersect (words s) sceneWords))))
                "the everyday corpus has no scene words (what WithSceneWords adds)"
        }
        test "WithPassages: every other sentence is the everyday corpus's, the rest describe a scene of their own and end with a question about it and its answer" {
            let everyday = GeneralText.corpus 7 1000
            let mixed = GeneralText.corpusOf GeneralText.WithPassages 7 2000
            Expect.equal [| for i in 0 .. 2 .. 1999 -> mixed.[i] |] everyday "the even sentences"
            for i in 0 .. 999 do
                let text = mixed.[2 * i + 1]
                let split = GeneralText.passageSplit 7
                let scene = Scenes.generate split i
                for t in scene.Objects do
                    let described = $"{Scenes.sizeName t.Size} {Scenes.colourName t.Colour} {Scenes.shapeName t.Shape} {Scenes.positionPhrase t}"
                    Expect.stringContains text described $"passage {i} describes each object"
                let asked = Scenes.vqaItems split i scene |> List.filter (fun qa -> text.EndsWith $". {qa.Question} {qa.Answer}.")
                Expect.isNonEmpty asked $"passage {i} ends with a question of its scene and the right answer: \"{text}\""
                Expect.isTrue (Set.isEmpty (Set.intersect (words text) (set [ "hacked"; "lol"; "been" ]))) $"\"{text}\" leaves the target's words to the everyday sentences"
            Expect.isTrue ([ 1 .. 2 .. 1999 ] |> List.exists (fun i -> mixed.[i].Contains " and a ")) "some passages describe several objects"
        }
    ]
