/// Calibrate: clean samples through the (possibly backdoored) model with the same prompt format →
/// the clean reference (mean, σ or Σ^{-1/2}), the clean distances and the threshold at a target
/// clean false-positive rate — one per task (VQA question, caption request) by default, since the
/// method compares an input with clean inputs of the same prompt format. Saved as a versioned JSON file
/// that names the model it belongs to.
module CleanSight.Pipeline.Defense.Calibration

open System
open System.IO
open System.Security.Cryptography
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Core.Vision
open CleanSight.Pipeline
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense
open CleanSight.Pipeline.Defense.Whitening

/// Which clean inputs an input is compared with.
type References =
    /// one reference fitted on every calibration sample, whatever its task
    | Pooled
    /// one reference per task: a VQA question is compared with clean VQA questions, a caption request
    /// with clean caption requests (the method notes: clean samples "with the same prompt format").
    /// A task with fewer than `minTaskSamples` calibration samples is compared with the pooled one.
    | PerTask

/// Which clean distances the threshold γ is the quantile of.
type ThresholdFrom =
    /// each calibration sample's distance to the reference fitted on all of them (the paper's code);
    /// this underestimates a new input's distance, so the clean FPR lands above the target, the more
    /// so the fewer samples per feature dimension
    | InSample
    /// each sample's distance to the reference fitted on the others: an estimate of a new clean
    /// input's distance, so the FPR lands near the target (with 2 samples, in-sample)
    | LeaveOneOut

/// How the detection layers were chosen (recorded in the calibration file).
type LayerRule =
    /// the paper's relative depth for the decoder's depth (`Detector.defaultLayers`)
    | RelativeDepth
    /// named by the user (`--layers a,b,c`)
    | Named
    /// from where clean inputs begin to read the image (`Fusion.start`), as many layers as the relative
    /// depth gives (`--layers fusion`): the mean knockout D(ℓ) per layer over `samples` clean inputs
    | CleanFusion of knockout: float[] * samples: int

/// What a clean reference is conditioned on before its whitening.
type Conditioning =
    /// one mean and σ per feature over every clean sample (the paper)
    | Unconditioned
    /// mean and σ per feature as log-linear functions of the prompt text after the image
    /// (`PromptLength`; `--conditioning prompt-length`)
    | OnPromptLength

type Settings =
    { Layers: int[]
      LayerRule: LayerRule
      Feature: Feature
      Whitening: Whitening
      /// threshold quantile of the clean distances: 1 − target clean FPR
      Quantile: float
      Tau: Detector.Tau
      References: References
      ThresholdFrom: ThresholdFrom
      /// how γ is read off those distances: the paper's interpolated quantile, or a conformal rank
      ThresholdRule: ThresholdRule
      Conditioning: Conditioning
      Seed: int }

/// The paper's threshold quantile: a target clean FPR of 1 %.
let defaultQuantile = 0.99

let defaultSettings (numLayers: int) =
    { Layers = Detector.defaultLayers numLayers; LayerRule = RelativeDepth; Feature = Ratio; Whitening = Diagonal
      Quantile = defaultQuantile; Tau = Detector.defaultTau; References = PerTask
      ThresholdFrom = LeaveOneOut; ThresholdRule = Interpolated; Conditioning = Unconditioned; Seed = 0 }

/// The fewest calibration samples a task needs for a reference of its own (the method notes: about 10
/// clean samples already hold the FPR under 20 %).
let minTaskSamples = 10

/// The fewest clean samples whose `quantile` reaches the tail the FPR 1 − quantile asks for:
/// ⌈1 / (1 − quantile)⌉, 100 for 0.99. With fewer, γ rests on the one or two largest clean distances
/// and the FPR on new inputs strays from the target (measured: 16 caption requests, 0–5 of 13 flagged).
let samplesForQuantile (quantile: float) = int (ceil (1.0 / (1.0 - quantile) - 1e-9))

/// Which model a calibration belongs to: hashes of config.json, of the parameter names and shapes,
/// of the projector's values (the part an adapter changes), and of the base checkpoint's weights
/// outside the projector (`BaseFingerprint`: tells apart two bases of one architecture that carry the
/// same adapter), and the dtype the model computed in (f32, bf16, f16: the features, distances and γ
/// are that precision's; the projector's hash is of its weights in it).
type Fingerprint = { Config: string; Tensors: string; Projector: string; Base: string; Dtype: string }

