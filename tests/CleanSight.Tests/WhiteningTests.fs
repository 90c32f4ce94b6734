module CleanSight.Tests.WhiteningTests

open Expecto

[<Tests>]
let tests = testList "WhiteningTests (todo)" []
