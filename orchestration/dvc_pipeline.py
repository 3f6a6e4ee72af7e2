"""The DVC pipeline as Dagster sees it: the stage graph from dvc.yaml, the hashes from
dvc.lock, and a resource that runs one stage through `dvc repro` under Dagster Pipes.

DVC lives in its own virtualenv (its hydra dependency pins an antlr that breaks
Dagster's asset selections), so this module never imports `dvc`: it reads DVC's YAML
files and runs DVC's command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import dagster as dg
import yaml
from filelock import FileLock

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# step log lines of DvcProject.turn
TURN_TAKEN, TURN_ENDED = "took the DVC workspace of", "gave back the DVC workspace of"
WAITING = "waiting for another step's DVC run in"
OUTPUT_KINDS = ("outs", "metrics", "plots")  # what a stage in dvc.yaml may write


@dataclass(frozen=True)
class Stage:
    name: str
    description: str  # the stage's `desc`
    command: tuple[str, ...]  # its `cmd`, split as a shell would
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots declared by the stage
    always_changed: bool = False
    persistent_outs: tuple[str, ...] = ()  # outputs kept across reruns (`persist: true`)
    uncached_outs: tuple[str, ...] = ()  # outputs DVC does not cache (`cache: false`)

    @property
    def runs_elsewhere(self) -> bool:
        """Whether a run of this stage on another machine can be restored here from the
        run-cache it pushed. DVC saves no run of an always_changed stage or of one with
        persist outputs, and `dvc push` sends no uncached output, so those stay here."""
        return not (self.always_changed or self.persistent_outs or self.uncached_outs)

    def path(self, option: str) -> str:
        """The path the stage's command passes with `option` ("--model" -> "models/cvae.keras")."""
        if option not in self.command[:-1]:
            raise ValueError(f"dvc.yaml: stage {self.name}'s cmd has no {option} option: {' '.join(self.command)}")
        return self.command[self.command.index(option) + 1]


def _paths(entries: list) -> tuple[str, ...]:
    # an entry is "path" or {"path": {options}}
    return tuple(next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or [])


def _with_option(entries: list, option: str, value: bool) -> tuple[str, ...]:
    return tuple(path for entry in entries or [] if isinstance(entry, dict)
                 for path, options in entry.items() if (options or {}).get(option, not value) == value)


def read_stages(dvc_yaml: Path) -> dict[str, Stage]:
    spec = yaml.safe_load(dvc_yaml.read_text())
    missing = [name for name, body in spec["stages"].items() if not body.get("desc")]
    if missing:
        raise ValueError(f"{dvc_yaml}: stages {missing} have no desc (it is their asset's description)")
    return {
        name: Stage(
            name=name,
            description=body["desc"],
            command=tuple(shlex.split(body["cmd"])),
            deps=_paths(body.get("deps")),
            outs=_paths(body.get("outs")) + _paths(body.get("metrics")) + _paths(body.get("plots")),
            always_changed=bool(body.get("always_changed")),
            persistent_outs=sum((_with_option(body.get(kind), "persist", True) for kind in OUTPUT_KINDS), ()),
            uncached_outs=sum((_with_option(body.get(kind), "cache", False) for kind in OUTPUT_KINDS), ()),
        )
        for name, body in spec["stages"].items()
    }


def _inside(path: str, folder: str) -> bool:
    path, folder = PurePosixPath(path), PurePosixPath(folder)
    return path == folder or folder in path.parents


def upstream_stages(stages: dict[str, Stage]) -> dict[str, set[str]]:
    """For each stage, the stages whose outputs it depends on (as DVC links them)."""
    return {
        stage.name: {
            other.name
            for other in stages.values()
            if other.name != stage.name
            and any(_inside(dep, out) or _inside(out, dep) for dep in stage.deps for out in other.outs)
        }
        for stage in stages.values()
    }


def read_lock(project_dir: Path) -> dict:
    path = project_dir / "dvc.lock"
    return yaml.safe_load(path.read_text()).get("stages", {}) if path.exists() else {}


def recorded_outputs(project_dir: Path, stage: str) -> dict[str, str]:
    """The md5 that dvc.lock records for each output of `stage` ({} if not recorded)."""
    entry = read_lock(project_dir).get(stage, {})
    return {out["path"]: out.get("md5", "") for out in entry.get("outs", [])}


