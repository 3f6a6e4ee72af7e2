"""cvae: attribute-conditioned face generation with a conditional VAE.

The library knows nothing of who calls it: each pipeline stage is a function taking the
params and paths, exposed on the `cvae` command line, which `dvc.yaml` runs and Dagster
runs through DVC.
"""

__version__ = "0.1.0"
