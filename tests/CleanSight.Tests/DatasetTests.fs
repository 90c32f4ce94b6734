module CleanSight.Tests.DatasetTests

open Expecto

[<Tests>]
let tests = testList "DatasetTests (todo)" []