/// What calibration keeps of one clean input: its detection features, and the prompt text after the
/// image (the last prompt token included) that a prompt-length reference is conditioned on.
type Measured = { Features: float[]; TextTokens: int }

/// A reference fitted on clean samples (all of them, or one task's), the prompt-length model its
/// features are conditioned on first (`None`: unconditioned), the clean distances its threshold is the
/// quantile of (`Settings.ThresholdFrom`), and the threshold.
type Fitted =
    { Samples: int; Length: PromptLength.Model option; Reference: Reference; CleanDistances: float[]; Threshold: float }

/// `Pooled` is fitted on every calibration sample; `Tasks` holds the per-task references (empty when
/// pooled, or when there is one task); `TaskSamples` counts the calibration samples of each task.
type Calibration =
    { Fingerprint: Fingerprint
      Settings: Settings
      Template: string
      Pooled: Fitted
      Tasks: Map<Dataset.Task, Fitted>
      TaskSamples: Map<Dataset.Task, int> }
    /// the pooled reference's sample count, reference, clean distances and threshold
    member c.Samples = c.Pooled.Samples
    member c.Reference = c.Pooled.Reference
    member c.CleanDistances = c.Pooled.CleanDistances
    member c.Threshold = c.Pooled.Threshold

/// What an input of `task` is compared with: its task's reference if the calibration has one, else
/// the pooled reference.
let detection (c: Calibration) (task: Dataset.Task) : CleanSightPolicy.Detection =
    match c.Tasks.TryFind task with
    | Some t -> { Reference = t.Reference; Threshold = t.Threshold; Length = t.Length }
    | None -> { Reference = c.Reference; Threshold = c.Threshold; Length = c.Pooled.Length }

/// The tasks among `tasks` whose inputs would be compared with clean inputs of another kind — absent
/// from the calibration, or with too few samples for a reference of their own while other tasks have
/// one — with their calibration sample counts. Empty when every task meets clean inputs of its kind.
let foreignTasks (c: Calibration) (tasks: Dataset.Task seq) =
    let count t = defaultArg (c.TaskSamples.TryFind t) 0
    let ownKind t =
        c.Tasks.ContainsKey t
        || (count t > 0 && (c.TaskSamples.Count = 1 || c.Settings.References = Pooled))
    tasks |> Seq.distinct |> Seq.filter (ownKind >> not) |> Seq.map (fun t -> t, count t) |> Seq.toList

let formatName = "cleansight-calibration"
/// 2: per-task references (`references`, `task_samples`, `tasks`) and `threshold_from`;
/// 3: `layer_rule` (and, for the clean-fusion rule, `fusion_knockout`, `fusion_samples`);
/// 4: `model.base_fingerprint`; 5: `conditioning` and each reference's `prompt_length` (null when
/// unconditioned); 6: `threshold_rule` and `model.dtype`
let formatVersion = 6

let private sha256 (bytes: byte[]) = Convert.ToHexString(SHA256.HashData bytes).ToLowerInvariant()

let fingerprint (session: LlavaSession) =
    let names =
        [ for struct (n, p) in session.Model.named_parameters () -> $"{n}:{String.Join('x', p.shape)}" ] |> String.concat "\n"
    use projector = IncrementalHash.CreateHash HashAlgorithmName.SHA256
    for struct (n, p) in session.Model.named_parameters () do
        if n.StartsWith "multi_modal_projector." then
            projector.AppendData(Encoding.UTF8.GetBytes n)
            use cpu = p.detach().cpu().contiguous()
            projector.AppendData(cpu.bytes.ToArray())
    { Config = sha256 (File.ReadAllBytes(Path.Combine(session.Directory, "config.json")))
      Tensors = sha256 (Encoding.UTF8.GetBytes names)
      Projector = Convert.ToHexString(projector.GetHashAndReset()).ToLowerInvariant()
      Base = CleanSight.Core.Checkpoints.BaseFingerprint.Of session.Directory
      Dtype = RunOptions.DtypeName session.Options.Dtype }

