"""The run pipeline: edit runs and checkpoint scoring."""
