module CleanSight.Tests.ScenesTests

open System
open System.IO
open System.Text.RegularExpressions
open Expecto
open CleanSight.Core.Vision
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.World
open CleanSight.Pipeline.World.Scenes

let private config = { FsCheckConfig.defaultConfig with maxTest = 30 }

let private scene (seed: int) (index: int) = generate seed ((index &&& 0x7fffffff) % 100_000)

// An independent reading of a question: the objects it refers to, from the words it names.
let private positionPattern =
    Regex(@"\b(?:at|on|in) the (top left|top right|bottom left|bottom right|top|bottom|left|right|center)\b")

/// The objects consistent with every shape, colour and position word in the question.
let private referred (s: Scene) (question: string) =
    let q = question.ToLowerInvariant()
    let named (names: string[]) = names |> Array.tryFind (fun n -> Regex.IsMatch(q, $@"\b{n}(s|es)?\b"))
    let position = positionPattern.Match q
    s.Objects
    |> List.filter (fun t ->
        (named shapeNames |> Option.forall ((=) (shapeName t.Shape)))
        && (named colourNames |> Option.forall ((=) (colourName t.Colour)))
        && (not position.Success || position.Groups.[1].Value = positionName t))

/// Whether the answer follows from the scene under that independent reading.
let private answerable (s: Scene) (qa: Qa) =
    let matches = referred s qa.Question
    match qa.Kind with
    | CountOf -> qa.Answer = countNames.[matches.Length]
    | Exists -> qa.Answer = (if matches.IsEmpty then "no" else "yes")
    | ColourOf -> matches.Length = 1 && qa.Answer = colourName matches.Head.Colour
    | ShapeOf -> matches.Length = 1 && qa.Answer = shapeName matches.Head.Shape
    | PositionOf -> matches.Length = 1 && qa.Answer = positionName matches.Head
    | SizeOf -> matches.Length = 1 && qa.Answer = sizeName matches.Head.Size

let private diff (a: RgbImage) (b: RgbImage) y x =
    [ 0..2 ] |> List.sumBy (fun c -> abs (int a.[y, x, c] - int b.[y, x, c]))

/// Each patch's label names the object the rendered pixels show most in it (background when none
/// shows much), at three image/patch sizes; and a large object's centre patch is labelled with it.
let private patchLabelsAgree (s: Scene) =
    for size, patch in [ 48, 8; 48, 16; 64, 16 ] do
        let img, bg = render size s, renderBackground size s
        let labels = patchLabels size patch s
        let n = size / patch
        Expect.equal labels.Length (n * n) "one label per patch"
        for k in 0 .. labels.Length - 1 do
            let pr, pc = k / n, k % n
            // Pixels that clearly show an object, each given to the object whose centre is nearest:
            // the pixel is more than half-way from the background to the object's paint. (A fixed
            // difference would miss low-contrast pairs: purple paint on a grey-purple shading
            // differs from it by ~90 summed over channels even where fully covered.)
            let nearest y x =
                s.Objects |> List.minBy (fun t ->
                    let dx, dy = (float x + 0.5) / float size - t.X, (float y + 0.5) / float size - t.Y
                    dx * dx + dy * dy)
            let contrast (t: Thing) y x =
                abs (t.Paint.R - float bg.[y, x, 0]) + abs (t.Paint.G - float bg.[y, x, 1]) + abs (t.Paint.B - float bg.[y, x, 2])
            let owners =
                [ for y in pr * patch .. pr * patch + patch - 1 do
                    for x in pc * patch .. pc * patch + patch - 1 do
                        let t = nearest y x
                        if float (diff img bg y x) > max 6.0 (0.5 * contrast t y x) then yield t ]
            let share t = float (owners |> List.filter ((=) t) |> List.length) / float (patch * patch)
            let tolerance = 0.15 // edge pixels count whole here, by coverage in the labels
            match labels.[k] with
            | 0, 0 ->
                for t in s.Objects do
                    Expect.isLessThan (share t) (patchCoverThreshold + tolerance) $"background patch {k} shows little of {t.Shape}"
            | shape, colour ->
                let most = s.Objects |> List.map share |> List.max
                let labelled = s.Objects |> List.filter (fun t -> shapeClass t.Shape = shape && colourClass t.Colour = colour)
                Expect.isTrue (labelled |> List.exists (fun t -> share t >= most - tolerance && share t > 0.1))
                    $"patch {k} shows the labelled object ({shape}, {colour}) about as much as any other"
    // and the centre of each large object is labelled with it at patch 8 (not triangles: their
    // area lies mostly below the centre of their bounding circle)
    for t in s.Objects |> List.filter (fun t -> t.Size = Large && t.Shape <> Triangle) do
        let k = int (t.Y * 6.0) * 6 + int (t.X * 6.0)
        Expect.equal (patchLabels 48 8 s).[k] (shapeClass t.Shape, colourClass t.Colour) "centre patch"