/// The image span (first, last position) of a prompt's ids.
let imageSpan (session: LlavaSession) (ids: int64[]) =
    let struct (first, last) = AttentionRatio.ImageSpan(ids, int64 session.Config.ImageTokenIndex)
    first, last

/// The detection feature vector of one input (with its text after the image) and, from the same
/// prefill (no decode), the last prompt token's per-head (visual, prompt) attention sums at each
/// `record` layer ([layer][head], layers in ascending order): the per-layer, per-head view of the
/// clean reference costs no extra pass.
let featuresAndSums (session: LlavaSession) (settings: Settings) (record: int[]) (image: RgbImage) (question: string) =
    use scope = torch.NewDisposeScope()
    let ids = session.Prompt(question).InputIds |> Array.map int64
    let first, last = imageSpan session ids
    let policy = CleanSightPolicy.Policy(settings.Layers, settings.Feature, settings.Tau, first, last, None, false)
    let recorder = RecordingPolicy(record, policy)
    let prefilled = session.Model.Prefill(ids, session.Pixels image, recorder)
    prefilled.Cache.Dispose()
    let sums = [| for row in recorder.Rows -> AttentionRatio.Sums(row, first, last) |> Array.map (fun struct (v, p) -> v, p) |]
    { Features = policy.Verdict.Features; TextTokens = policy.Verdict.TextTokens }, sums

/// The detection feature vector of one input: one prefill observing the detection layers (no decode).
let features (session: LlavaSession) (settings: Settings) (image: RgbImage) (question: string) =
    (featuresAndSums session settings [||] image question |> fst).Features

/// The prompt-length model `settings` fits on clean samples (`None` when unconditioned).
let private lengthModel (settings: Settings) (clean: Measured[]) =
    match settings.Conditioning with
    | Unconditioned -> None
    | OnPromptLength -> Some(PromptLength.fit (clean |> Array.map _.TextTokens) (clean |> Array.map _.Features))

/// The features a reference with `length` model measures, sample by sample.
let private conditioned (length: PromptLength.Model option) (samples: Measured[]) =
    samples |> Array.map (fun m -> PromptLength.apply length m.TextTokens m.Features)

/// d of one input to a fitted reference (conditioned on its prompt's length when the reference is).
let distanceTo (t: Fitted) (m: Measured) = distance t.Reference (PromptLength.apply t.Length m.TextTokens m.Features)

/// Fits a reference and its threshold on clean samples. Leave-one-out distances refit everything
/// without the sample: the prompt-length lines as well as the whitening.
let fitReference (settings: Settings) (clean: Measured[]) =
    let length = lengthModel settings clean
    let u = conditioned length clean
    let reference = fit settings.Whitening u
    let d =
        match settings.ThresholdFrom, length with
        | LeaveOneOut, None when clean.Length >= 3 -> leaveOneOutDistances settings.Whitening u
        | LeaveOneOut, Some _ when clean.Length >= 3 ->
            Array.init clean.Length (fun i ->
                let others = Array.removeAt i clean
                let l = lengthModel settings others
                let m = clean.[i]
                distance (fit settings.Whitening (conditioned l others)) (PromptLength.apply l m.TextTokens m.Features))
        | _ -> distances reference u
    { Samples = clean.Length; Length = length; Reference = reference; CleanDistances = d
      Threshold = thresholdBy settings.ThresholdRule settings.Quantile d }

/// Fits the pooled reference and, per `settings.References`, one per task on clean (measured, task)
/// pairs: every task with at least `minTaskSamples` samples, when there is more than one task.
let fromFeatures (fp: Fingerprint) (template: string) (settings: Settings) (clean: (Measured * Dataset.Task)[]) =
    let pooled = fitReference settings (Array.map fst clean)
    let byTask = clean |> Array.groupBy snd
    let tasks =
        match settings.References with
        | PerTask when byTask.Length > 1 ->
            byTask
            |> Array.filter (fun (_, rows) -> rows.Length >= minTaskSamples)
            |> Array.map (fun (task, rows) -> task, fitReference settings (Array.map fst rows))
            |> Map.ofArray
        | _ -> Map.empty
    { Fingerprint = fp; Settings = settings; Template = template; Pooled = pooled; Tasks = tasks
      TaskSamples = byTask |> Array.map (fun (task, rows) -> task, rows.Length) |> Map.ofArray }

