"""`cvae <stage>`: the pipeline's stages on the command line (what dvc.yaml runs).

Every stage takes `--params FILE` and repeated `--set section.key=value`; its input and
output paths default to the ones dvc.yaml declares.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cvae.config import Params, load_params
from cvae.errors import CvaeError

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) is noise in stage logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _download(params: Params, args: argparse.Namespace) -> None:
    from cvae.download import download

    path = download(params, args.out)
    print(f"download: raw dataset ready in {path}")


def _validate(params: Params, args: argparse.Namespace) -> None:
    from cvae.validation import validate

    summary = validate(params, args.raw, args.report)
    if not summary.success:
        raise CvaeError(summary.describe_failures() + f"\n(report: {args.report})")
    print(f"validate: {summary.rows} rows and {summary.image_files} image files passed"
          f" ({summary.evaluated} expectations, {len(summary.warnings)} warning(s); report: {args.report})")
    if summary.warnings:
        print(f"validate: {summary.describe_warnings()}")


def _prepare(params: Params, args: argparse.Namespace) -> None:
    from cvae.prepare import prepare

    meta = prepare(params, args.raw, args.validation, args.out)
    print(f"prepare: {meta['splits']} images at {meta['image_size']}px in {args.out}")


def _train(params: Params, args: argparse.Namespace) -> None:
    from cvae.train import train

    final = train(params, args.prepared, args.model, args.history)
    print(f"train: saved {args.model}; last epoch " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))


def _train_classifier(params: Params, args: argparse.Namespace) -> None:
    from cvae.classifier import train_classifier

    report = train_classifier(params, args.prepared, args.model, args.report)
    print(f"train-classifier: saved {args.model}; held-out mean accuracy {report['mean_accuracy']:.3f}"
          f" (per attribute: {args.report})")


def _evaluate(params: Params, args: argparse.Namespace) -> None:
    from cvae.evaluate import evaluate

    metrics = evaluate(params, args.prepared, args.model, args.metrics)
    print(f"evaluate: {metrics} -> {args.metrics}")


def _visualize(params: Params, args: argparse.Namespace) -> None:
    from cvae.figures import visualize

    figures = visualize(params, args.prepared, args.model, args.figures)
    print(f"visualize: wrote {', '.join(sorted(figures))} to {args.figures}")


STAGES: dict[str, tuple[str, Callable, list[tuple[str, str, str]]]] = {
    # name: (help, function, [(option, default path, what it is)])
    "download": ("fetch or generate the raw dataset", _download, [("--out", "data/raw", "raw dataset directory")]),
    "validate": ("check the attribute table, partition and images with Great Expectations", _validate, [
        ("--raw", "data/raw", "raw dataset directory"),
        ("--report", "reports/validation", "where the report goes"),
    ]),
    "prepare": ("crop, resize and split the images", _prepare, [
        ("--raw", "data/raw", "raw dataset directory"),
        ("--validation", "reports/validation", "the validation report (must have passed)"),
        ("--out", "data/prepared", "prepared dataset directory"),
    ]),
    "train": ("train the conditional VAE", _train, [
        ("--prepared", "data/prepared", "prepared dataset directory"),
        ("--model", "models/cvae.keras", "where the model is saved"),
        ("--history", "reports/train", "where the per-epoch history goes"),
        ("--checkpoints", "models/checkpoints", "per-epoch checkpoints; a killed run resumes from here"),
    ]),
    "train-classifier": ("train the attribute classifier that judges generated faces", _train_classifier, [
        ("--prepared", "data/prepared", "prepared dataset directory"),
        ("--model", "models/classifier.keras", "where the classifier is saved"),
        ("--report", "reports/classifier.json", "where its held-out accuracy per attribute goes"),
    ]),
    "evaluate": ("score the model on the held-out split", _evaluate, [
        ("--prepared", "data/prepared", "prepared dataset directory"),
        ("--model", "models/cvae.keras", "the trained model"),
        ("--classifier", "models/classifier.keras", "the attribute classifier"),
        ("--metrics", "reports/metrics.json", "where the metrics go"),
    ]),
    "visualize": ("draw reconstructions, samples, the sweep and the latent map", _visualize, [
        ("--prepared", "data/prepared", "prepared dataset directory"),
        ("--model", "models/cvae.keras", "the trained model"),
        ("--figures", "reports/figures", "where the PNGs go"),
    ]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (help_text, _, paths) in STAGES.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--params", default="params.yaml", type=Path, help="params file (default: %(default)s)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                             help="override one param; may be repeated")
        for option, default, what in paths:
            command.add_argument(option, default=default, type=Path, help=f"{what} (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
        STAGES[args.command][1](params, args)
    except CvaeError as error:
        print(f"cvae {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cvae {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
