module CleanSight.Tests.TriggerTests

open Expecto

[<Tests>]
let tests = testList "TriggerTests (todo)" []