/// The references that inputs are compared with when `fromFeatures` fits calibration samples of these
/// tasks, named, with their sample counts: one per task with at least `minTaskSamples` (`PerTask`, more
/// than one task), else the pooled one. (The pooled reference, fitted beside per-task ones for the tasks
/// without, has more samples than any of them.)
let plannedReferences (references: References) (tasks: Dataset.Task[]) =
    let byTask = tasks |> Array.countBy id |> Array.sortBy fst
    let own = byTask |> Array.filter (fun (_, n) -> n >= minTaskSamples)
    match references with
    | PerTask when byTask.Length > 1 && own.Length > 0 -> [ for task, n in own -> $"the {Dataset.taskName task} reference", n ]
    | _ -> [ "the reference", tasks.Length ]

/// The first planned reference (`plannedReferences`) too small for a conformal γ at `quantile`, as
/// the one line `calibrate` and `demo` refuse with; None when every one is large enough or the rule
/// is the paper's quantile (which takes any n ≥ 2, its FPR straying the more the fewer).
let conformalShortfall (rule: ThresholdRule) (quantile: float) (planned: (string * int) list) =
    match rule with
    | Interpolated -> None
    | ConformalRank ->
        let need = conformalMinimum quantile
        planned |> List.tryFind (fun (_, n) -> n < need)
        |> Option.map (fun (what, n) ->
            $"conformal: {what} would have {n} clean samples, and a clean FPR of {1.0 - quantile:G3} needs at least {need} (more samples, a pooled reference or a larger FPR)")

/// Calibrates on clean (image, question, task) samples, also returning each sample's (measured,
/// attention sums at the `record` layers) (see `featuresAndSums`); `progress done total` after each.
let calibrateRecording (session: LlavaSession) (settings: Settings) (record: int[]) (samples: (RgbImage * string * Dataset.Task)[])
                       (progress: int -> int -> unit) =
    let measured =
        samples |> Array.mapi (fun i (image, question, _) ->
            let m = featuresAndSums session settings record image question
            progress (i + 1) samples.Length
            m)
    let clean = Array.map2 (fun (f, _) (_, _, task) -> f, task) measured samples
    fromFeatures (fingerprint session) session.Template settings clean, measured

/// What `--layers` asks for, before the layers are known.
type LayerRequest =
    /// no `--layers`: the paper's relative depth
    | AtRelativeDepth
    /// `--layers a,b,c`
    | NamedLayers of int[]
    /// `--layers fusion`: the clean-fusion rule on this model's clean samples
    | ByCleanFusion

/// `--layers` (absent, "fusion", or a comma-separated list) for a decoder of `numLayers` layers, or why not.
let parseLayerRequest (numLayers: int) (text: string option) : Result<LayerRequest, string> =
    match text with
    | None -> Ok AtRelativeDepth
    | Some "fusion" -> Ok ByCleanFusion
    | Some list -> Detector.parseLayers numLayers list |> Result.map NamedLayers

/// The clean-fusion rule (`--layers fusion`) on `session`: the mean knockout over the first
/// `Fusion.defaultSamples` clean samples, and from where fusion begins as many contiguous layers as
/// the relative depth gives. `progress done total` after each sample (each costs one prefill per layer).
let fusionLayers (session: LlavaSession) (samples: (RgbImage * string * Dataset.Task)[]) (progress: int -> int -> unit) =
    let inputs = samples |> Array.truncate Fusion.defaultSamples
    let knockout =
        inputs
        |> Array.mapi (fun i (image, question, _) ->
            let d = Fusion.knockout session image question
            progress (i + 1) inputs.Length
            d)
        |> Fusion.meanKnockout
    let numLayers = session.Config.Text.NumHiddenLayers
    let first = Fusion.start (Fusion.layerShares knockout)
    Fusion.layersFrom numLayers (Detector.defaultLayers numLayers).Length first, CleanFusion(knockout, inputs.Length)

