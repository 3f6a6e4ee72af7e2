"""Which attributes each stage works on: the ones params name, or, where they name none,
the ones a rule picks from the data.

The rules, one per kind of key (an empty list or mapping in params.yaml selects the rule):
- conditioned, steered, judged, scored for fidelity, flipped in edits, drift-checked:
  every attribute the data lists;
- figures (conditional rows, sweep axes, edit rows, latent-map colours): the attributes
  whose share of +1 lies nearest one half, since those show a change on most faces;
- prevalence bounds: none.

`check_names` reads every key that names attributes at once, so a params file written for
other data fails before anything trains, with each bad key listed.
"""

from __future__ import annotations

import difflib

import numpy as np

from cvae.core.config import Params
from cvae.core.errors import CvaeError

CONDITIONAL_ROWS = 4  # attributes given a row of their own in the conditional figure
EDIT_ROWS = 3  # attributes set on held-out faces in the edits figure
SWEEP_AXES = 2  # the sweep's axes: across and down
LATENT_COLOURS = 3  # attributes that colour the latent maps


def chosen(wanted: list[str], available: list[str], key: str) -> list[str]:
    """`wanted` if every name is in the data (an empty list: every attribute)."""
    problems = _unknown(wanted, available, key)
    if problems:
        raise CvaeError("\n".join(problems))
    return list(wanted) or list(available)


def most_balanced(names: list[str], rows: np.ndarray, count: int) -> list[str]:
    """The `count` attributes whose share of +1 in `rows` (-1/+1) lies nearest one half,
    the data's order breaking ties; fewer when the data have fewer."""
    shares = (np.asarray(rows, dtype=np.float32) > 0).mean(axis=0) if len(rows) else np.full(len(names), 0.5)
    order = sorted(range(len(names)), key=lambda column: (abs(float(shares[column]) - 0.5), column))
    return [names[column] for column in order[:count]]


def figure_choices(params: Params, names: list[str], rows: np.ndarray) -> dict:
    """The figures' attributes: those params name, else the most balanced ones."""
    v = params.visualize
    conditional = v.conditional_rows
    if not conditional:
        shown = most_balanced(names, rows, CONDITIONAL_ROWS)
        # a "plain" row with every shown attribute off, then each one on alone
        conditional = {"plain": {name: -1.0 for name in shown}}
        conditional.update({name: {other: (1.0 if other == name else -1.0) for other in shown} for name in shown})
    edits = v.edit_rows or {f"+ {name}": {name: 1.0} for name in most_balanced(names, rows, EDIT_ROWS)}
    return {
        "conditional_rows": conditional,
        "edit_rows": edits,
        "sweep_attributes": list(v.sweep_attributes) or most_balanced(names, rows, SWEEP_AXES),
        "latent_color_attributes": list(v.latent_color_attributes) or most_balanced(names, rows, LATENT_COLOURS),
    }


def named_attributes(params: Params) -> dict[str, list[str]]:
    """Every params key that names attributes, with the names it gives."""
    keys = {
        "validate.prevalence": list(params.validation.prevalence),
        "validate.drift_attributes": params.validation.drift_attributes,
        "train.steer_attributes": params.train.steer_attributes,
        "evaluate.fidelity_attributes": params.evaluate.fidelity_attributes,
        "evaluate.edit_attributes": params.evaluate.edit_attributes,
        "visualize.sweep_attributes": params.visualize.sweep_attributes,
        "visualize.latent_color_attributes": params.visualize.latent_color_attributes,
    }
    for section, rows in (("conditional_rows", params.visualize.conditional_rows),
                          ("edit_rows", params.visualize.edit_rows)):
        for label, settings in rows.items():
            keys[f"visualize.{section}.{label}"] = list(settings)
    for metric in params.retrain.gate:
        parts = metric.split("/")
        # per-attribute metrics: fidelity/<name>, edit/<name>/<what>
        if parts[0] in ("fidelity", "reconstruction_fidelity", "edit") and len(parts) > 1 and parts[1] != "mean":
            keys[f"retrain.gate.{metric}"] = [parts[1]]
    return keys


def check_names(params: Params, available: list[str], source: str) -> None:
    """Raise one error naming every params key that names an attribute `source` lacks."""
    problems = [problem for key, names in named_attributes(params).items()
                for problem in _unknown(names, available, key)]
    if problems:
        raise CvaeError(f"params name attributes that {source} does not have"
                        f" (it has {len(available)}: {', '.join(available)}):\n" + "\n".join(problems))


def _unknown(names: list[str], available: list[str], key: str) -> list[str]:
    problems = []
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            problems.append(f"{key}: {name!r} is not an attribute of the data"
                            + (f"; did you mean {close[0]!r}?" if close else ""))
    return problems
