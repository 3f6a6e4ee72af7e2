"""The `prepare` stage, and reading its prepared splits for the model."""
