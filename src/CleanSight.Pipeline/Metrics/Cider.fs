module CleanSight.Pipeline.Metrics.Cider