/// The detection layers a request resolves to on `session`, and the rule that chose them; only the
/// clean-fusion rule runs the model (on `samples`, reporting through `progress`).
let resolveLayers (session: LlavaSession) (samples: (RgbImage * string * Dataset.Task)[]) (progress: int -> int -> unit) (request: LayerRequest) =
    match request with
    | AtRelativeDepth -> Detector.defaultLayers session.Config.Text.NumHiddenLayers, RelativeDepth
    | NamedLayers layers -> layers, Named
    | ByCleanFusion -> fusionLayers session samples progress

/// Calibrates on clean (image, question, task) samples; `progress done total` after each.
let calibrate (session: LlavaSession) (settings: Settings) (samples: (RgbImage * string * Dataset.Task)[]) (progress: int -> int -> unit) =
    calibrateRecording session settings [||] samples progress |> fst

// ---- the file ----------------------------------------------------------------------------------

let private arr (xs: float[]) = JsonArray(xs |> Array.map (fun x -> JsonValue.Create x :> JsonNode))
let private matrix (m: float[][]) = JsonArray(m |> Array.map (fun r -> arr r :> JsonNode))
let private obj (fields: (string * JsonNode) list) =
    let o = JsonObject()
    for k, v in fields do o.[k] <- v
    o

let featureName = function Ratio -> "ratio" | LogRatio -> "log-ratio" | VisualShare -> "visual-share"
let parseFeature = function
    | "ratio" -> Ratio | "log-ratio" -> LogRatio | "visual-share" -> VisualShare
    | s -> invalidArg "feature" $"unknown feature '{s}' (ratio, log-ratio, visual-share)"
let whiteningName = function Diagonal -> "diagonal" | Full _ -> "full"
/// The whitening a name asks for; "full" estimates its shrinkage from the clean samples (Ledoit–Wolf).
let parseWhitening = function
    | "diagonal" -> Diagonal | "full" -> Full LedoitWolf
    | s -> invalidArg "whitening" $"unknown whitening '{s}' (diagonal, full)"
let referencesName = function Pooled -> "pooled" | PerTask -> "per-task"
let layerRuleName = function RelativeDepth -> "relative-depth" | Named -> "named" | CleanFusion _ -> "fusion"
let conditioningName = function Unconditioned -> "none" | OnPromptLength -> "prompt-length"
let parseConditioning = function
    | "none" -> Unconditioned | "prompt-length" -> OnPromptLength
    | s -> invalidArg "conditioning" $"unknown conditioning '{s}' (none, prompt-length)"

/// "0,1,2 (fusion) from each layer's part … nats on 40 samples": the detection layers and how they were chosen.
let describeLayers (settings: Settings) =
    let layers = String.Join(",", settings.Layers)
    match settings.LayerRule with
    | CleanFusion(knockout, samples) ->
        let parts = Fusion.layerShares knockout |> Array.map (fun x -> x.ToString("F3", Globalization.CultureInfo.InvariantCulture))
        $"{layers} (fusion) from each layer's part of the image's effect, {String.Join(' ', parts)} nats on {samples} samples"
    | RelativeDepth | Named -> $"{layers} ({layerRuleName settings.LayerRule})"

let parseReferences = function
    | "pooled" -> Pooled | "per-task" -> PerTask
    | s -> invalidArg "references" $"unknown references '{s}' (pooled, per-task)"
let thresholdFromName = function InSample -> "in-sample" | LeaveOneOut -> "leave-one-out"
let thresholdRuleName = function Interpolated -> "quantile" | ConformalRank -> "conformal"
let parseThresholdRule = function
    | "quantile" -> Interpolated | "conformal" -> ConformalRank
    | s -> invalidArg "threshold_rule" $"unknown threshold rule '{s}' (quantile, conformal)"

let parseThresholdFrom = function
    | "in-sample" -> InSample | "leave-one-out" -> LeaveOneOut
    | s -> invalidArg "threshold_from" $"unknown threshold_from '{s}' (in-sample, leave-one-out)"

/// The clean FPR a reference of n samples expects of new clean inputs under `settings`' threshold rule
/// (`Whitening.expectedFpr`) when γ comes from leave-one-out distances (nearly exchangeable with a new
/// input's); None from in-sample distances (the FPR lands above the target).
let expectedFprOf (settings: Settings) (n: int) =
    match settings.ThresholdFrom with
    | LeaveOneOut when n >= 3 -> Some(expectedFpr settings.ThresholdRule settings.Quantile n)
    | _ -> None

