module CleanSight.Tests.ScenesTests

open Expecto

[<Tests>]
let tests = testList "ScenesTests (todo)" []
