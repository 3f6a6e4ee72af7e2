"""Dagster definitions for the cvae pipeline: thin assets that run DVC stages."""