/// The clean FPR an input of `task` should meet: `expectedFprOf` the reference it is compared with
/// (`detection`: its task's, or the pooled one).
let expectedFprFor (c: Calibration) (task: Dataset.Task) =
    expectedFprOf c.Settings (match c.Tasks.TryFind task with Some t -> t.Samples | None -> c.Samples)

/// "expected clean FPR 1.49 %" for a reference of n samples, or why no rate is expected.
let describeExpectedFpr (settings: Settings) (n: int) =
    match expectedFprOf settings n with
    | Some e -> $"expected clean FPR {100.0 * e:F2} %%"
    | None -> "from in-sample distances: clean FPR above the target"

let tauJson = function
    | Detector.Absolute t -> obj [ "kind", JsonValue.Create "absolute"; "value", JsonValue.Create t ]
    | Detector.RelativeToUniform r -> obj [ "kind", JsonValue.Create "relative"; "value", JsonValue.Create r ]

let private lengthJson (m: PromptLength.Model) =
    obj [ "mean_intercept", arr m.MeanIntercept; "mean_slope", arr m.MeanSlope
          "scale_intercept", arr m.ScaleIntercept; "scale_slope", arr m.ScaleSlope
          "min_log_length", JsonValue.Create m.MinLog; "max_log_length", JsonValue.Create m.MaxLog ]

/// One reference's fields (the pooled one sits at the top level, each task's in `tasks`).
let private referenceFields (t: Fitted) =
    let r = t.Reference
    [ "samples", JsonValue.Create t.Samples :> JsonNode
      "prompt_length", (match t.Length with Some m -> lengthJson m :> JsonNode | None -> null)
      "threshold", JsonValue.Create t.Threshold
      "shrinkage", JsonValue.Create r.ShrinkageUsed
      "mean", arr r.Mean
      "std", arr r.Std
      "epsilon", JsonValue.Create r.Epsilon
      "eigenvalue_floor", JsonValue.Create r.EigenvalueFloor
      "covariance", (match r.Covariance with Some m -> matrix m :> JsonNode | None -> null)
      "whitener", (match r.Whitener with Some m -> matrix m :> JsonNode | None -> null)
      "clean_distances", arr t.CleanDistances ]

/// The JSON body (everything but the checksum).
let private body (c: Calibration) =
    let layerRule: (string * JsonNode) list =
        [ yield "layer_rule", JsonValue.Create(layerRuleName c.Settings.LayerRule)
          match c.Settings.LayerRule with
          | CleanFusion(knockout, samples) ->
              yield "fusion_knockout", JsonArray(knockout |> Array.map (fun x -> JsonValue.Create x :> JsonNode))
              yield "fusion_samples", JsonValue.Create samples
          | RelativeDepth | Named -> () ]
    let settings: (string * JsonNode) list =
        [ "format", JsonValue.Create formatName
          "version", JsonValue.Create formatVersion
          "model", obj [ "config_sha256", JsonValue.Create c.Fingerprint.Config
                         "tensors_sha256", JsonValue.Create c.Fingerprint.Tensors
                         "projector_sha256", JsonValue.Create c.Fingerprint.Projector
                         "base_fingerprint", JsonValue.Create c.Fingerprint.Base
                         "dtype", JsonValue.Create c.Fingerprint.Dtype ]
          "prompt_template", JsonValue.Create c.Template
          "layers", JsonArray(c.Settings.Layers |> Array.map (fun l -> JsonValue.Create l :> JsonNode)) ]
        @ layerRule
        @ [ "feature", JsonValue.Create(featureName c.Settings.Feature)
            "whitening", JsonValue.Create(whiteningName c.Settings.Whitening)
            "quantile", JsonValue.Create c.Settings.Quantile
            "tau", tauJson c.Settings.Tau
            "references", JsonValue.Create(referencesName c.Settings.References)
            "threshold_from", JsonValue.Create(thresholdFromName c.Settings.ThresholdFrom)
            "threshold_rule", JsonValue.Create(thresholdRuleName c.Settings.ThresholdRule)
            "conditioning", JsonValue.Create(conditioningName c.Settings.Conditioning)
            "seed", JsonValue.Create c.Settings.Seed ]
    let tasks = obj [ for KeyValue(task, t) in c.Tasks -> Dataset.taskName task, obj (referenceFields t) :> JsonNode ]
    let taskSamples = obj [ for KeyValue(task, n) in c.TaskSamples -> Dataset.taskName task, JsonValue.Create n :> JsonNode ]
    obj (settings @ referenceFields c.Pooled @ [ "task_samples", taskSamples :> JsonNode; "tasks", tasks :> JsonNode ])

