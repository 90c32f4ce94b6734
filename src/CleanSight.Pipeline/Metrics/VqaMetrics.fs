module CleanSight.Pipeline.Metrics.VqaMetrics
