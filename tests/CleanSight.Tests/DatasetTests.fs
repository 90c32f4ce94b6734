module CleanSight.Tests.DatasetTests

open System.IO
open System.Text
open Expecto
open CleanSight.Core
open CleanSight.Core.Vision
open CleanSight.Pipeline.Data
open CleanSight.Pipeline.Data.Dataset

/// A fresh folder with images/a.png and images/b.png (tiny grey PNGs).
let private folderWithImages () =
    let dir = Fixtures.tempDir ()
    Directory.CreateDirectory(Path.Combine(dir, "images")) |> ignore
    for name in [ "a"; "b" ] do
        RgbImage(2, 2, Array.create 12 128uy).Save(Path.Combine(dir, "images", name + ".png"))
    dir

let private good = """{"id": "a", "image": "images/a.png", "question": "What color?", "answers": ["red"], "task": "vqa"}"""

/// Writes the given lines (UTF-8) as data.jsonl in a folder with images; returns its path.
let private jsonl (lines: string list) =
    let path = Path.Combine(folderWithImages (), "data.jsonl")
    File.WriteAllText(path, String.concat "\n" lines + "\n", UTF8Encoding false)
    path

/// `read path` must fail with an InputError naming the file, whose message contains `expected`.
let private expectError (path: string) (expected: string) =
    try
        read path |> ignore
        failtest $"expected an InputError containing '{expected}'"
    with :? InputError as e ->
        Expect.equal e.File path "the error names the file"
        Expect.stringContains e.Message expected "the error says where and what"

let private item id image : Item =
    { Id = id; Image = image; Question = "What color is the circle?"; Answers = List.replicate 10 "red"; Task = Vqa }

/// Line 2 is `bad`, line 1 is fine: the error must name line 2 and `problem`.
let private badLine name (bad: string) (problem: string) =
    test name {
        let path = jsonl [ good; bad ]
        expectError path "line 2: "
        expectError path problem
    }

