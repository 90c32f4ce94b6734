/// The tiny synthetic world: seeded scenes of 1–3 coloured shapes on a 3×3 grid over a textured,
/// muted background, rendered at any square size with anti-aliased edges. Every scene is a pure
/// function of (seed, index), so any split can be regenerated alone. Sections: randomness, the world,
/// rendering (+ per-patch labels), questions and captions, building dataset items.
module CleanSight.Pipeline.World.Scenes

open System
open System.IO
open CleanSight.Core.Vision
open CleanSight.Pipeline.Data

// ---------------------------------------------------------------- randomness

/// SplitMix64 (Steele, Lea & Flood 2014) as pure hashing, plus a keyed stream built on it.
module Hash =
    let golden = 0x9E3779B97F4A7C15UL

    /// The SplitMix64 finaliser: a bijective 64-bit mix.
    let mix (z: uint64) =
        let z = (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        let z = (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z ^^^ (z >>> 31)

    /// A 64-bit hash of a list of keys (order matters).
    let keys (ks: int64 list) = ks |> List.fold (fun h k -> mix ((h + golden) ^^^ uint64 k)) golden

    /// The top 53 bits as a float in [0, 1).
    let unit (h: uint64) = float (h >>> 11) * (1.0 / 9007199254740992.0)

/// A SplitMix64 stream. It has mutable state: create one inside a computation from that
/// computation's keys (`Rng.Keyed [seed; index; purpose]`) and never share it.
type Rng(seed: uint64) =
    let mutable state = seed
    static member Keyed(keys: int64 list) = Rng(Hash.keys keys)
    member _.Next() =
        state <- state + Hash.golden
        Hash.mix state
    /// Uniform in [0, 1).
    member r.Float() = Hash.unit (r.Next())
    /// Uniform in [lo, hi).
    member r.Range(lo: float, hi: float) = lo + (hi - lo) * r.Float()
    /// Uniform in 0 .. n-1.
    member r.Int(n: int) = int (r.Float() * float n)
    /// Standard normal (Box–Muller).
    member r.Gaussian() =
        let u1 = 1.0 - r.Float()
        let u2 = r.Float()
        sqrt (-2.0 * log u1) * cos (2.0 * Math.PI * u2)
    member r.Pick(xs: 'a[]) = xs.[r.Int xs.Length]
    /// A shuffled copy (Fisher–Yates).
    member r.Shuffle(xs: 'a[]) =
        let a = Array.copy xs
        for i in a.Length - 1 .. -1 .. 1 do
            let j = r.Int(i + 1)
            let t = a.[i]
            a.[i] <- a.[j]
            a.[j] <- t
        a

// ---------------------------------------------------------------- the world

type Shape = Circle | Square | Triangle | Diamond | Cross
type Colour = Red | Green | Blue | Yellow | Purple | Orange
type Size = Small | Large

/// A colour in 0..255 per channel, kept as floats until rendering.
type Rgb = { R: float; G: float; B: float }

/// The background texture; lengths and positions are fractions of the image side, angles in radians.
type Pattern =
    | Mottled of cells: int                    // two octaves of value noise on a cells×cells lattice
    | Striped of angle: float * period: float  // soft sinusoidal stripes
    | Checkered of angle: float * cell: float  // rotated checkerboard with soft edges
    | Shaded of angle: float                   // linear gradient
/// `Key` seeds the noise lattice and the per-pixel grain.
type Background = { Pattern: Pattern; Dark: Rgb; Light: Rgb; Key: uint64 }

/// One object; it lies inside its grid cell (Row, Col ∈ 0..2), so objects never overlap.
/// X, Y (centre) and Radius are fractions of the image side; Paint is its colour after a small jitter.
type Thing = { Shape: Shape; Colour: Colour; Size: Size; Row: int; Col: int; X: float; Y: float; Radius: float; Paint: Rgb }

/// Objects in reading order (row, then column).
type Scene = { Objects: Thing list; Background: Background }

let shapes = [| Circle; Square; Triangle; Diamond; Cross |]
let colours = [| Red; Green; Blue; Yellow; Purple; Orange |]
let shapeNames = [| "circle"; "square"; "triangle"; "diamond"; "cross" |]
let colourNames = [| "red"; "green"; "blue"; "yellow"; "purple"; "orange" |]
/// Class ids for patch labels: 1..shapes.Length and 1..colours.Length; 0 is background.
let shapeClass (s: Shape) = Array.IndexOf(shapes, s) + 1
let colourClass (c: Colour) = Array.IndexOf(colours, c) + 1
let shapeName (s: Shape) = shapeNames.[shapeClass s - 1]
let colourName (c: Colour) = colourNames.[colourClass c - 1]
let sizeName = function Small -> "small" | Large -> "large"

let private rgb r g b = { R = r; G = g; B = b }
let colourValue =
    function
    | Red -> rgb 215.0 45.0 45.0
    | Green -> rgb 50.0 170.0 70.0
    | Blue -> rgb 50.0 90.0 220.0
    | Yellow -> rgb 230.0 205.0 50.0
    | Purple -> rgb 145.0 65.0 185.0
    | Orange -> rgb 240.0 135.0 35.0

/// Object radius as a fraction of the side; a grid cell is 1/3 wide, so both fit with room to move.
let radius = function Small -> 0.11 | Large -> 0.15

/// The scene for (seed, index): 1–3 objects in distinct cells, a random texture. Pure.
let generate (seed: int) (index: int) : Scene =
    let rng = Rng.Keyed [ int64 seed; int64 index; 1L ]
    let count = 1 + rng.Int 3
    let cells = rng.Shuffle [| 0..8 |] |> Array.take count |> Array.sort
    let jitter v = Math.Clamp(v + rng.Range(-12.0, 12.0), 0.0, 255.0)
    let things =
        [ for cell in cells ->
            let shape, colour = rng.Pick shapes, rng.Pick colours
            let size = if rng.Float() < 0.5 then Small else Large
            let r = radius size
            let slack = 1.0 / 6.0 - r - 0.01 // keeps the object inside its cell
            let row, col = cell / 3, cell % 3
            let x = (float col + 0.5) / 3.0 + rng.Range(-slack, slack)
            let y = (float row + 0.5) / 3.0 + rng.Range(-slack, slack)
            let c = colourValue colour
            let paint = rgb (jitter c.R) (jitter c.G) (jitter c.B)
            { Shape = shape; Colour = colour; Size = size; Row = row; Col = col; X = x; Y = y; Radius = r; Paint = paint } ]
    let pattern =
        match rng.Int 4 with
        | 0 -> Mottled(3 + rng.Int 5)
        | 1 -> Striped(rng.Range(0.0, Math.PI), rng.Range(0.08, 0.25))
        | 2 -> Checkered(rng.Range(0.0, Math.PI / 2.0), rng.Range(0.08, 0.2))
        | _ -> Shaded(rng.Range(0.0, 2.0 * Math.PI))
    // Muted, greyish palette: a grey level, a modest contrast, a slight tint per end.
    let grey, contrast = rng.Range(85.0, 170.0), rng.Range(25.0, 60.0)
    let tone offset = rgb (grey + offset + rng.Range(-12.0, 12.0)) (grey + offset + rng.Range(-12.0, 12.0)) (grey + offset + rng.Range(-12.0, 12.0))
    let dark = tone (-contrast / 2.0)
    let light = tone (contrast / 2.0)
    { Objects = things; Background = { Pattern = pattern; Dark = dark; Light = light; Key = rng.Next() } }

// ---------------------------------------------------------------- rendering

/// Whether (u, v) — offsets from the centre in units of the radius, v pointing down — is inside the shape.
let private inside (shape: Shape) (u: float) (v: float) =
    match shape with
    | Circle -> u * u + v * v <= 1.0
    | Square -> abs u <= 0.82 && abs v <= 0.82
    | Triangle -> v >= -0.9 && v <= 0.85 && abs u <= (v + 0.9) / 1.75 // apex up
    | Diamond -> abs u + abs v <= 1.0
    | Cross -> (abs u <= 0.32 && abs v <= 0.95) || (abs v <= 0.32 && abs u <= 0.95)

/// Supersampling per pixel side (n×n samples).
let private supersample = 4

/// [size·size] fraction of each pixel covered by the object, row-major.
let coverage (size: int) (t: Thing) : float[] =
    let cov = Array.zeroCreate (size * size)
    let s = float size
    let lo v = max 0 (int (floor ((v - t.Radius) * s)) - 1)
    let hi v = min (size - 1) (int (ceil ((v + t.Radius) * s)) + 1)
    let n = supersample
    for py in lo t.Y .. hi t.Y do
        for px in lo t.X .. hi t.X do
            let mutable hits = 0
            for sy in 0 .. n - 1 do
                for sx in 0 .. n - 1 do
                    let x = (float px + (float sx + 0.5) / float n) / s
                    let y = (float py + (float sy + 0.5) / float n) / s
                    if inside t.Shape ((x - t.X) / t.Radius) ((y - t.Y) / t.Radius) then hits <- hits + 1
            cov.[py * size + px] <- float hits / float (n * n)
    cov

let private smoothstep t = t * t * (3.0 - 2.0 * t)
let private clamp01 (t: float) = Math.Clamp(t, 0.0, 1.0)

/// Value noise in [0, 1] at (u, v) on a cells×cells lattice with random values from `key`.
let private valueNoise (key: uint64) (cells: int) (u: float) (v: float) =
    let gx, gy = u * float cells, v * float cells
    let i, j = floor gx, floor gy
    let fx, fy = smoothstep (gx - i), smoothstep (gy - j)
    let at di dj = Hash.unit (Hash.keys [ int64 key; int64 cells; int64 i + di; int64 j + dj ])
    let top = at 0L 0L + (at 1L 0L - at 0L 0L) * fx
    let bottom = at 0L 1L + (at 1L 1L - at 0L 1L) * fx
    top + (bottom - top) * fy

/// The texture's mix between Dark (0) and Light (1) at normalised (u, v).
let private texture (bg: Background) (u: float) (v: float) =
    let mottle = valueNoise bg.Key 4 u v
    let along a = u * cos a + v * sin a
    let across a = -u * sin a + v * cos a
    match bg.Pattern with
    | Mottled cells -> 0.65 * valueNoise bg.Key cells u v + 0.35 * valueNoise (bg.Key + 1UL) (3 * cells) u v
    | Striped (a, period) -> 0.75 * (0.5 + 0.5 * sin (2.0 * Math.PI * along a / period)) + 0.25 * mottle
    | Checkered (a, cell) ->
        let s = sin (Math.PI * along a / cell) * sin (Math.PI * across a / cell)
        0.75 * clamp01 (0.5 + 2.0 * s) + 0.25 * mottle
    | Shaded a -> 0.6 * clamp01 (0.5 + 1.2 * (along a - 0.5 * (cos a + sin a))) + 0.4 * valueNoise bg.Key 6 u v

/// Per-pixel grain amplitude (±, in 0..255 units): faint, so ISSBA-like residuals stay distinguishable.
let private grain = 4.0

/// The background alone, [size, size, 3] as floats 0..255.
let private backgroundPixels (size: int) (bg: Background) : float[] =
    let px = Array.zeroCreate (size * size * 3)
    for y in 0 .. size - 1 do
        for x in 0 .. size - 1 do
            let t = texture bg ((float x + 0.5) / float size) ((float y + 0.5) / float size)
            let g c = grain * (2.0 * Hash.unit (Hash.keys [ int64 bg.Key; int64 size; int64 x; int64 y; c ]) - 1.0)
            let o = (y * size + x) * 3
            px.[o] <- bg.Dark.R + (bg.Light.R - bg.Dark.R) * t + g 0L
            px.[o + 1] <- bg.Dark.G + (bg.Light.G - bg.Dark.G) * t + g 1L
            px.[o + 2] <- bg.Dark.B + (bg.Light.B - bg.Dark.B) * t + g 2L
    px

let private toImage (size: int) (px: float[]) =
    RgbImage(size, size, px |> Array.map (fun v -> byte (Math.Clamp(Math.Round v, 0.0, 255.0))))

/// The background without objects, as rendered under `render`.
let renderBackground (size: int) (scene: Scene) : RgbImage = toImage size (backgroundPixels size scene.Background)

/// The scene at size×size pixels: background, then each object blended by its pixel coverage.
let render (size: int) (scene: Scene) : RgbImage =
    if size < 8 then invalidArg (nameof size) $"image size {size} is too small (at least 8)"
    let px = backgroundPixels size scene.Background
    for t in scene.Objects do
        let cov = coverage size t
        for i in 0 .. cov.Length - 1 do
            let a = cov.[i]
            if a > 0.0 then
                px.[3 * i] <- px.[3 * i] * (1.0 - a) + t.Paint.R * a
                px.[3 * i + 1] <- px.[3 * i + 1] * (1.0 - a) + t.Paint.G * a
                px.[3 * i + 2] <- px.[3 * i + 2] * (1.0 - a) + t.Paint.B * a
    toImage size px

/// Share of a patch an object must cover for the patch to take its label.
let patchCoverThreshold = 0.25

/// The object labelling each patch, row-major over the (size/patch)² patches: the object covering the
/// largest share of the patch when that share is at least `patchCoverThreshold`, else None.
let patchOwners (size: int) (patch: int) (scene: Scene) : Thing option[] =
    if patch <= 0 || size % patch <> 0 then invalidArg (nameof patch) $"patch {patch} does not divide image size {size}"
    let n = size / patch
    let covers = scene.Objects |> List.map (fun t -> t, coverage size t)
    [| for pr in 0 .. n - 1 do
         for pc in 0 .. n - 1 do
             let share (cov: float[]) =
                 let mutable sum = 0.0
                 for y in pr * patch .. pr * patch + patch - 1 do
                     for x in pc * patch .. pc * patch + patch - 1 do
                         sum <- sum + cov.[y * size + x]
                 sum / float (patch * patch)
             let best = covers |> List.map (fun (t, cov) -> t, share cov) |> List.sortByDescending snd |> List.tryHead
             match best with
             | Some (t, s) when s >= patchCoverThreshold -> yield Some t
             | _ -> yield None |]

/// The object of the 3×3-grid cell each patch's centre lies in (row-major over the patches), None
/// for an empty cell. Objects never leave their cell, so the patches of a cell together show all of it.
let cellOwners (size: int) (patch: int) (scene: Scene) : Thing option[] =
    if patch <= 0 || size % patch <> 0 then invalidArg (nameof patch) $"patch {patch} does not divide image size {size}"
    let n = size / patch
    Array.init (n * n) (fun k ->
        let row, col = (2 * (k / n) + 1) * 3 / (2 * n), (2 * (k % n) + 1) * 3 / (2 * n)
        scene.Objects |> List.tryFind (fun t -> t.Row = row && t.Col = col))

/// How pre-training labels patches: by the object covering each patch (`patchOwners`), or by the
/// object of each patch's grid cell (`cellOwners`: every token of a cell names the whole object).
/// `ByCellColourByCover`: shape and size by cell, colour by cover.
type PatchLabelling =
    | ByCover
    | ByCell
    | ByCellColourByCover

/// The owners of each patch for (shape and size, colour).
let owners (labelling: PatchLabelling) size patch scene =
    match labelling with
    | ByCover -> let o = patchOwners size patch scene in o, o
    | ByCell -> let o = cellOwners size patch scene in o, o
    | ByCellColourByCover -> cellOwners size patch scene, patchOwners size patch scene

/// Per-patch (shape class, colour class) of `owners`, 0 for background.
let patchLabelsBy (labelling: PatchLabelling) (size: int) (patch: int) (scene: Scene) : (int * int)[] =
    let shapeOwners, colourOwners = owners labelling size patch scene
    Array.map2 (fun (s: Thing option) (c: Thing option) ->
        (s |> Option.map (fun t -> shapeClass t.Shape) |> Option.defaultValue 0),
        (c |> Option.map (fun t -> colourClass t.Colour) |> Option.defaultValue 0)) shapeOwners colourOwners

/// Per-patch size class of `owners` (shape's): 0 background, 1 small, 2 large.
let patchSizesBy (labelling: PatchLabelling) (size: int) (patch: int) (scene: Scene) : int[] =
    fst (owners labelling size patch scene) |> Array.map (function Some t -> (if t.Size = Small then 1 else 2) | None -> 0)

/// Per-patch (shape class, colour class) of `patchOwners`, (0, 0) for background.
let patchLabels size patch scene = patchLabelsBy ByCover size patch scene

/// Per-patch size class of `patchOwners`: 0 background, 1 small, 2 large.
let patchSizes size patch scene = patchSizesBy ByCover size patch scene

// ---------------------------------------------------------------- questions and captions

/// The question types.
type Kind = ColourOf | ShapeOf | CountOf | PositionOf | SizeOf | Exists

/// One question with its single correct answer (1–2 words).
type Qa = { Kind: Kind; Question: string; Answer: string }

/// Cell names, row-major over the 3×3 grid.
let positionNames = [| "top left"; "top"; "top right"; "left"; "center"; "right"; "bottom left"; "bottom"; "bottom right" |]
let positionName (t: Thing) = positionNames.[t.Row * 3 + t.Col]
let countNames = [| "zero"; "one"; "two"; "three" |]

/// Every answer a VQA item can have.
let answerVocabulary =
    Array.concat [ colourNames; shapeNames; countNames; positionNames; [| "yes"; "no"; "small"; "large" |] ]

/// "on the left", "in the center", "at the top right": where `t` is, as the questions say it.
let positionPhrase (t: Thing) =
    match positionName t with
    | "left" | "right" as p -> "on the " + p
    | "center" -> "in the center"
    | p -> "at the " + p

/// "circles", "crosses".
let plural (s: Shape) = if s = Cross then "crosses" else shapeName s + "s"
/// "a red circle", "an orange square".
let article (phrase: string) = (if "aeiou".Contains phrase.[0] then "an " else "a ") + phrase

/// How a reference picks its object out.
type private By = ByShape | ByColour | ByBoth | ByPosition

/// The references that pick `t` out alone in the scene ("the circle", "the red object", "the red circle",
/// "the object on the left"); the position one always does, since objects sit in distinct cells.
let private references (scene: Scene) (t: Thing) =
    let unique f = scene.Objects |> List.filter f |> List.length = 1
    [ if unique (fun o -> o.Shape = t.Shape) then ByShape, "the " + shapeName t.Shape
      if unique (fun o -> o.Colour = t.Colour) then ByColour, $"the {colourName t.Colour} object"
      if unique (fun o -> o.Shape = t.Shape && o.Colour = t.Colour) then ByBoth, $"the {colourName t.Colour} {shapeName t.Shape}"
      ByPosition, "the object " + positionPhrase t ]

let private prefixes =
    [| ""; ""; ""; "Look at the picture carefully. "; "Here is an image. "; "Please answer briefly. "
       "Take a look at this image. "; "Answer the following question about the image. " |]

let private templates =
    function
    | ColourOf -> [| "What color is {0}?"; "Which color does {0} have?"; "What is the color of {0} in this image?"; "Can you tell me what color {0} is?" |]
    | ShapeOf -> [| "What shape is {0}?"; "Which shape is {0}?"; "What kind of shape is {0} in the picture?"; "Can you tell me the shape of {0}?" |]
    | PositionOf -> [| "Where is {0}?"; "Where in the image is {0} located?"; "In which part of the picture is {0}?"; "Where can you find {0} in this image?" |]
    | SizeOf -> [| "Is {0} small or large?"; "What size is {0}, small or large?"; "How big is {0} in this image, small or large?" |]
    | Exists -> [| "Is there {0}?"; "Is there {0} in the image?"; "Does this picture contain {0}?"; "Can you see {0} here?" |]
    | CountOf -> [| "How many {0} are there?"; "How many {0} are in the image?"; "Count the {0} in this picture. How many are there?"; "How many {0} can you see?" |]

/// Every unambiguous question about the scene, one random phrasing each; pure in (seed, index, scene).
/// Colour, shape, size and position questions name each object by a reference that does not give the
/// answer away (a position question is skipped when only the position picks the object out); counts
/// cover all objects, one shape and one colour ("zero" possible); existence gives one "yes" and one "no".
let vqaItems (seed: int) (index: int) (scene: Scene) : Qa list =
    let rng = Rng.Keyed [ int64 seed; int64 index; 2L ]
    let ask kind (subject: string) (answer: string) =
        let text = rng.Pick(prefixes) + rng.Pick(templates kind).Replace("{0}", subject)
        { Kind = kind; Question = text; Answer = answer }
    let about kind (allowed: By list) answer (t: Thing) =
        match references scene t |> List.filter (fun (by, _) -> List.contains by allowed) with
        | [] -> None
        | refs -> Some(ask kind (snd (rng.Pick(List.toArray refs))) (answer t))
    let things = scene.Objects
    let count f = countNames.[things |> List.filter f |> List.length]
    let present = rng.Pick(List.toArray things)
    // Counted shape and colour: half the time one in the scene, else any (so "zero" does not dominate).
    let shape = if rng.Float() < 0.5 then present.Shape else rng.Pick shapes
    let colour = if rng.Float() < 0.5 then present.Colour else rng.Pick colours
    let absentShape = shapes |> Array.filter (fun s -> things |> List.forall (fun t -> t.Shape <> s)) |> rng.Pick
    let absentColour = colours |> Array.filter (fun c -> things |> List.forall (fun t -> t.Colour <> c)) |> rng.Pick
    let absentBoth =
        Array.allPairs colours shapes
        |> Array.filter (fun (c, s) -> things |> List.forall (fun t -> t.Colour <> c || t.Shape <> s))
        |> rng.Pick
    let describeYes, describeNo =
        match rng.Int 3 with
        | 0 -> shapeName present.Shape, shapeName absentShape
        | 1 -> colourName present.Colour + " object", colourName absentColour + " object"
        | _ -> $"{colourName present.Colour} {shapeName present.Shape}", $"{colourName (fst absentBoth)} {shapeName (snd absentBoth)}"
    [ yield! things |> List.choose (about ColourOf [ ByShape; ByPosition ] (fun t -> colourName t.Colour))
      yield! things |> List.choose (about ShapeOf [ ByColour; ByPosition ] (fun t -> shapeName t.Shape))
      yield! things |> List.choose (about PositionOf [ ByShape; ByColour; ByBoth ] positionName)
      yield! things |> List.choose (about SizeOf [ ByShape; ByColour; ByBoth; ByPosition ] (fun t -> sizeName t.Size))
      ask CountOf (rng.Pick [| "shapes"; "objects" |]) (count (fun _ -> true))
      ask CountOf (plural shape) (count (fun t -> t.Shape = shape))
      ask CountOf (colourName colour + " objects") (count (fun t -> t.Colour = colour))
      ask Exists (article describeYes) "yes"
      ask Exists (article describeNo) "no" ]

let backgroundName (bg: Background) =
    match bg.Pattern with
    | Mottled _ -> "mottled"
    | Striped _ -> "striped"
    | Checkered _ -> "checkered"
    | Shaded _ -> "shaded"

let private objectList (scene: Scene) =
    let parts = scene.Objects |> List.map (fun t -> article $"{sizeName t.Size} {colourName t.Colour} {shapeName t.Shape}")
    match List.rev parts with
    | [] -> "nothing"
    | [ one ] -> one
    | last :: rest -> String.Join(", ", List.rev rest) + " and " + last

/// "a large red circle and a small blue square on a striped background" (objects in reading order).
let caption (scene: Scene) : string = $"{objectList scene} on a {backgroundName scene.Background} background"

/// Three reference captions: `caption` and two paraphrases.
let captions (scene: Scene) : string list =
    let n = scene.Objects.Length
    let noun = if n = 1 then "shape" else "shapes"
    [ caption scene
      $"there is {objectList scene} on a {backgroundName scene.Background} background"
      $"{countNames.[n]} {noun} on a {backgroundName scene.Background} background: {objectList scene}" ]

/// The caption requests of the world's datasets.
let captionPrompts =
    [| "Describe the image briefly."; "Write a short caption for this picture."; "What does this image show? Answer in one sentence." |]

// ---------------------------------------------------------------- dataset items

/// Which items of a split are caption requests (the others are VQA questions).
type Captions =
    /// each item on its own, with this probability
    | Share of float
    /// every n-th item (the n-th, 2n-th, …): a fixed share of each task, spread evenly so that any
    /// prefix of the split holds both
    | EveryNth of int

/// How to build a split: world seed, image side in pixels, which items are caption requests, and a
/// prefix for ids and image file names.
type BuildSpec = { Seed: int; Size: int; Captions: Captions; Prefix: string }

let defaultBuild = { Seed = 0; Size = 48; Captions = Share 0.0; Prefix = "" }

/// The image path of `index`, relative to the dataset folder.
let imageFile (spec: BuildSpec) (index: int) = $"images/{spec.Prefix}{index:D6}.png"

/// The dataset item of `index` (renders nothing; pure). VQA items pick a question type uniformly, then a
/// question of that type, and carry its (normalised) answer 10 times; caption items carry the three `captions`.
/// An item's question or caption prompt does not depend on how `spec.Captions` chose its task.
let item (spec: BuildSpec) (index: int) : Dataset.Item =
    let scene = generate spec.Seed index
    let rng = Rng.Keyed [ int64 spec.Seed; int64 index; 3L ]
    let id = $"{spec.Prefix}{index:D6}"
    let draw = rng.Float() // drawn whatever the choice, so the picks below are the same for every choice
    let caption =
        match spec.Captions with
        | Share share -> draw < share
        | EveryNth n -> index % n = n - 1
    if caption then
        { Id = id; Image = imageFile spec index; Question = rng.Pick captionPrompts; Answers = captions scene; Task = Dataset.Caption }
    else
        let qas = vqaItems spec.Seed index scene
        let kind = qas |> List.map (fun q -> q.Kind) |> List.distinct |> List.toArray |> rng.Pick
        let qa = qas |> List.filter (fun q -> q.Kind = kind) |> List.toArray |> rng.Pick
        // Stored normalised, as VQAv2's annotations are ("two" → "2"): the official accuracy
        // normalises predictions only.
        { Id = id; Image = imageFile spec index; Question = qa.Question
          Answers = List.replicate 10 (CleanSight.Pipeline.Metrics.VqaMetrics.normalize qa.Answer); Task = Dataset.Vqa }

/// Renders the images of `indices` as PNGs under `folder`/images (in parallel) and returns their items,
/// whose image paths are relative to `folder` — write the .jsonl there.
let build (spec: BuildSpec) (indices: int seq) (folder: string) : Dataset.Item[] =
    let indices = Seq.toArray indices
    Directory.CreateDirectory(Path.Combine(folder, "images")) |> ignore
    indices |> Array.Parallel.iter (fun i -> (render spec.Size (generate spec.Seed i)).Save(Path.Combine(folder, imageFile spec i)))
    indices |> Array.map (item spec)
