"""`cvae <command>`: the pipeline's stages (what dvc.yaml runs) and faces from a trained model.

Every stage takes `--params FILE` and repeated `--set section.key=value`; its input and
output paths default to the ones dvc.yaml declares. `generate` and `edit` use the trained
model; their logic lives in `cvae.faces`, and this module only wires up their options.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cvae.core.config import Params, load_params
from cvae.core.errors import CvaeError

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) is noise in stage logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _check_source(params: Params, args: argparse.Namespace) -> None:
    from cvae.source.check import check_source

    check = check_source(params, args.out)
    print(f"check-source: {check.describe()} -> {args.out}")


def _download(params: Params, args: argparse.Namespace) -> None:
    from cvae.source.download import download

    path = download(params, args.out, args.source_check)
    print(f"download: raw dataset ready in {path}")


def _validate(params: Params, args: argparse.Namespace) -> None:
    from cvae.validation.validate import validate

    summary = validate(params, args.raw, args.report, args.baseline)
    if not summary.success:
        raise CvaeError(summary.describe_failures() + f"\n(report: {args.report})")
    print(f"validate: {summary.rows} rows and {summary.image_files} image files passed"
          f" ({summary.evaluated} expectations, {len(summary.warnings)} warning(s); report: {args.report})")
    if summary.warnings:
        print(f"validate: {summary.describe_warnings()}")


def _prepare(params: Params, args: argparse.Namespace) -> None:
    from cvae.data.prepare import prepare

    meta = prepare(params, args.raw, args.validation, args.out)
    print(f"prepare: {meta['splits']} images at {meta['image_size']}px in {args.out}")


def _train(params: Params, args: argparse.Namespace) -> None:
    from cvae.model.train import train

    final = train(params, args.prepared, args.model, args.history, checkpoint_dir=args.checkpoints)
    print(f"train: saved {args.model}; last epoch " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))


def _train_classifier(params: Params, args: argparse.Namespace) -> None:
    from cvae.quality.classifier import train_classifier

    report = train_classifier(params, args.prepared, args.model, args.report)
    print(f"train-classifier: saved {args.model}; held-out mean accuracy {report['mean_accuracy']:.3f},"
          f" balanced {report['mean_balanced_accuracy']:.3f} (per attribute: {args.report})")


def _evaluate(params: Params, args: argparse.Namespace) -> None:
    from cvae.quality.evaluate import evaluate

    metrics = evaluate(params, args.prepared, args.model, args.classifier, args.metrics)
    edits = ", ".join(f"{name} {result['success']:.2f}" for name, result in metrics["edit"].items())
    samples = metrics["samples"]
    print(f"evaluate: {metrics['test_images']} held-out faces: MSE {metrics['mse']:.4f} per pixel"
          f" ({metrics['mse_vs_mean_image']:.1f}x below the mean image), {metrics['neg_elbo_nats']:.1f} nats"
          f" ({metrics['bits_per_dim']:.3f} bits/dim); fidelity {metrics['fidelity']['mean']:.3f};"
          f" edit success {edits}; samples: grid artifacts {samples['grid_artifact_rate']:.3f}, Frechet"
          f" {samples['frechet_distance']:.4g} (real faces {samples['real_frechet_distance']:.4g}) -> {args.metrics}")


def _promote(params: Params, args: argparse.Namespace) -> None:
    from cvae.registry.promote import describe, promote

    decision = promote(params, args.prepared, args.model, args.classifier, args.metrics, args.registry,
                       args.production, args.decision)
    print(describe(decision) + f"\n(decision: {args.decision})")


def _visualize(params: Params, args: argparse.Namespace) -> None:
    from cvae.figures import visualize

    figures = visualize(params, args.prepared, args.model, args.figures, args.history)
    print(f"visualize: wrote {', '.join(sorted(figures))} to {args.figures}")


STAGES: dict[str, tuple[str, Callable, list[tuple[str, str, str]]]] = {
    # name: (help, function, [(option, default path, what it is)])
    "check-source": ("fingerprint the data source (folder content, URL validators), so DVC reruns download"
                     " only when it changed", _check_source, [
        ("--out", "data/source.json", "where the fingerprint goes (rewritten only when it changed)"),
    ]),
    "download": ("fetch or generate the raw dataset", _download, [
        ("--out", "data/raw", "raw dataset directory"),
        ("--source-check", "data/source.json", "the fingerprint of check-source: a kept URL download that no"
         " longer matches the server's is fetched again"),
    ]),
    "validate": ("check the attribute table, partition and images with Great Expectations", _validate, [
        ("--raw", "data/raw", "raw dataset directory"),
        ("--report", "reports/validation", "where the report goes"),
        ("--baseline", "reports/validated_prevalence.json", "attribute prevalence of the last validated delivery:"
         " a shift beyond validate.drift_tolerance is a warning; replaced when this delivery passes"),
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
    "promote": ("register the trained model and make it the production model if the quality gate passes",
                _promote, [
        ("--prepared", "data/prepared", "prepared dataset directory (both models are scored on its test split)"),
        ("--model", "models/cvae.keras", "the challenger: the newly trained model"),
        ("--classifier", "models/classifier.keras", "the attribute classifier that judges both models"),
        ("--metrics", "reports/metrics.json", "the challenger's metrics, from evaluate"),
        ("--registry", "models/registry", "the registry: one folder per trained model"),
        ("--production", "models/production", "the symlink to the registry version in use"),
        ("--decision", "reports/promotion.json", "where the decision and both models' numbers go"),
    ]),
    "visualize": ("draw reconstructions, samples, edits, the sweep, the latent map and training curves",
                  _visualize, [
        ("--prepared", "data/prepared", "prepared dataset directory"),
        ("--model", "models/cvae.keras", "the trained model"),
        ("--history", "reports/train", "the training history (for the training curves)"),
        ("--figures", "reports/figures", "where the PNGs go"),
    ]),
}


DEFAULT_PARAMS = Path("params.yaml")
PRODUCTION = Path("models/production")
MODEL = ("--model", str(PRODUCTION / "cvae.keras"), "the model (the production model unless given)")
CLASSIFIER = ("--classifier", str(PRODUCTION / "classifier.keras"),
              "the attribute classifier (the production model's unless given)")


def _require_production(*paths: Path) -> None:
    """A default path into models/production that is missing: say what to do, not just 'not found'."""
    if any(path.is_relative_to(PRODUCTION) for path in paths) and not PRODUCTION.exists():
        from cvae.registry.store import production

        production(PRODUCTION)  # a dangling link explains itself
        raise CvaeError(f"{PRODUCTION}: no production model yet; run the pipeline (`make run` or `dvc repro`)"
                        " or pass --model PATH")


def _generate(args: argparse.Namespace) -> None:
    from cvae.faces import GRID_FILE, generate_faces, parse_settings

    settings = parse_settings(args.attrs, "--attr")
    _require_production(args.model)
    faces = generate_faces(settings, args.count, args.seed, args.out, args.model)
    print(f"generate: wrote {len(faces.paths) - 1} faces and {GRID_FILE} to {args.out}"
          f" (seed {faces.seed}; {faces.describe_draw()})")


def _edit(args: argparse.Namespace) -> None:
    from cvae.faces import edit_face, parse_settings

    edits = parse_settings(args.edits, "--set")
    attributes_path = args.classifier if args.attrs_from == "classifier" else args.attr_file
    _require_production(args.model, attributes_path)
    face = edit_face(args.image, edits, args.out, _crop(args.params), args.attrs_from, attributes_path,
                     args.model)
    changes = ", ".join(f"{name} {face.before[name]:g} -> {face.after[name]:g}" for name in edits)
    print(f"edit: wrote {face.path} ({changes or 'nothing changed: a reconstruction'})")
    if face.linked:
        print(f"edit: note: {face.describe_linked()}")


def _crop(params_path: Path | None) -> int | None:
    """The params' data.crop, so that a face is framed as the training faces were; None
    (the largest centred square) when no --params is given and there is no params.yaml."""
    if params_path is None:
        if not DEFAULT_PARAMS.is_file():
            return None
        params_path = DEFAULT_PARAMS
    return load_params(params_path).data.crop


def _run_stage(stage: Callable, args: argparse.Namespace) -> None:
    stage(load_params(args.params, args.overrides), args)


def _add_path_option(command: argparse.ArgumentParser, option: str, default: str, what: str) -> None:
    command.add_argument(option, default=default, type=Path, metavar="PATH",
                         help=f"{what} (default: %(default)s)")


def _add_generate(commands) -> None:
    command = commands.add_parser(
        "generate", help="draw new faces with the attributes you set",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Draw new faces with the attributes you set.

Attributes you do not set are drawn together from the training attribute rows that the
model carries (so they come with their real prevalence and co-occurrence), from rows that
agree with your settings where any do: Bald=1 draws the other attributes of bald faces, so
no hair colour. Each face-N.png records its attributes, the model and the seed in its PNG
text chunks; grid.png shows them all. The same seed gives the same files.""",
        epilog="example: cvae generate --attr Smiling=1 --attr Eyeglasses=1 -n 16 --out faces/")
    command.add_argument("--attr", dest="attrs", action="append", default=[], metavar="NAME=VALUE",
                         help="set an attribute; may be repeated. The model was trained on -1 (absent) and 1"
                              " (present); other numbers extrapolate")
    command.add_argument("-n", "--count", type=int, default=16, metavar="N",
                         help="number of faces (default: %(default)s)")
    command.add_argument("--seed", type=int, metavar="S",
                         help="seed of the drawn attributes and latent codes (default: a fresh one, printed"
                              " and recorded in the PNGs)")
    command.add_argument("--out", type=Path, required=True, metavar="DIR",
                         help="directory for the PNGs (created if missing; files of the same names are"
                              " replaced)")
    _add_path_option(command, *MODEL)
    command.set_defaults(run=_generate)