def data_version(hashes: dict[str, str]) -> dg.DataVersion:
    digest = hashlib.sha256("\n".join(f"{p}={h}" for p, h in sorted(hashes.items())).encode()).hexdigest()
    return dg.DataVersion(digest[:16])


class DvcProject(dg.ConfigurableResource):
    """Where the DVC project is and which `dvc` runs it."""

    project_dir: str = os.environ.get("CVAE_PROJECT_DIR", str(PROJECT_ROOT))
    dvc_executable: str = ""  # empty: the project's .venv-dvc/bin/dvc, else `dvc` on PATH

    @property
    def root(self) -> Path:
        return Path(self.project_dir)

    def dvc_command(self) -> str:
        if self.dvc_executable:
            return self.dvc_executable
        local = PROJECT_ROOT / ".venv-dvc" / "bin" / "dvc"
        return str(local) if local.exists() else "dvc"

    def stage_env(self) -> dict[str, str]:
        # Stage commands call `cvae`: put this environment's bin first so DVC finds it.
        bin_dir = str(Path(sys.executable).parent)
        return {"PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}

    def workspace_lock(self) -> FileLock:
        """The OS file lock that one Dagster step at a time holds while it uses DVC's workspace."""
        lock_path = self.root / ".dvc" / "tmp" / "dagster-step.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(lock_path)

    @contextmanager
    def turn(self, context: dg.AssetExecutionContext) -> Iterator[None]:
        """Hold this project's DVC workspace for one asset step, across processes.

        The "dvc" pool should already give steps turns, but Dagster's SQLite storage claims a
        pool slot with a SELECT ... FOR UPDATE that SQLite ignores, so two runs starting at once
        can both take the one slot; and `dvc repro --wait-for-lock` waits only for DVC's repo
        lock, which DVC releases while a stage's command runs, so the second run then fails on
        "'data/...' is busy". An OS file lock makes the status check and the repro one turn.
        """
        lock = self.workspace_lock()
        try:
            lock.acquire(timeout=0)
        except TimeoutError:  # filelock.Timeout subclasses it
            context.log.info(f"{WAITING} {self.root} to finish")
            lock.acquire()
        try:
            context.log.debug(f"{TURN_TAKEN} {self.root}")
            yield
        finally:
            context.log.debug(f"{TURN_ENDED} {self.root}")
            lock.release()

    def pending_changes(self, stage: str) -> list[str]:
        """Why DVC would rerun `stage` now (empty: it is up to date and will be skipped)."""
        result = subprocess.run([self.dvc_command(), "--wait-for-lock", "status", "--json", stage],
                                cwd=self.root, env={**os.environ, **self.stage_env()}, capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise dg.Failure(f"dvc status {stage} failed in {self.root}: {result.stderr.strip()}")
        return describe_status(json.loads(result.stdout or "{}").get(stage, []))

    def repro(self, context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient, stage: str,
              force: bool = False, check: bool = True, pull: bool = False) -> bool:
        """Run one stage (not its upstream: Dagster orders those) and let DVC record it.

        With check=False a failed stage returns False rather than failing the step, for a
        caller that reports the failure itself (the validate asset's blocking check). With
        pull, DVC first looks for the run in the remote's run-cache (a run on another machine)."""
        command = [self.dvc_command(), "--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []),
                   *(["--pull"] if pull else []), stage]
        context.log.info(f"{' '.join(command[1:])} in {self.root}")
        try:
            pipes.run(context=context, command=command, cwd=str(self.root), env=self.stage_env())
        except Exception as error:  # Pipes' execution error, which dagster does not export
            if check:
                raise
            context.log.warning(f"{stage} failed: {error}")
            return False
        return True


def describe_status(entries: list) -> list[str]:
    """DVC's status of one stage in words: ["changed deps: data/prepared (modified)", ...]."""
    reasons = []
    for entry in entries:
        if isinstance(entry, str):
            reasons.append(entry)  # "always changed"
            continue
        for kind, changes in entry.items():
            if isinstance(changes, dict):
                listed = ", ".join(f"{path} ({change})" for path, change in changes.items())
            else:
                listed = str(changes)
            reasons.append(f"{kind}: {listed}")
    return reasons
