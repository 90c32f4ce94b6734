module CleanSight.Pipeline.World.Scenes
