/// TorchSharp Scalars the GC may free during a native call (dotnet/TorchSharp#1434): a Scalar made
/// implicitly (`x.pow(2)`, `a + b`, `arange(n)`) is unreachable once its handle is read, so its finaliser
/// can release it while libtorch still reads it. That killed long training runs at random ("Unknown
/// scalar type", "Expected false to be true" in Scalar::toFloat). This reads the IL of the Core and the
/// Pipeline and fails on any call that makes such a temporary: directly (an implicit conversion or
/// `ToScalar()` whose result is not stored in a local, field or argument slot, where `using` keeps it alive)
/// or inside a TorchSharp helper we call (`square()`, `arange(n)`, `Tensor + Tensor`, …, three calls deep).
/// A stored Scalar counts as held; that holds for `using var` / `use` (disposed at the end of the scope,
/// so alive until then), which is how every one here is written — a plain local could still die after
/// its last use, and the scan does not tell the two apart.
module CleanSight.Tests.ScalarLifetimeTests

open System
open System.Collections.Generic
open System.Reflection
open System.Reflection.Emit
open Expecto
open TorchSharp

let private opcodes =
    let d = Dictionary<int16, OpCode>()
    for f in typeof<OpCodes>.GetFields(BindingFlags.Public ||| BindingFlags.Static) do
        let o = f.GetValue(null) :?> OpCode
        d.[o.Value] <- o
    d

/// The methods a method body calls, each with whether the next instruction stores its result
/// (stloc / stfld / stsfld / starg).
let private callsOf (m: MethodBase) : (MethodBase * bool) list =
    let body = try m.GetMethodBody() with _ -> null
    if isNull body then [] else
    let il = body.GetILAsByteArray()
    let typeArgs = if not (isNull m.DeclaringType) && m.DeclaringType.IsGenericType then m.DeclaringType.GetGenericArguments() else null
    let methodArgs = if m.IsGenericMethod then m.GetGenericArguments() else null
    let isStore (b: byte) = (b >= 0x0Auy && b <= 0x0Duy) || b = 0x13uy || b = 0x10uy || b = 0x7Duy || b = 0x80uy
    let out = ResizeArray()
    let mutable i = 0
    while i < il.Length do
        let code = if il.[i] = 0xFEuy then (i <- i + 2; int16 (0xFE00 ||| int il.[i - 1])) else (i <- i + 1; int16 il.[i - 1])
        let op = opcodes.[code]
        let size =
            match op.OperandType with
            | OperandType.InlineNone -> 0
            | OperandType.ShortInlineBrTarget | OperandType.ShortInlineI | OperandType.ShortInlineVar -> 1
            | OperandType.InlineVar -> 2
            | OperandType.InlineI8 | OperandType.InlineR -> 8
            | OperandType.InlineSwitch -> 4 + 4 * BitConverter.ToInt32(il, i)
            | _ -> 4
        if op = OpCodes.Call || op = OpCodes.Callvirt || op = OpCodes.Newobj then
            let stored = i + 4 < il.Length && isStore il.[i + 4]
            try out.Add((m.Module.ResolveMethod(BitConverter.ToInt32(il, i), typeArgs, methodArgs), stored)) with _ -> ()
        i <- i + size
    List.ofSeq out

let private makesScalar (c: MethodBase) =
    not (isNull c.DeclaringType)
    && ((c.DeclaringType = typeof<Scalar> && c.Name = "op_Implicit")
        || (c.DeclaringType.Name = "ScalarExtensionMethods" && c.Name = "ToScalar"))

let private torchSharp = typeof<Scalar>.Assembly

/// Whether a TorchSharp method makes a temporary Scalar itself or in what it calls (up to 3 deep).
let private makesTemporaryInside =
    let memo = Dictionary<MethodBase, bool>()
    let rec go depth (c: MethodBase) =
        match memo.TryGetValue c with
        | true, v -> v
        | _ ->
            memo.[c] <- false // cycles
            let v =
                not (isNull c.DeclaringType) && c.DeclaringType.Assembly = torchSharp && not (makesScalar c)
                && callsOf c |> List.exists (fun (d, stored) -> (makesScalar d && not stored) || (depth < 3 && go (depth + 1) d))
            memo.[c] <- v
            v
    go 0

/// Every call in these types' methods that makes a temporary Scalar: "Type.Method → what".
let temporaryScalars (types: Type seq) =
    let flags = BindingFlags.Public ||| BindingFlags.NonPublic ||| BindingFlags.Instance ||| BindingFlags.Static ||| BindingFlags.DeclaredOnly
    [ for t in types do
        let methods = Seq.append (t.GetMethods flags |> Seq.cast<MethodBase>) (t.GetConstructors flags |> Seq.cast<MethodBase>)
        for m in methods do
            for (c, stored) in callsOf m do
                if makesScalar c && not stored then yield $"{t.FullName}.{m.Name} → temporary {c}"
                elif makesTemporaryInside c then yield $"{t.FullName}.{m.Name} → {c.DeclaringType.Name}.{c.Name} (makes one inside)" ]
    |> List.distinct

/// What the scan must find (and not find).
module Hazards =
    type Marker = class end
    let implicitPow (x: torch.Tensor) = x.pow(Scalar.op_Implicit 2)
    let square (x: torch.Tensor) = x.square()
    let heldPow (x: torch.Tensor) =
        use two = (2).ToScalar()
        x.pow(two)

// Sequenced: the scans share one memo (`makesTemporaryInside`), a plain Dictionary that two scans
// running at once corrupted (seen once both of them ran beside the report tests).
[<Tests>]
let tests =
    testSequenced <| testList "Scalar lifetimes" [
        test "the scan finds the temporaries it is meant to find" {
            let found = temporaryScalars [ typeof<Hazards.Marker>.DeclaringType ]
            Expect.exists found (fun s -> s.Contains "Hazards.implicitPow") "x.pow(2) with an implicit 2"
            Expect.exists found (fun s -> s.Contains "Hazards.square") "TorchSharp's square() makes pow(2) inside"
            Expect.isFalse (found |> List.exists (fun s -> s.Contains "Hazards.heldPow")) "a `use`d Scalar is held"
        }

        for name, assembly in [ "CleanSight.Core", typeof<CleanSight.Core.InputError>.Assembly
                                "CleanSight.Pipeline", typeof<CleanSight.Pipeline.World.Training.AdamW>.Assembly ] do
            test $"{name} passes libtorch no temporary Scalar" {
                let found = temporaryScalars (assembly.GetTypes())
                Expect.isEmpty found ("temporary Scalars (hold them: `using var s = x.ToScalar()` / TensorArithmetic):\n" + String.Join("\n", found))
            }
    ]
