/// `cleansight calibrate | evaluate | defend`.
module CleanSight.Pipeline.DefenseCommands

open System
open System.IO
open Argu
open CleanSight.Core
open CleanSight.Core.Inference
open CleanSight.Core.Text
open CleanSight.Core.Vision
open CleanSight.Pipeline.Cli
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Defense

/// A seeded choice of at most n items (all, in order, when n is absent or large enough).
let choose (seed: int) (n: int option) (items: 'a[]) =
    match n with
    | Some n when n < items.Length ->
        let rng = Random(seed)
        items |> Array.map (fun x -> rng.Next(), x) |> Array.sortBy fst |> Array.map snd |> Array.truncate n
    | _ -> items

/// A note for each task of the inputs that the calibration has no clean reference of its own for.
let private noteForeignTasks (log: string -> unit) (calibrationPath: string) (calibration: Calibration.Calibration) tasks =
    for task, n in Calibration.foreignTasks calibration tasks do
        let name = Dataset.taskName task
        log $"note: {name} inputs are compared with clean inputs of another kind: {calibrationPath} has {n} {name} samples (a reference of their own needs {Calibration.minTaskSamples})"

let calibrate (args: ParseResults<CalibrateArgs>) =
    Progress.run (Progress.mode (args.Contains CalibrateArgs.No_Progress)) "calibrate" (fun progress ->
        let log = progress.Log
        // option values are checked before the model is loaded (--layers and --samples, which need the
        // model or the data, before anything is measured)
        let fpr = args.GetResult(CalibrateArgs.Fpr, 0.01)
        if not (fpr > 0.0 && fpr < 1.0) then raise (InputError("--fpr", $"a false-positive rate in (0, 1), got {fpr}"))
        let feature = checkOption "--feature" (fun () -> Calibration.parseFeature (args.GetResult(CalibrateArgs.Feature, "ratio")))
        let conditioning =
            checkOption "--conditioning" (fun () -> Calibration.parseConditioning (args.GetResult(CalibrateArgs.Conditioning, "none")))
        let whitening = checkOption "--whitening" (fun () -> Calibration.parseWhitening (args.GetResult(CalibrateArgs.Whitening, "diagonal")))
        let rule = checkOption "--threshold-rule" (fun () -> Calibration.parseThresholdRule (args.GetResult(CalibrateArgs.Threshold_Rule, "quantile")))
        let references = if args.Contains CalibrateArgs.Pooled_Reference then Calibration.Pooled else Calibration.PerTask
        // τ ≤ 0 would prune every visual token of a flagged input: that is the prune-all baseline, not a τ
        let positive option (value: float) =
            if not (value > 0.0) then raise (InputError(option, $"must be greater than 0, got {value}"))
            value
        let tau =
            match args.TryGetResult CalibrateArgs.Tau, args.TryGetResult CalibrateArgs.Tau_Relative with
            | Some t, _ -> Some(Detector.Absolute(positive "--tau" t))
            | None, Some r -> Some(Detector.RelativeToUniform(positive "--tau-relative" r))
            | None, None -> None
        let options = runOptions (args.TryGetResult CalibrateArgs.Device) (args.TryGetResult CalibrateArgs.Dtype)
        let dataPath = args.GetResult CalibrateArgs.Data
        let items = Dataset.readInputs dataPath // clean samples: their answers are not used
        let template = args.GetResult(CalibrateArgs.Template, LlavaPrompt.DefaultTemplate)
        checkOption "--template" (fun () -> LlavaPrompt.Format("", template)) |> ignore
        use session =
            LlavaSession.Load(args.GetResult CalibrateArgs.Model, options, adapter = (args.TryGetResult CalibrateArgs.Adapter |> Option.toObj), template = template)
        let d = Calibration.defaultSettings session.Config.Text.NumHiddenLayers
        let seed = args.GetResult(CalibrateArgs.Seed, 0)
        let chosen = choose seed (args.TryGetResult CalibrateArgs.Samples |> Option.map (atLeastOne "--samples")) items
        if chosen.Length < 2 then raise (InputError(dataPath, $"calibration needs at least 2 clean samples, found {chosen.Length}"))
        // the references the samples will give, known before anything is measured
        let planned = Calibration.plannedReferences references (chosen |> Array.map _.Task)
        Calibration.conformalShortfall rule (1.0 - fpr) planned |> Option.iter (fun problem -> raise (InputError("--threshold-rule", problem)))
        let samples = chosen |> Array.map (fun it -> RgbImage.Load(Dataset.imagePath dataPath it), it.Question, it.Task)
        let request = layerRequest session.Config.Text.NumHiddenLayers (args.TryGetResult CalibrateArgs.Layers)
        let layers, layerRule =
            checkOption "--layers" (fun () -> Calibration.resolveLayers session samples (Progress.counter progress "fusion") request)
        let settings =
            { d with Layers = layers; LayerRule = layerRule; Whitening = whitening; Quantile = 1.0 - fpr
                     Feature = feature; Tau = Option.defaultValue d.Tau tau; Seed = seed
                     References = references
                     ThresholdFrom = if args.Contains CalibrateArgs.In_Sample_Threshold then Calibration.InSample else Calibration.LeaveOneOut
                     ThresholdRule = rule
                     Conditioning = conditioning }
        let calibration = Calibration.calibrate session settings samples (Progress.counter progress "calibrate")
        let p = calibration.Reference.Dimension
        if chosen.Length <= p then
            log $"note: {chosen.Length} samples for {p} feature dimensions; shrinkage {calibration.Reference.ShrinkageUsed:F3} keeps the reference usable"
        let need = Calibration.samplesForQuantile settings.Quantile
        if rule = Whitening.Interpolated then
            for what, n in planned do
                if n < need then
                    log $"note: {what} has {n} samples; a threshold at the {settings.Quantile} quantile needs about {need} to hold its FPR"
        let out = args.GetResult CalibrateArgs.Out
        Calibration.save out calibration
        printfn "%s: %d samples, layers %s, %s whitening, threshold %.4g (clean quantile %.3g, %s rule; %s)"
            out calibration.Samples (Calibration.describeLayers settings)
            (Calibration.whiteningName whitening + (if conditioning = Calibration.OnPromptLength then " prompt-length-conditioned" else ""))
            calibration.Threshold settings.Quantile (Calibration.thresholdRuleName rule)
            (Calibration.describeExpectedFpr settings calibration.Samples)
        for KeyValue(task, t) in calibration.Tasks do
            printfn "  %s: own reference on %d samples, threshold %.4g (%s)" (Dataset.taskName task) t.Samples t.Threshold
                (Calibration.describeExpectedFpr settings t.Samples)
        0)

let evaluate (args: ParseResults<EvaluateArgs>) =
    Progress.run (Progress.mode (args.Contains EvaluateArgs.No_Progress)) "evaluate" (fun progress ->
        let defenses =
            (args.GetResult EvaluateArgs.Defense).Split(',', StringSplitOptions.RemoveEmptyEntries)
            |> Array.map (fun s -> checkOption "--defense" (fun () -> Defenses.parse s))
            |> Array.toList
        // "none" first: every other defense's output is shown beside the undefended one.
        let defenses = Defenses.NoDefense :: (defenses |> List.filter ((<>) Defenses.NoDefense))
        match args.TryGetResult EvaluateArgs.Mode with
        | None | Some "replace" | Some "insert" -> () // how the attack places its target (ASR is containment either way)
        | Some mode -> raise (InputError("--mode", $"'{mode}' is not replace or insert"))
        let target = nonEmptyTarget "--target" (args.GetResult EvaluateArgs.Target)
        let limit = args.TryGetResult EvaluateArgs.Limit |> Option.map (atLeastOne "--limit")
        let maxNewTokens = args.GetResult(EvaluateArgs.Max_New_Tokens, 32) |> atLeastOne "--max-new-tokens"
        let attentionInputs = args.GetResult(EvaluateArgs.Attention_Inputs, 50)
        if attentionInputs < 0 then raise (InputError("--attention-inputs", $"must be 0 or more, got {attentionInputs}"))
        let clean, poisoned = args.GetResult EvaluateArgs.Clean, args.GetResult EvaluateArgs.Poisoned
        let tasks = Array.append (Dataset.read clean) (Dataset.read poisoned) |> Array.map (fun it -> it.Task)
        let calibrationPath = args.GetResult EvaluateArgs.Calibration
        let options = runOptions (args.TryGetResult EvaluateArgs.Device) (args.TryGetResult EvaluateArgs.Dtype)
        // Inputs are prompted as the clean references were: with the calibration's template.
        use session =
            LlavaSession.Load(args.GetResult EvaluateArgs.Model, options, adapter = (args.TryGetResult EvaluateArgs.Adapter |> Option.toObj),
                              template = Calibration.template calibrationPath)
        let calibration = Calibration.load calibrationPath session
        noteForeignTasks progress.Log calibrationPath calibration tasks
        let settings: Evaluation.Settings =
            { Defenses = defenses; Target = target
              MaxNewTokens = maxNewTokens
              Limit = limit; Seed = args.GetResult(EvaluateArgs.Seed, 0) }
        let out = args.GetResult EvaluateArgs.Out
        let plan = Evaluation.plan session settings clean poisoned
        Evaluation.claimRun out (Evaluation.runKey calibrationPath clean poisoned settings)
        let records = Evaluation.runPlanned session calibration settings plan (Path.Combine(out, "samples.csv")) (Progress.counter progress "evaluate")
        let metrics = Summary.ofRecords records
        Summary.write (Path.Combine(out, "metrics.json")) metrics
        let model, adapter = args.GetResult EvaluateArgs.Model, args.TryGetResult EvaluateArgs.Adapter
        let name = match adapter with Some a -> Path.GetFileNameWithoutExtension a | None -> Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath model))
        let intro =
            [ Analysis.Findings.describeRun model adapter calibrationPath calibration
              $"""Clean inputs {clean}, triggered inputs {poisoned}; target "{target}"; defenses {String.Join(", ", defenses |> List.map Defenses.name)}; greedy answers of at most {maxNewTokens} tokens. Thresholds come from clean data only.""" ]
        Analysis.Findings.writeEvaluation session calibration records metrics name clean poisoned (min attentionInputs (defaultArg limit Int32.MaxValue))
            intro out (Progress.counter progress "attention by layer")
        let pct (x: float option) = match x with Some v -> $"{100.0 * v,6:F1}" | None -> "     -"
        printfn "%-13s %7s %7s %8s %8s %7s %7s" "defense" "ASR%" "cASR%" "util%" "p.util%" "AUROC" "pruned"
        for name, m in metrics do
            printfn "%-13s %7s %7s %8s %8s %7s %7s" name (pct m.Asr) (pct m.CleanAsr) (pct m.Clean.Utility) (pct m.Poisoned.Utility)
                (match m.Auroc with Some a -> $"{a:F3}" | None -> "-") (pct m.PrunedFraction)
        // detection per task: each task has its own clean reference, so its own FPR (with its 95 % interval)
        let within (x: (float * float) option) = match x with Some ci -> $" [{Metrics.RateInterval.percentText ci}]" | None -> ""
        // beside each task's FPR, what its reference's threshold rule expects (`Calibration.expectedFprFor`)
        let expected (task: string) =
            Dataset.tryParseTask task |> Option.bind (Calibration.expectedFprFor calibration)
            |> Option.map (fun e -> $"; expected {100.0 * e:F2} %%") |> Option.defaultValue ""
        for name, m in metrics do
            if m.ByTask.Length > 0 then
                let tasks = [ for task, t in m.ByTask -> $"{task}: TPR {(pct t.Tpr).Trim()} %%, FPR {(pct t.Fpr).Trim()} %%{within t.FprCi95} ({t.CleanSamples} clean{expected task})" ]
                printfn "%s detection: TPR %s %%, FPR %s %%%s; %s" name ((pct m.Tpr).Trim()) ((pct m.Fpr).Trim()) (within m.FprCi95) (String.concat "; " tasks)
        printfn "%s: attention stealing by layer, detection, ASR and utility per defense, which layer sees the trigger" (Path.Combine(out, "report.html"))
        0)