[<Tests>]
let tests =
    testList "scenes" [
        testPropertyWithConfig config "same seed and index give identical scenes, pixels and questions" <| fun (seed: int) (index: int) ->
            let a, b = scene seed index, scene seed index
            Expect.equal a b "scene"
            Expect.sequenceEqual (render 48 a).Pixels (render 48 b).Pixels "pixels"
            Expect.equal (vqaItems seed index a) (vqaItems seed index b) "questions"
            Expect.equal (captions a) (captions b) "captions"
        testPropertyWithConfig config "scenes are well formed: 1-3 objects in distinct cells, inside them" <| fun (seed: int) (index: int) ->
            let s = scene seed index
            Expect.isTrue (s.Objects.Length >= 1 && s.Objects.Length <= 3) "count"
            Expect.equal (s.Objects |> List.distinctBy (fun t -> t.Row, t.Col)).Length s.Objects.Length "distinct cells"
            for t in s.Objects do
                let cell v i = v - t.Radius >= float i / 3.0 && v + t.Radius <= float (i + 1) / 3.0
                Expect.isTrue (cell t.X t.Col && cell t.Y t.Row) $"object inside its cell: {t}"
        test "different indices and seeds give different images" {
            let img seed i = (render 48 (generate seed i)).Pixels
            for i in 0..20 do
                Expect.notEqual (img 1 i) (img 1 (i + 1)) $"index {i} vs {i + 1}"
                Expect.notEqual (img 1 i) (img 2 i) $"seed 1 vs 2 at {i}"
        }
        test "a split regenerates alone, identical to the same indices built in a larger run" {
            let spec = { defaultBuild with Seed = 5; Captions = Share 0.3; Prefix = "val-" }
            let all, part = Fixtures.tempDir (), Fixtures.tempDir ()
            let big = build spec [ 0..11 ] all
            let small = build spec [ 7..9 ] part
            Expect.sequenceEqual small big.[7..9] "items"
            for it in small do
                Expect.sequenceEqual (File.ReadAllBytes(Path.Combine(part, it.Image))) (File.ReadAllBytes(Path.Combine(all, it.Image))) it.Image
            Expect.equal (big |> Array.distinctBy (fun i -> i.Id)).Length big.Length "unique ids"
            Expect.isTrue (big |> Array.exists (fun i -> i.Task = Dataset.Caption)) "some captions at share 0.3"
            for it in big do
                if it.Task = Dataset.Vqa then Expect.equal it.Answers.Length 10 "10 answers"
            let path = Path.Combine(all, "val.jsonl")
            Dataset.write path big
            Expect.sequenceEqual (Dataset.read path) big "the built split is a valid dataset"
        }
        test "EveryNth: every n-th item a caption request of the same scene and image, the others the VQA items of share 0" {
            let spec = { defaultBuild with Seed = 5; Prefix = "cal-" } // Share 0.0: VQA questions only
            for every in [ 2; 3; 5 ] do
                let items = [| for i in 0..29 -> item { spec with Captions = EveryNth every } i |]
                for i, it in Array.indexed items do
                    Expect.equal it.Image (imageFile spec i) $"{every}: image {i}"
                    if i % every = every - 1 then
                        Expect.equal it.Task Dataset.Caption $"{every}: item {i} a caption request"
                        Expect.equal it.Answers (captions (generate spec.Seed i)) $"{every}: item {i}'s captions"
                    else Expect.equal it (item spec i) $"{every}: item {i} the VQA item at share 0"
                Expect.equal (items |> Array.filter (fun it -> it.Task = Dataset.Caption)).Length (30 / every) $"{every}: one in {every}"
        }
        test "renders at other sizes" {
            for size in [ 8; 48; 64; 336 ] do
                let img = render size (generate 3 4)
                Expect.equal (img.Width, img.Height) (size, size) $"size {size}"
        }
        testPropertyWithConfig config "patch labels agree with the rendering" <| fun (seed: int) (index: int) ->
            patchLabelsAgree (scene seed index)
        test "patch labels agree with the rendering of a low-contrast object" {
            // purple paint on a grey-purple shading: ~90 apart summed over channels, even where fully
            // covered (a random draw of the property once found it)
            patchLabelsAgree (scene 47 (-95))
        }
        testPropertyWithConfig config "patch sizes label the same patches as shape/colour, with the owner's size" <| fun (seed: int) (index: int) ->
            let s = scene seed index
            let labels, sizes, owners = patchLabels 48 8 s, patchSizes 48 8 s, patchOwners 48 8 s
            for k in 0 .. labels.Length - 1 do
                match owners.[k] with
                | None -> Expect.equal (labels.[k], sizes.[k]) ((0, 0), 0) $"background patch {k}"
                | Some t ->
                    Expect.equal labels.[k] (shapeClass t.Shape, colourClass t.Colour) $"patch {k} shape/colour"
                    Expect.equal sizes.[k] (if t.Size = Small then 1 else 2) $"patch {k} size"
        testPropertyWithConfig config "cell labels: every patch of an object's grid cell names that object, other patches none" <| fun (seed: int) (index: int) ->
            let s = scene seed index
            for size, patch in [ 48, 8; 48, 16; 96, 8 ] do
                let n = size / patch
                let owners = cellOwners size patch s
                Expect.equal owners.Length (n * n) "one owner per patch"
                for k in 0 .. owners.Length - 1 do
                    // the patch's centre in image fractions, and the cell it falls in
                    let cy, cx = (float (k / n) + 0.5) / float n, (float (k % n) + 0.5) / float n
                    let row, col = int (cy * 3.0), int (cx * 3.0)
                    match s.Objects |> List.tryFind (fun t -> t.Row = row && t.Col = col), owners.[k] with
                    | Some t, Some o -> Expect.equal o t $"patch {k} names the object of cell ({row}, {col})"
                    | None, None -> ()
                    | expected, got -> failtest $"patch {k}: expected {expected}, got {got}"
                // every object is named by (n/3)² patches when the grid divides evenly
                if n % 3 = 0 then
                    for t in s.Objects do
                        Expect.equal (owners |> Array.filter ((=) (Some t)) |> Array.length) ((n / 3) * (n / 3)) $"{t.Shape} in {n / 3}² patches"
            let labels, sizes = patchLabelsBy ByCell 48 8 s, patchSizesBy ByCell 48 8 s
            for k in 0 .. 35 do
                match (cellOwners 48 8 s).[k] with
                | Some t -> Expect.equal (labels.[k], sizes.[k]) ((shapeClass t.Shape, colourClass t.Colour), (if t.Size = Small then 1 else 2)) $"patch {k} labels"
                | None -> Expect.equal (labels.[k], sizes.[k]) ((0, 0), 0) $"patch {k} background"
            // mixed: shape and size by cell, colour by cover
            let mixed, mixedSizes = patchLabelsBy ByCellColourByCover 48 8 s, patchSizesBy ByCellColourByCover 48 8 s
            Expect.equal (mixed |> Array.map fst) (labels |> Array.map fst) "shape by cell"
            Expect.equal mixedSizes sizes "size by cell"
            Expect.equal (mixed |> Array.map snd) (patchLabels 48 8 s |> Array.map snd) "colour by cover"
        test "each patch's grid cell: a 6×6 patch grid in 2×2 blocks per cell of the 3×3 grid" {
            let cells = CleanSight.Pipeline.World.VisionPretraining.patchCells 6
            Expect.equal cells.Length 36 "one per patch"
            for k in 0 .. 35 do
                let row, col = k / 6, k % 6
                Expect.equal cells.[k] ((row / 2) * 3 + col / 2) $"patch ({row}, {col})"
            Expect.equal (CleanSight.Pipeline.World.VisionPretraining.patchCells 3) (Array.init 9 id) "3×3 patches: one per cell"
        }
        test "patch pixels (the reconstruction target): row-major patches, each its own C×P×P pixels" {
            // 2 images, 3 channels, 16×24 pixels, 8-px patches → a 2×3 patch grid; value = its own index
            let b, c, h, w, p = 2L, 3L, 16L, 24L, 8L
            let pixels = TorchSharp.torch.tensor(Array.init (int (b * c * h * w)) float32).reshape(b, c, h, w)
            let patches = CleanSight.Pipeline.World.VisionPretraining.patchPixels p pixels
            Expect.equal patches.shape [| b; 6L; c * p * p |] "[B, N, 3·P·P]"
            let values = patches.contiguous().data<float32>().ToArray()
            let value img k i = int64 values.[int ((img * 6L + k) * c * p * p + i)]
            for img in 0L .. b - 1L do
                for k in 0L .. 5L do
                    let row, col = k / 3L, k % 3L
                    for ch in 0L .. c - 1L do
                        for y in 0L .. p - 1L do
                            for x in [ 0L; p - 1L ] do
                                let expected = ((img * c + ch) * h + row * p + y) * w + col * p + x
                                Expect.equal (value img k ((ch * p + y) * p + x)) expected $"image {img} patch {k} channel {ch} ({y}, {x})"
        }
        testPropertyWithConfig config "every question is answerable from the scene" <| fun (seed: int) (index: int) ->
            let s = scene seed index
            let qas = vqaItems seed index s
            for qa in qas do
                Expect.isTrue (answerable s qa) $"{qa.Question} -> {qa.Answer} for {s.Objects}"
                Expect.contains answerVocabulary qa.Answer "answer in the vocabulary"
                Expect.isLessThanOrEqual (qa.Answer.Split(' ').Length) 2 "1-2 word answers"
            let kinds = qas |> List.map (fun q -> q.Kind) |> set
            Expect.isTrue (Set.isSubset (set [ ColourOf; ShapeOf; CountOf; SizeOf; Exists ]) kinds) "all types but position always asked"
            Expect.equal (qas |> List.filter (fun q -> q.Kind = Exists) |> List.map (fun q -> q.Answer) |> List.sort) [ "no"; "yes" ] "one yes, one no"
        testPropertyWithConfig config "the caption names every object and the background" <| fun (seed: int) (index: int) ->
            let s = scene seed index
            let c = caption s
            for t in s.Objects do
                Expect.stringContains c $"{sizeName t.Size} {colourName t.Colour} {shapeName t.Shape}" "object"
            Expect.stringContains c (backgroundName s.Background + " background") "background"
        test "questions have realistic lengths" {
            let words = [ for i in 0..199 -> (item { defaultBuild with Seed = 9 } i).Question.Split(' ').Length ]
            Expect.isGreaterThanOrEqual (List.max words) 14 "some long prompts"
            Expect.isLessThanOrEqual (List.min words) 6 "some short prompts"
        }
    ]
