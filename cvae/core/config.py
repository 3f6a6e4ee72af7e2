"""Typed view of params.yaml: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cvae.core.errors import CvaeError


class _Section(BaseModel):
    # strict: "3" is not an int and 1 is not a string; a typo in a key is an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(_Section):
    source: str = "synthetic"
    checksum: str | None = Field(None, pattern=r"^(md5|sha256):[0-9a-fA-F]+$")
    celeba_mirror: str | None = None
    download_dir: str = "data/downloads"
    max_unpacked_bytes: int = Field(10_000_000_000, ge=1)
    synthetic_images: int = Field(4000, ge=1)
    crop: int = Field(148, ge=1)
    image_size: int = Field(64, ge=4)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    shard_images: int = Field(2048, ge=1)

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class ValidateParams(_Section):
    # null: data.image_size
    min_image_size: int | None = Field(None, ge=1)
    # share of +1 per attribute: [low, high]; attributes not listed are not bounded
    prevalence: dict[str, list[float]] = {}
    prevalence_action: Literal["warn", "block"] = "warn"
    # largest change of an attribute's share of +1 against the last validated delivery
    # before a (non-blocking) drift warning; attributes compared: all, or these
    drift_tolerance: float = Field(0.05, gt=0.0, le=1.0)
    drift_attributes: list[str] = []

    @model_validator(mode="after")
    def _bounds_are_shares(self) -> ValidateParams:
        for name, bounds in self.prevalence.items():
            if len(bounds) != 2 or not 0.0 <= bounds[0] <= bounds[1] <= 1.0:
                raise ValueError(f"prevalence.{name}: expected [low, high] with 0 <= low <= high <= 1")
        return self


class TrainParams(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(4e-3, gt=0.0)
    latent_dim: int = Field(8, ge=1)
    filters: list[int] = Field([16, 32, 64, 128], min_length=1)
    upsampling: Literal["transposed", "resize"] = "transposed"
    beta: float = Field(2.0, ge=0.0)
    decoder_std: float = Field(0.15, gt=0.0)
    clip_norm: float = Field(1.0, gt=0.0)
    kl_warmup_epochs: float = Field(2.0, ge=0.0)
    xcov_weight: float = Field(100.0, ge=0.0)
    edge_weight: float = Field(6.0, ge=0.0)
    steer_weight: float = Field(100.0, ge=0.0)
    critic_fake_weight: float = Field(0.5, ge=0.0)
    # attributes the steer term covers; empty: every attribute
    steer_attributes: list[str] = []
    # share of the steer term's faces decoded with their own attributes and one flipped
    steer_flip_share: float = Field(0.0, ge=0.0, le=1.0)
    adversary_weight: float = Field(0.0, ge=0.0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_min_fraction: float = Field(0.02, ge=0.0, le=1.0)
    early_stopping_patience: int = Field(3, ge=0)
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"


class ClassifierParams(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0)
    filters: list[int] = Field([32, 64, 128], min_length=1)


class EvaluateParams(_Section):
    batch_size: int = Field(256, ge=1)
    # attributes scored for fidelity; empty: every attribute
    fidelity_attributes: list[str] = []
    fidelity_samples: int = Field(256, ge=1)
    # attributes flipped on held-out faces; empty: every attribute
    edit_attributes: list[str] = []
    edit_images: int = Field(256, ge=1)


class VisualizeParams(_Section):
    reconstructions: int = Field(8, ge=1)
    samples: int = Field(16, ge=1)
    # label -> attribute settings; each row of the conditional figure applies one; empty:
    # chosen from the data (cvae.core.attributes)
    conditional_rows: dict[str, dict[str, float]] = {}
    conditional_columns: int = Field(8, ge=1)
    # the sweep's two axes (across, down); empty: chosen from the data
    sweep_attributes: list[str] = Field([], max_length=2)
    sweep_steps: int = Field(10, ge=2)
    sweep_range: float = Field(1.5, gt=0.0)
    # label -> attribute settings applied to held-out faces in the edits figure; empty:
    # chosen from the data
    edit_rows: dict[str, dict[str, float]] = {}
    interpolation_pairs: int = Field(4, ge=1)
    interpolation_steps: int = Field(8, ge=2)
    # empty: chosen from the data
    latent_color_attributes: list[str] = []


class GateRule(_Section):
    # which way a metric improves, and how much worse (absolute) a challenger may be
    better: Literal["higher", "lower"]
    tolerance: float = Field(ge=0.0)


class RetrainParams(_Section):
    # retrain even when the data and params are unchanged (the nightly run's switch)
    force: bool = False
    # metric path in metrics.json ("fidelity/mean", "edit/Smiling/success") -> its rule
    gate: dict[str, GateRule] = Field(default_factory=lambda: {
        "neg_elbo_nats": GateRule(better="lower", tolerance=20.0),
        "mse": GateRule(better="lower", tolerance=0.0005),
        "fidelity/mean": GateRule(better="higher", tolerance=0.02),
        "edit/mean/success": GateRule(better="higher", tolerance=0.05),
        "samples/grid_artifact_rate": GateRule(better="lower", tolerance=0.02),
        "samples/frechet_ratio": GateRule(better="lower", tolerance=0.25),
    })


class Params(_Section):
    seed: int = 42
    data: DataParams = DataParams()
    # `validate` in params.yaml; renamed here because BaseModel has a `validate` method
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    classifier: ClassifierParams = ClassifierParams()
    evaluate: EvaluateParams = EvaluateParams()
    visualize: VisualizeParams = VisualizeParams()
    retrain: RetrainParams = RetrainParams()

    @model_validator(mode="after")
    def _image_size_fits_the_model(self) -> Params:
        levels = 2 ** len(self.train.filters)
        if self.data.image_size % levels:
            raise ValueError(
                f"data.image_size ({self.data.image_size}) must divide by 2**len(train.filters)"
                f" = {levels}"
            )
        return self


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read `path`, apply `section.key=value` overrides, and check every key and type."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CvaeError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise CvaeError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CvaeError(f"{path}: expected a mapping of sections at the top level")
    for override in overrides or []:
        _apply_override(raw, override)
    return params_from_dict(raw, source=str(path))


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{source}: {'.'.join(str(part) for part in error['loc']) or '(top level)'}: "
            f"{_explain(error)}"
            for error in exc.errors()
        ]
        raise CvaeError("\n".join(problems)) from None


# keys that once existed, and what to do about them
REMOVED_KEYS = {
    "train.shuffle_buffer": "removed: every epoch is now a full permutation of the training images,"
                            " read without a buffer; delete the key",
    "train.condition_attributes": "removed: the model sees every attribute the data lists; to leave one"
                                  " out, drop its column from the attribute file; delete the key",
    "classifier.attributes": "removed: the classifier learns every attribute the data lists; delete the key",
}


def _explain(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return REMOVED_KEYS.get(".".join(map(str, error["loc"])), "unknown key")
    got = error.get("input")
    return f"{error['msg'].lower()} (got {got!r})" if not isinstance(got, dict) else error["msg"]


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise CvaeError(f"--set {override!r}: expected section.key=value")
    # YAML parses the value the way params.yaml would: 3 -> int, 0.5 -> float, [a, b] -> list.
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CvaeError(f"--set {override!r}: value is not valid YAML: {exc}") from None
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise CvaeError(f"--set {override!r}: {part} is not a section")
        node = child
    node[leaf] = value
