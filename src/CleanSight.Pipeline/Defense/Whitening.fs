module CleanSight.Pipeline.Defense.Whitening