def _add_edit(commands) -> None:
    command = commands.add_parser(
        "edit", help="change attributes of a face in an image",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Change attributes of a face in an image.

The image is cropped as the training faces were (data.crop of the params file) and resized
to the model's size, encoded under its own attributes (predicted by the classifier, or
looked up by file name in a CelebA attribute file), and decoded with the attributes you
--set. The PNG records the source image and the attributes before and after in its text
chunks. Attributes that the training faces show with the change (on CelebA, a smile with
high cheekbones) and that this face has the other way are named after the edit: the model
draws an attribute from all of them together, so setting them too makes the change surer.""",
        epilog="example: cvae edit photo.jpg --set Smiling=1 --out smiling.png")
    command.add_argument("image", type=Path, metavar="IMAGE", help="the face: a JPEG or PNG")
    command.add_argument("--set", dest="edits", action="append", default=[], metavar="NAME=VALUE",
                         help="attribute to change; may be repeated (none: the reconstruction). -1 is absent,"
                              " 1 present; other numbers extrapolate")
    command.add_argument("--out", type=Path, required=True, metavar="FILE", help="the PNG to write")
    command.add_argument("--attrs-from", choices=("classifier", "file"), default="classifier",
                         help="where the face's own attributes come from (default: %(default)s)")
    _add_path_option(command, *MODEL)
    _add_path_option(command, *CLASSIFIER)
    _add_path_option(command, "--attr-file", "data/raw/list_attr_celeba.txt",
                     "CelebA-format attribute file, for --attrs-from file; the image is looked up by"
                     " file name")
    command.add_argument("--params", type=Path, metavar="PATH",
                         help=f"params file whose data.crop frames the face (default: {DEFAULT_PARAMS} if"
                              " present, else the largest centred square)")
    command.set_defaults(run=_edit)


def _provenance(args: argparse.Namespace) -> None:
    from cvae.core.provenance import PREFIX, read

    for key, value in read(args.png).items():
        print(f"{key.removeprefix(PREFIX)}: {value}")


def _add_provenance(commands) -> None:
    command = commands.add_parser(
        "provenance", help="print where a figure came from",
        description="Print the provenance a figure of `cvae visualize` records in its PNG text chunks (git"
                    " commit, params hash, the model and data with their dvc.lock hashes), then any other"
                    " text chunks.",
        epilog="example: cvae provenance reports/figures/samples.png")
    command.add_argument("png", type=Path, metavar="FILE.png", help="a PNG written by cvae visualize")
    command.set_defaults(run=_provenance)


def _production(args: argparse.Namespace) -> None:
    from cvae.registry import store as registry
    from cvae.registry.gate import flatten

    if args.restore:
        version = registry.last_decided(args.registry)
        registry.set_production(args.production, version)
        print(f"production: {args.production} -> {version.path} (the last gate decision)")
        return
    if args.set:
        version = registry.Version(args.registry / args.set)
        if not version.model.is_file():
            known = ", ".join(v.name for v in registry.versions(args.registry)) or "none"
            raise CvaeError(f"{args.registry}: no version {args.set!r} (registered: {known})")
        registry.set_production(args.production, version)
        print(f"production: {args.production} -> {version.path}")
        return
    current = registry.production(args.production)
    listed = registry.versions(args.registry)
    if not listed:
        print(f"production: {args.registry} holds no model yet")
    for version in listed:
        marker = "*" if current is not None and version.path.resolve() == current.path else " "
        metrics = flatten(version.metrics())
        shown = ", ".join(f"{name} {metrics[name]:.4g}" for name in SUMMARY_METRICS if name in metrics)
        commit = version.provenance().get("git_commit", "?")[:12]
        print(f"{marker} {version.name}  commit {commit}  {shown}")
    if current is not None:
        print(f"production: {args.production} -> {current.path}")


SUMMARY_METRICS = ("neg_elbo_nats", "mse", "fidelity/mean")


def _add_production(commands) -> None:
    command = commands.add_parser(
        "production", help="list the registered models, or switch the production model",
        description="List the models in the registry (the production one starred) with their main metrics,"
                    " or point the production link at another version (a rollback); the switch is one"
                    " atomic rename.",
        epilog="example: cvae production --set 20261124T020512Z-1a2b3c4d")
    choice = command.add_mutually_exclusive_group()
    choice.add_argument("--set", metavar="VERSION", help="make this registry version the production model")
    choice.add_argument("--restore", action="store_true",
                        help="point the link where the last gate decision left it (after `dvc pull` on a new clone)")
    _add_path_option(command, "--registry", "models/registry", "the registry")
    _add_path_option(command, "--production", str(PRODUCTION), "the production link")
    command.set_defaults(run=_production)


def _studio(args: argparse.Namespace) -> None:
    from cvae.studio import LOCAL_HOSTS, Studio, serve

    if args.host not in LOCAL_HOSTS and not args.allow_remote:
        raise CvaeError(f"--host {args.host} would let other machines use the studio (it has no login);"
                        " add --allow-remote to do so on purpose")
    _require_production(args.model)
    studio = Studio(args.model, args.classifier, _crop(args.params))
    print(f"studio: {args.model} ({len(studio.names)} attributes) on http://{args.host}:{args.port}/"
          " (Ctrl-C stops it)", flush=True)
    serve(studio, args.host, args.port)


def _add_studio(commands) -> None:
    command = commands.add_parser(
        "studio", help="steer the model live in a browser page",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Serve a page that decodes faces as you move sliders: one per attribute the model is
conditioned on and a few for the latent code's main directions, a new random face (its
seed shown), a photo to upload and edit, and a PNG download that records what made it.""",
        epilog="example: cvae studio --port 8765   then open http://127.0.0.1:8765/")
    command.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")
    command.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default: %(default)s, this machine only)")
    command.add_argument("--allow-remote", action="store_true",
                         help="allow a --host that other machines reach: anyone there can use the studio")
    _add_path_option(command, *MODEL)
    _add_path_option(command, *CLASSIFIER)
    command.add_argument("--params", type=Path, metavar="PATH",
                         help=f"params file whose data.crop frames an uploaded face (default: {DEFAULT_PARAMS} if"
                              " present, else the largest centred square)")
    command.set_defaults(run=_studio)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, stage, paths) in STAGES.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(run=functools.partial(_run_stage, stage))
        command.add_argument("--params", default="params.yaml", type=Path, help="params file (default: %(default)s)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                             help="override one param; may be repeated")
        for option, default, what in paths:
            _add_path_option(command, option, default, what)
    _add_generate(commands)
    _add_edit(commands)
    _add_studio(commands)
    _add_provenance(commands)
    _add_production(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CvaeError as error:
        print(f"cvae {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cvae {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
