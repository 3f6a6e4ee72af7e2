"""The GPU step on Kubernetes, checked offline: the real pod that dagster-k8s builds for the
`train` stage (no cluster here), and the default that trains in place."""

from __future__ import annotations

import shlex

from dagster_k8s.pipes import build_pod_body

from orchestration.assets import STAGE_ASSETS
from orchestration.definitions import defs
from orchestration.dvc_pipeline import PROJECT_ROOT, read_stages
from orchestration.gpu_pod import GPU_STAGE, GpuPod, worker_command

IMAGE = "registry.example/cvae:3f2c1ab"


def test_the_train_pod_asks_for_a_gpu_and_runs_the_worker_recipe():
    pod_spec = GpuPod(image=IMAGE, gpus=2, node_selector={"cloud.example/accelerator": "h100"}).pod("8d1e9f0a-77")
    spec = pod_spec.spec
    [container] = spec.containers
    assert container.image == IMAGE
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert spec.node_selector == {"cloud.example/accelerator": "h100"}
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert spec.restart_policy == "Never"  # a failed training is reported, not restarted
    # the remote's credentials come from a Secret, never from the spec itself
    assert [source.secret_ref.name for source in container.env_from] == ["cvae-dvc-remote"]
    assert container.command[:2] == ["sh", "-c"]
    steps = [shlex.split(step) for step in container.command[2].split(" && ")]
    assert steps == [["dvc", "repro", "--single-item", "--pull", "train"], ["dvc", "push", "train"],
                     ["dvc", "push", "--run-cache"]]
    assert pod_spec.metadata.name == "cvae-train-8d1e9f0a"
    assert pod_spec.metadata.labels["app.kubernetes.io/part-of"] == "cvae"


def test_a_forced_retrain_is_forced_in_the_pod_too():
    assert "dvc repro --single-item --pull --force train" in worker_command("train", force=True)[2]


def test_the_pod_spec_is_what_pipes_launches():
    # PipesK8sClient.run builds its pod with the same function, adding only its own variables
    pod = GpuPod(image=IMAGE)
    launched = build_pod_body("x", IMAGE, worker_command(GPU_STAGE), {"DAGSTER_PIPES_CONTEXT": "c"},
                              None, pod.pod_spec())
    [container] = launched.spec.containers
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert {env.name for env in container.env} == {"DAGSTER_PIPES_CONTEXT"}


def test_the_gpu_stage_can_run_elsewhere_and_is_off_by_default(monkeypatch):
    assert read_stages(PROJECT_ROOT / "dvc.yaml")[GPU_STAGE].runs_elsewhere  # the run-cache restores it
    monkeypatch.delenv("CVAE_GPU_IMAGE", raising=False)
    assert not GpuPod().enabled  # trains in place, as without Kubernetes
    monkeypatch.setenv("CVAE_GPU_IMAGE", IMAGE)
    assert GpuPod().enabled and GpuPod().image == IMAGE
    train = defs.resolve_assets_def(STAGE_ASSETS[GPU_STAGE].name)
    assert "gpu_pod" in train.required_resource_keys