let defend (args: ParseResults<DefendArgs>) =
    Progress.run (Progress.mode (args.Contains DefendArgs.No_Progress)) "defend" (fun progress ->
        let settings: Defend.Settings =
            { MaxNewTokens = args.GetResult(DefendArgs.Max_New_Tokens, 32) |> atLeastOne "--max-new-tokens"
              Limit = args.TryGetResult DefendArgs.Limit |> Option.map (atLeastOne "--limit") }
        let data = args.GetResult DefendArgs.Data
        let items = Dataset.readInputs data // a bad data file is refused before the model loads
        let calibrationPath = args.GetResult DefendArgs.Calibration
        let options = runOptions (args.TryGetResult DefendArgs.Device) (args.TryGetResult DefendArgs.Dtype)
        // Inputs are prompted as the clean references were: with the calibration's template.
        use session =
            LlavaSession.Load(args.GetResult DefendArgs.Model, options, adapter = (args.TryGetResult DefendArgs.Adapter |> Option.toObj),
                              template = Calibration.template calibrationPath)
        let calibration = Calibration.load calibrationPath session
        let items = Defend.plan session settings data items
        noteForeignTasks progress.Log calibrationPath calibration (items |> Array.map (fun it -> it.Task))
        let out = args.GetResult DefendArgs.Out
        Defend.claimRun out calibrationPath data settings
        let csv = Path.Combine(out, "defended.csv")
        let records = Defend.run session calibration settings data items csv (Progress.counter progress "defend")
        let flagged = records |> Array.filter (fun r -> r.Verdict.Flagged)
        let changed = flagged |> Array.filter (fun r -> r.Output <> r.Undefended)
        printfn "%s: %d inputs, %d flagged (%.1f %%), %d of them answered otherwise than without the defense"
            csv records.Length flagged.Length (100.0 * float flagged.Length / float records.Length) changed.Length
        for task, rs in records |> Array.groupBy (fun r -> r.Task) do
            let f = rs |> Array.filter (fun r -> r.Verdict.Flagged)
            let pruned = if f.Length = 0 then 0.0 else f |> Array.averageBy (fun r -> float r.Verdict.Pruned.Length)
            printfn "  %s: %d of %d flagged (γ %.4g); %.1f image tokens excluded per flagged input"
                task f.Length rs.Length rs.[0].Verdict.Threshold pruned
        // the pictures: the three most suspicious flagged inputs observed once more at every layer
        let byId = items |> Array.map (fun it -> it.Id, it) |> dict
        let views =
            [ for r in Analysis.DefendReport.suspicious 3 records ->
                  let item = byId.[r.Id]
                  Analysis.DefendReport.view session calibration item (RgbImage.Load(Dataset.imagePath data item)) r ]
        let model, adapter = args.GetResult DefendArgs.Model, args.TryGetResult DefendArgs.Adapter
        let intro =
            [ Analysis.Findings.describeRun model adapter calibrationPath calibration
              $"Inputs {data}; greedy answers of at most {settings.MaxNewTokens} tokens; a flagged input has its attention-stealing image tokens excluded from the last detection layer on, and is also answered without the defense." ]
        Analysis.DefendReport.write out $"CleanSight on {data}" intro records views
        printfn "%s: the distances, the most suspicious inputs and every flagged one" (Path.Combine(out, "report.html"))
        0)

