"""Training: the train state and steps, checkpoints, sharding, precision, reporting."""
