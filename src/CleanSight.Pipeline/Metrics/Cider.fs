/// CIDEr-D for captioning utility, following pycocoevalcap's `CiderScorer` (the CIDEr-D variant:
/// clipped counts and a Gaussian length penalty) step by step:
///   - n-grams of order 1..4 with term counts per sentence;
///   - document frequency df(g) = number of *items* (reference sets) whose references contain g,
///     computed over the evaluated set only; idf(g) = log N − log(max(1, df(g))), N = items;
///   - per order n, tf·idf vectors h (candidate) and r (one reference):
///       val_n = Σ_g min(h_g, r_g)·r_g / (‖h‖·‖r‖)   (left at its numerator, i.e. 0, when a norm is 0)
///             · exp(−δ² / (2σ²)),  δ = len(candidate) − len(reference), σ = 6;
///   - item score = 10 · mean_n(Σ_refs val_n) / #refs; corpus score = mean over items.
///
/// How ours differs from pycocoevalcap:
///   - Tokeniser: pycocoevalcap runs the Stanford PTB tokenizer (Java), which splits clitics
///     ("don't" → "do n't", "dog's" → "dog 's"), keeps hyphenated words whole and drops punctuation
///     tokens. We lower-case, delete apostrophes ("don't" → "dont", "dog's" → "dogs"), turn every
///     other punctuation or symbol character into a space ("well-known" → "well known") and split
///     on whitespace — the paper's whitespace approximation. Scores on the same captions therefore
///     differ slightly from the COCO server's.
///   - Length: pycocoevalcap counts bigrams as "length"; we count words. δ is the same for any two
///     non-empty sentences (both are words − 1), and an empty sentence scores 0 either way.
///   - IDF comes from the evaluated set, as in pycocoevalcap's default (not the COCO-train "coco-val-df"
///     file), so a score depends on the set it was computed with: compare numbers only across
///     methods evaluated on the same items. A set of one item has log N = 0 and scores 0.
module CleanSight.Pipeline.Metrics.Cider

open System
open System.Collections.Generic

/// Orders 1..maxOrder (CIDEr uses 4).
let maxOrder = 4

/// The Gaussian length-penalty width σ.
let sigma = 6.0

/// Lower-case; apostrophes deleted; other punctuation and symbols → space; split on whitespace.
let tokenize (sentence: string) : string[] =
    let chars =
        sentence.ToLowerInvariant()
        |> Seq.choose (fun c ->
            if c = '\'' || c = '\u2019' then None
            elif Char.IsPunctuation c || Char.IsSymbol c then Some ' '
            else Some c)
        |> Seq.toArray
    String(chars).Split((null: char[]), StringSplitOptions.RemoveEmptyEntries)

/// n-gram counts of one sentence; index k-1 holds the k-grams (words joined by a space, which no
/// token contains).
let private ngramCounts (words: string[]) : IReadOnlyDictionary<string, int>[] =
    [| for k in 1 .. maxOrder ->
        words
        |> Array.windowed k
        |> Array.countBy (String.concat " ")
        |> readOnlyDict |]

/// One sentence as CIDEr sees it: per order, the tf·idf weight of each n-gram and the vector norm.
type private Vector = { Weights: IReadOnlyDictionary<string, float>[]; Norms: float[]; Length: int }

let private vectorOf (idf: string -> float) (words: string[]) : Vector =
    let counts = ngramCounts words
    let weights =
        counts |> Array.map (fun c -> c |> Seq.map (fun kv -> kv.Key, float kv.Value * idf kv.Key) |> readOnlyDict)
    { Weights = weights
      Norms = weights |> Array.map (fun w -> sqrt (w.Values |> Seq.sumBy (fun v -> v * v)))
      Length = words.Length }

/// Per-order similarity of a candidate to one reference (pycocoevalcap's `sim`). [maxOrder]
let private similarity (candidate: Vector) (reference: Vector) : float[] =
    let delta = float (candidate.Length - reference.Length)
    let penalty = exp (-(delta * delta) / (2.0 * sigma * sigma))
    Array.init maxOrder (fun n ->
        let r = reference.Weights.[n]
        let clipped =
            candidate.Weights.[n]
            |> Seq.sumBy (fun kv ->
                match r.TryGetValue kv.Key with
                | true, rv -> min kv.Value rv * rv
                | _ -> 0.0)
        let normProduct = candidate.Norms.[n] * reference.Norms.[n]
        (if normProduct <> 0.0 then clipped / normProduct else clipped) * penalty)

/// CIDEr-D of each item, given (candidate, references) pairs. [items]
let scores (items: (string * string[])[]) : float[] =
    if isNull items || items.Length = 0 then invalidArg (nameof items) "CIDEr-D needs at least one item, got 0"
    items |> Array.iteri (fun i (_, refs) ->
        if isNull refs || refs.Length = 0 then
            invalidArg (nameof items) $"CIDEr-D item {i} has 0 references; every item needs at least one")
    let tokenized = items |> Array.map (fun (c, refs) -> tokenize c, Array.map tokenize refs)
    // df(g): the number of items whose references contain g at least once.
    let documentFrequency =
        tokenized
        |> Array.collect (fun (_, refs) ->
            refs |> Array.collect (fun r -> ngramCounts r |> Array.collect (fun c -> Array.ofSeq c.Keys)) |> Array.distinct)
        |> Array.countBy id
        |> readOnlyDict
    let logN = log (float items.Length)
    let idf (g: string) =
        match documentFrequency.TryGetValue g with
        | true, df -> logN - log (max 1.0 (float df))
        | _ -> logN
    tokenized
    |> Array.map (fun (candidate, refs) ->
        let c = vectorOf idf candidate
        let perOrder =
            refs
            |> Array.map (fun r -> similarity c (vectorOf idf r))
            |> Array.reduce (Array.map2 (+))
        10.0 * Array.average perOrder / float refs.Length)

/// `scores` with the candidate and references read from each item.
let scoresBy (candidate: 'T -> string) (references: 'T -> string[]) (items: 'T[]) : float[] =
    items |> Array.map (fun x -> candidate x, references x) |> scores

/// Corpus CIDEr-D: the mean of the item scores.
let cider (items: (string * string[])[]) : float = scores items |> Array.average

/// `cider` with the candidate and references read from each item.
let ciderBy (candidate: 'T -> string) (references: 'T -> string[]) (items: 'T[]) : float =
    scoresBy candidate references items |> Array.average
