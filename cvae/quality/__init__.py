"""Judging the model: the attribute classifier (`train_classifier`), fidelity and edit success,
sample quality, and the `evaluate` stage."""
