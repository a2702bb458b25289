"""The machinery of a run: config files and settings, the phases of training, checkpoints, metrics,
evaluation and the memory budget."""