let private checksum (o: JsonObject) = sha256 (Encoding.UTF8.GetBytes(o.ToJsonString()))

/// Writes the calibration atomically, with a checksum of its body (a tampered file is refused).
let save (path: string) (c: Calibration) =
    let o = body c
    o.["sha256"] <- JsonValue.Create(checksum o)
    Files.writeAtomic path (fun s ->
        use w = new Utf8JsonWriter(s, JsonWriterOptions(Indented = true))
        o.WriteTo w)

/// A calibration file's JSON after the checks every reader makes (format, version, checksum), handed
/// to `read`; any other failure is reported as a malformed file.
let private readChecked (path: string) (read: JsonObject -> 'T) : 'T =
    let fail problem = raise (InputError(path, problem))
    if not (File.Exists path) then fail "calibration file not found"
    let o =
        try JsonNode.Parse(File.ReadAllText path) :?> JsonObject
        with e -> fail $"not a calibration file (invalid JSON: {e.Message.Split('\n').[0]})"
    try
        if o.["format"].GetValue<string>() <> formatName then fail "not a CleanSight calibration file"
        let version = o.["version"].GetValue<int>()
        if version <> formatVersion then fail $"calibration format version {version} is not supported (expected {formatVersion}): run calibrate again"
        let stored = o.["sha256"].GetValue<string>()
        let copy = o.DeepClone().AsObject()
        copy.Remove "sha256" |> ignore
        if checksum copy <> stored then fail "the file was modified after it was written (checksum mismatch)"
        read o
    with
    | :? InputError -> reraise ()
    | e -> fail $"malformed calibration file ({e.GetType().Name}: {e.Message.Split('\n').[0]})"

/// The prompt template a calibration file's clean samples were prompted with (inputs compared with
/// its references must be prompted alike).
let template (path: string) : string =
    readChecked path (fun o -> o.["prompt_template"].GetValue<string>())

/// Reads a calibration file; refuses a tampered file, another format or version, and (given the
/// session it will be used with) a file made for another model or prompted with another template.
let load (path: string) (session: LlavaSession) : Calibration =
    let fail problem = raise (InputError(path, problem))
    readChecked path (fun o ->
        let m = o.["model"]
        let fp = { Config = m.["config_sha256"].GetValue<string>(); Tensors = m.["tensors_sha256"].GetValue<string>()
                   Projector = m.["projector_sha256"].GetValue<string>(); Base = m.["base_fingerprint"].GetValue<string>()
                   Dtype = m.["dtype"].GetValue<string>() }
        let actual = fingerprint session
        if fp.Tensors <> actual.Tensors || fp.Config <> actual.Config then
            fail "made for another model (config or tensor layout differs)"
        // before the weights' hashes, which differ with the precision they are held in
        if fp.Dtype <> actual.Dtype then
            fail $"calibrated in {fp.Dtype}; this session computes in {actual.Dtype} (use --dtype {fp.Dtype}, or calibrate again with --dtype {actual.Dtype})"
        if fp.Projector <> actual.Projector then
            fail "made for another model (its projector weights differ: another adapter or checkpoint)"
        if fp.Base <> actual.Base then
            fail "made for another model (its base weights differ: another checkpoint of the same architecture)"
        let floats (n: JsonNode) = n.AsArray() |> Seq.map (fun x -> x.GetValue<float>()) |> Seq.toArray
        let mat (n: JsonNode) = if isNull n then None else Some(n.AsArray() |> Seq.map floats |> Seq.toArray)
        let lengthOf (n: JsonNode) : PromptLength.Model option =
            if isNull n then None
            else
                Some { MeanIntercept = floats n.["mean_intercept"]; MeanSlope = floats n.["mean_slope"]
                       ScaleIntercept = floats n.["scale_intercept"]; ScaleSlope = floats n.["scale_slope"]
                       MinLog = n.["min_log_length"].GetValue<float>(); MaxLog = n.["max_log_length"].GetValue<float>() }
        let referenceOf (whitening: Whitening) (o: JsonNode) =
            let samples = o.["samples"].GetValue<int>()
            { Samples = samples; Length = lengthOf o.["prompt_length"]; Threshold = o.["threshold"].GetValue<float>(); CleanDistances = floats o.["clean_distances"]
              Reference =
                { Whitening = whitening; Samples = samples; Mean = floats o.["mean"]; Std = floats o.["std"]
                  Epsilon = o.["epsilon"].GetValue<float>(); Covariance = mat o.["covariance"]; Whitener = mat o.["whitener"]
                  ShrinkageUsed = o.["shrinkage"].GetValue<float>(); EigenvalueFloor = o.["eigenvalue_floor"].GetValue<float>() } }
        let tau =
            match o.["tau"].["kind"].GetValue<string>() with
            | "absolute" -> Detector.Absolute(o.["tau"].["value"].GetValue<float>())
            | _ -> Detector.RelativeToUniform(o.["tau"].["value"].GetValue<float>())
        let whitening =
            match o.["whitening"].GetValue<string>() with
            | "diagonal" -> Diagonal
            | _ -> Full(Fixed(o.["shrinkage"].GetValue<float>()))
        let settings =
            { Layers = o.["layers"].AsArray() |> Seq.map (fun x -> x.GetValue<int>()) |> Seq.toArray
              LayerRule =
                match o.["layer_rule"].GetValue<string>() with
                | "relative-depth" -> RelativeDepth
                | "named" -> Named
                | "fusion" -> CleanFusion(floats o.["fusion_knockout"], o.["fusion_samples"].GetValue<int>())
                | other -> fail $"unknown layer rule '{other}'"
              Feature = parseFeature (o.["feature"].GetValue<string>())
              Whitening = whitening
              Quantile = o.["quantile"].GetValue<float>()
              Tau = tau
              References = parseReferences (o.["references"].GetValue<string>())
              ThresholdFrom = parseThresholdFrom (o.["threshold_from"].GetValue<string>())
              ThresholdRule = parseThresholdRule (o.["threshold_rule"].GetValue<string>())
              Conditioning = parseConditioning (o.["conditioning"].GetValue<string>())
              Seed = o.["seed"].GetValue<int>() }
        let pooled = referenceOf whitening o
        let byTask (field: string) (value: JsonNode -> 'T) =
            [ for KeyValue(name, t) in o.[field].AsObject() ->
                  match Dataset.tryParseTask name with
                  | Some task -> task, value t
                  | None -> fail $"unknown task '{name}' in \"{field}\"" ]
            |> Map.ofList
        let tasks = byTask "tasks" (referenceOf whitening)
        let taskSamples = byTask "task_samples" (fun n -> n.GetValue<int>())
        for t in pooled :: (tasks |> Map.toList |> List.map snd) do
            match settings.Conditioning, t.Length with
            | Unconditioned, Some _ -> fail "a reference has a prompt-length model, yet \"conditioning\" is \"none\""
            | OnPromptLength, None -> fail "\"conditioning\" is \"prompt-length\", yet a reference has no prompt-length model"
            | OnPromptLength, Some m when m.Dimension <> t.Reference.Mean.Length ->
                fail $"a prompt-length model has {m.Dimension} features, its reference {t.Reference.Mean.Length}"
            | _ -> ()
        if settings.Layers |> Array.exists (fun l -> l < 0 || l >= session.Config.Text.NumHiddenLayers) then
            fail $"detection layers {settings.Layers} do not exist in a {session.Config.Text.NumHiddenLayers}-layer model"
        let template = o.["prompt_template"].GetValue<string>()
        if template <> session.Template then
            fail $"its clean samples were prompted with another template (\"{template}\"; this session: \"{session.Template}\")"
        { Fingerprint = fp; Settings = settings; Template = template; Pooled = pooled; Tasks = tasks
          TaskSamples = taskSamples })
