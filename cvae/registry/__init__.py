"""The model registry, the quality gate, and the `promote` stage."""