[<Tests>]
let tests =
    testList "dataset" [
        test "write then read gives the same items, one object per line, fields in order, no BOM" {
            let dir = folderWithImages ()
            let path = Path.Combine(dir, "data.jsonl")
            let items =
                [ item "a" "images/a.png"
                  { Id = "b"; Image = "images/b.png"; Question = "Décris l'image: \"vite\"\n"; Answers = [ "un carré"; "x" ]; Task = Caption } ]
            write path items
            Expect.sequenceEqual (read path) items "round trip"
            let bytes = File.ReadAllBytes path
            Expect.notEqual bytes.[0] 0xEFuy "no BOM"
            let lines = File.ReadAllLines path
            Expect.equal lines.Length 2 "one line per item"
            Expect.isTrue (lines.[0].StartsWith """{"id":"a","image":"images/a.png","question":""" ) lines.[0]
            Expect.isTrue (lines.[0].EndsWith "\"task\":\"vqa\"}") lines.[0]
            Expect.stringContains lines.[1] "Décris" "non-ASCII stays readable"
            Expect.equal (imagePath path items.[1]) (Path.Combine(dir, "images", "b.png")) "image path is absolute, beside the file"
        }
        test "write is atomic and leaves no temp file" {
            let dir = folderWithImages ()
            write (Path.Combine(dir, "d.jsonl")) [ item "a" "images/a.png" ]
            Expect.isEmpty (Directory.GetFiles(dir, "*.tmp")) "no temp files"
        }
        test "write refuses items read would refuse" {
            let dir = folderWithImages ()
            let path = Path.Combine(dir, "d.jsonl")
            Expect.throwsT<System.ArgumentException> (fun () -> write path [ { item "a" "images/a.png" with Answers = [] } ]) "empty answers"
            Expect.throwsT<System.ArgumentException> (fun () -> write path [ item "a" "../a.png" ]) "escaping path"
            Expect.throwsT<System.ArgumentException> (fun () -> write path [ item "a" "images/a.png"; item "a" "images/b.png" ]) "duplicate id"
            Expect.isFalse (File.Exists path) "nothing written"
        }
        test "blank lines and CRLF are accepted" {
            let path = jsonl [ good; ""; "  " ]
            File.WriteAllText(path, File.ReadAllText(path).Replace("\n", "\r\n"))
            Expect.equal (read path).Length 1 "one item"
        }
        testList "malformed lines are InputErrors naming file and line" [
            badLine "invalid JSON" """{"id": "b", """ "invalid JSON"
            badLine "not an object" """["b"]""" "expected a JSON object"
            badLine "missing id" """{"image": "images/b.png", "question": "q", "answers": ["x"], "task": "vqa"}""" "missing field \"id\""
            badLine "missing answers" """{"id": "b", "image": "images/b.png", "question": "q", "task": "vqa"}""" "missing field \"answers\""
            badLine "missing task" """{"id": "b", "image": "images/b.png", "question": "q", "answers": ["x"]}""" "missing field \"task\""
            badLine "id is a number" """{"id": 2, "image": "images/b.png", "question": "q", "answers": ["x"], "task": "vqa"}""" "field \"id\" must be a string"
            badLine "answers is a string" """{"id": "b", "image": "images/b.png", "question": "q", "answers": "x", "task": "vqa"}""" "field \"answers\" must be an array"
            badLine "answers hold a number" """{"id": "b", "image": "images/b.png", "question": "q", "answers": ["x", 1], "task": "vqa"}""" "only strings"
            badLine "empty answers" """{"id": "b", "image": "images/b.png", "question": "q", "answers": [], "task": "vqa"}""" "\"answers\" is empty"
            badLine "unknown task" """{"id": "b", "image": "images/b.png", "question": "q", "answers": ["x"], "task": "vqa2"}""" "unknown task \"vqa2\""
            badLine "duplicate field" """{"id": "b", "id": "c", "image": "images/b.png", "question": "q", "answers": ["x"], "task": "vqa"}""" "appears twice"
            badLine "duplicate id" """{"id": "a", "image": "images/b.png", "question": "q", "answers": ["x"], "task": "vqa"}""" "duplicate id \"a\" (first on line 1)"
            badLine "absolute image path" """{"id": "b", "image": "/etc/passwd", "question": "q", "answers": ["x"], "task": "vqa"}""" "is absolute"
            badLine "Windows absolute image path" """{"id": "b", "image": "C:\\x.png", "question": "q", "answers": ["x"], "task": "vqa"}""" "is absolute"
            badLine "image path escaping the folder" """{"id": "b", "image": "../images/b.png", "question": "q", "answers": ["x"], "task": "vqa"}""" "leaves the dataset folder"
            badLine "image path escaping through a subfolder" """{"id": "b", "image": "images/../../b.png", "question": "q", "answers": ["x"], "task": "vqa"}""" "leaves the dataset folder"
            badLine "missing image" """{"id": "b", "image": "images/c.png", "question": "q", "answers": ["x"], "task": "vqa"}""" "image file not found"
            test "invalid UTF-8" {
                let path = jsonl [ good ]
                File.WriteAllBytes(path, Array.append (File.ReadAllBytes path) [| 0xC3uy; 0x28uy; '\n'B |])
                expectError path "line 2: invalid UTF-8"
            }
            test "empty file" {
                let path = jsonl []
                expectError path "no items"
            }
            test "missing file" {
                expectError (Path.Combine(Fixtures.tempDir (), "none.jsonl")) "not found"
            }
        ]
        testList "inputs to run (readInputs: answers optional)" [
            test "absent or empty answers are read as none; read still refuses both" {
                let absent = """{"id": "b", "image": "images/b.png", "question": "Is it red?", "task": "vqa"}"""
                let empty = """{"id": "c", "image": "images/b.png", "question": "What shape?", "answers": [], "task": "vqa"}"""
                let path = jsonl [ good; absent; empty ]
                let items = readInputs path
                Expect.equal [ for it in items -> it.Id, it.Answers ] [ "a", [ "red" ]; "b", []; "c", [] ] "answers as given, none when absent"
                expectError path "line 2: missing field \"answers\""
            }
            test "every other check still holds: a malformed line names file and line" {
                for bad, problem in
                    [ """{"id": "b", "image": "images/b.png", "question": "q", "answers": [""], "task": "vqa"}""", "holds an empty answer"
                      """{"id": "b", "image": "images/b.png", "question": "q", "answers": "x", "task": "vqa"}""", "must be an array"
                      """{"id": "b", "image": "images/b.png", "question": "q"}""", "missing field \"task\""
                      """{"id": "b", "image": "/etc/passwd", "question": "q", "task": "vqa"}""", "is absolute" ] do
                    let path = jsonl [ good; bad ]
                    let e = Expect.throwsC (fun () -> readInputs path |> ignore) id
                    Expect.stringContains e.Message $"{path}: line 2: " $"{problem}: names file and line"
                    Expect.stringContains e.Message problem problem
            }
        ]
        test "a '..' that stays inside the folder is fine" {
            Expect.isNone (imagePathProblem "images/../images/a.png") "inside"
            let path = jsonl [ good.Replace("images/a.png", "images/../images/a.png") ]
            Expect.equal (read path).Length 1 "read"
        }
    ]
