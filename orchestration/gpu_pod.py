"""The `train` stage in a GPU pod on Kubernetes, through Dagster Pipes (`PipesK8sClient`).

The pod runs the field's recipe for a stage on another machine: `dvc repro --single-item
--pull train`, then `dvc push` and `dvc push --run-cache`. The asset then restores the stage
here from the run-cache (`dvc repro --pull`), so that only this machine writes dvc.lock and
the asset's metadata is read from the same files as after a local run (docs/deploy.md).

Off unless CVAE_GPU_IMAGE names an image that holds the project at this commit (with DVC
and its S3 plugin); the remote's credentials reach the pod from a Kubernetes Secret.
"""

from __future__ import annotations

import os
import re
import shlex

import dagster as dg
from dagster_k8s import PipesK8sClient
from dagster_k8s.pipes import build_pod_body
from pydantic import Field

GPU_STAGE = "train"
GPU_RESOURCE = "nvidia.com/gpu"  # NVIDIA's device plugin
POD_LABELS = {"app.kubernetes.io/part-of": "cvae"}


def worker_command(stage: str, force: bool = False) -> list[str]:
    """Run `stage` on the worker and send its outputs and run record to the DVC remote."""
    quoted = shlex.quote(stage)
    repro = f"dvc repro --single-item --pull {'--force ' if force else ''}{quoted}"
    return ["sh", "-c", f"{repro} && dvc push {quoted} && dvc push --run-cache"]


class GpuPod(dg.ConfigurableResource):
    """Where the GPU stage runs: here (no image set), or in a pod of this spec."""

    image: str = Field(default_factory=lambda: os.environ.get("CVAE_GPU_IMAGE", ""))
    namespace: str = Field(default_factory=lambda: os.environ.get("CVAE_GPU_NAMESPACE", ""))
    gpus: int = 1
    # GPU feature discovery's node label, and the taint GPU node pools usually carry
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}])
    # a Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL) for the remote
    remote_credentials_secret: str = "cvae-dvc-remote"

    @property
    def enabled(self) -> bool:
        return bool(self.image)

    def pod_spec(self) -> dict:
        """The pod spec under the image and command (PipesK8sClient's base_pod_spec)."""
        return {
            "containers": [{
                "resources": {"limits": {GPU_RESOURCE: str(self.gpus)}},
                "env_from": [{"secret_ref": {"name": self.remote_credentials_secret}}],
            }],
            "node_selector": dict(self.node_selector),
            "tolerations": [dict(toleration) for toleration in self.tolerations],
            "restart_policy": "Never",
        }

    def pod(self, run_id: str, stage: str = GPU_STAGE):
        """The pod as Kubernetes receives it (without the variables Pipes adds at launch)."""
        name = re.sub(r"[^a-z0-9-]", "-", f"cvae-{stage}-{run_id[:8]}".lower())
        return build_pod_body(pod_name=name, image=self.image,
                              command=worker_command(stage), env_vars={},
                              base_pod_meta={"labels": POD_LABELS},
                              base_pod_spec=self.pod_spec())

    def run(self, context: dg.AssetExecutionContext, stage: str = GPU_STAGE, force: bool = False) -> None:
        """Run `stage` in a pod and wait for it; its logs stream into the step's logs."""
        context.log.info(f"{stage}: running in a Kubernetes pod of {self.image} with {self.gpus} GPU(s)")
        PipesK8sClient().run(
            context=context, image=self.image, command=worker_command(stage, force),
            namespace=self.namespace or None, base_pod_meta={"labels": POD_LABELS},
            base_pod_spec=self.pod_spec(),
        )
