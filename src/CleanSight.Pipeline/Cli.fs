module CleanSight.Pipeline.Cli
