"""cvae: attribute-conditioned face generation with a conditional VAE.

The library knows nothing of who calls it: each pipeline stage is a function taking the
params and paths, exposed on the `cvae` command line, which `dvc.yaml` runs and Dagster
runs through DVC.
"""

import os

# oneDNN's kernels for TensorFlow's CPU ops: 1.5x the training steps per second of the
# default model on a 2-core AVX2 EPYC (docs/performance.md, *Training speed*). TensorFlow turns them on
# by itself only on CPUs with AVX-512 VNNI/BF16 or AMX; on other x86 CPUs it falls back to
# Eigen's. Set before TensorFlow loads (it reads the variable once); an explicit
# TF_ENABLE_ONEDNN_OPTS=0 in the environment still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
