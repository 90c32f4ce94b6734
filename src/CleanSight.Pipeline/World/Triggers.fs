module CleanSight.Pipeline.World.Triggers
