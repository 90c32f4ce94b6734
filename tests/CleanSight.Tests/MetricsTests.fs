module CleanSight.Tests.MetricsTests

open Expecto

[<Tests>]
let tests = testList "MetricsTests (todo)" []