/// `table`: the attacks × defenses table of several evaluate folders, in the paper's shape, on stdout
/// (Markdown); with --out also table.md, table.csv and report.html. Every folder is read before
/// anything is written.
let table (args: ParseResults<TableArgs>) =
    let folders = args.GetResult TableArgs.Folders
    let names =
        match args.TryGetResult TableArgs.Names with
        | None -> folders |> List.map (fun f -> Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath f)))
        | Some csv ->
            let names = csv.Split(',') |> Array.map _.Trim() |> List.ofArray
            if names.Length <> folders.Length then raise (InputError("--names", $"{names.Length} names for {folders.Length} folders"))
            if names |> List.exists String.IsNullOrEmpty then raise (InputError("--names", "a name is empty"))
            names
    match names |> List.countBy id |> List.tryFind (fun (_, n) -> n > 1) with
    | Some(name, _) -> raise (InputError("--names", $"two folders are named '{name}'; name the rows apart with --names"))
    | None -> ()
    let models =
        List.map2 (fun (folder: string) name ->
            let path = Path.Combine(folder, "metrics.json")
            if not (Directory.Exists folder) then raise (InputError(folder, "no such folder"))
            if not (File.Exists path) then raise (InputError(folder, "has no metrics.json (evaluate writes it when it finishes)"))
            let metrics = Summary.read path
            if metrics.Length = 0 then raise (InputError(path, "names no defense"))
            ({ Name = name; Metrics = metrics }: Analysis.DefenseTable.Model)) folders names
    let markdown = Analysis.DefenseTable.markdown models
    match args.TryGetResult TableArgs.Out with
    | Some out ->
        let head, body = Analysis.DefenseTable.paperRows models
        Analysis.Report.write (Path.Combine(out, "report.html")) "CleanSight: attacks × defenses"
            [ yield Analysis.Report.Text $"""ASR %% / clean utility %% per model and defense (the paper's Table 1), from {String.Join(", ", List.map2 (fun n f -> $"{n}: {f}") names folders)}."""
              yield Analysis.Report.Table(head, body)
              yield! Analysis.DefenseTable.sections models ]
        Files.saveCsv (Path.Combine(out, "table.csv")) (Analysis.DefenseTable.frame models)
        Files.writeText (Path.Combine(out, "table.md")) (fun w -> w.Write markdown)
    | None -> ()
    printf "%s" markdown
    0
