module CleanSight.Pipeline.Data.Dataset
