"""The package's layout as docs/architecture.md draws it: every module in its layer, imports
only from the same layer or the ones before it, no cycles, no private names across modules."""

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import PROJECT

ARCHITECTURE = PROJECT / "docs" / "architecture.md"
PACKAGE = PROJECT / "cvae"


def documented_layers(text: str) -> list[tuple[str, list[str]]]:
    """The layer table's rows in order: ("cvae.core", ["cvae.core.errors", ...])."""
    layers = []
    for layer, modules in re.findall(r"^\| `(cvae(?:\.\w+)?)` \| ((?:`\w+` ?)+) \|", text, re.MULTILINE):
        names = re.findall(r"`(\w+)`", modules)
        # a one-module layer is the module itself (cvae.figures: cvae/figures.py)
        layers.append((layer, [layer] if names == [layer.rsplit(".", 1)[-1]] and
                       (PACKAGE / f"{names[0]}.py").exists() else [f"{layer}.{name}" for name in names]))
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[tuple[str, str]]:
    """(module, name) for each cvae name `path` imports, in functions too; name "" for a
    whole module. `from cvae.x import y` where y is a module counts as importing y."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cvae":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add((submodule, "") if submodule in known else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "cvae"}
    return found


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int | None:
    for index, (layer, members) in enumerate(layers):
        if module in members or module == layer:  # a subpackage's __init__ is in its layer
            return index
    return None


def import_violations(layers, modules: dict[str, Path]) -> list[str]:
    known = set(modules)
    wrong = []
    for module, path in modules.items():
        here = layer_of(module, layers)
        for target, name in imports(path, known):
            there = layer_of(target, layers)
            if here is not None and there is not None and there > here:
                wrong.append(f"{module} imports {target}, a later layer ({layers[there][0]})")
            if name.startswith("_") and not name.startswith("__"):
                wrong.append(f"{module} imports the private name {target}.{name}")
    return sorted(wrong)


def cycles(modules: dict[str, Path]) -> list[list[str]]:
    known = set(modules)
    graph = {module: sorted({target for target, _ in imports(path, known) if target in known and target != "cvae"})
             for module, path in modules.items()}
    found, state = [], {}

    def visit(module, trail):
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                found.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


@pytest.fixture(scope="module")
def layers():
    return documented_layers(ARCHITECTURE.read_text())


def test_the_layer_table_lists_every_module_once(layers):
    listed = [module for _, members in layers for module in members]
    assert len(listed) == len(set(listed))
    actual = {name for name, path in package_modules().items() if path.name != "__init__.py"}
    assert set(listed) == actual, (f"docs/architecture.md: add {sorted(actual - set(listed))},"
                                   f" remove {sorted(set(listed) - actual)}")
    assert layers[0][0] == "cvae.core" and layers[-1][0] == "cvae.cli"


def test_imports_go_only_to_the_same_or_an_earlier_layer(layers):
    assert import_violations(layers, package_modules()) == []


def test_no_module_imports_in_a_circle():
    assert cycles(package_modules()) == []


def test_orchestration_and_benchmarks_use_only_public_names():
    known = set(package_modules())
    private = [f"{path.relative_to(PROJECT)} imports {module}.{name}"
               for folder in ("orchestration", "benchmarks") for path in (PROJECT / folder).glob("*.py")
               for module, name in imports(path, known) if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_the_checks_catch_what_they_guard(tmp_path, layers):
    """A layer crossed, a private name taken and a circle, planted in a copy of two modules."""
    modules = package_modules()
    dataset = tmp_path / "dataset.py"
    dataset.write_text(modules["cvae.data.dataset"].read_text()
                       + "\nfrom cvae.model.train import new_model\nfrom cvae.core.atomic import _temporary\n")
    planted = {**modules, "cvae.data.dataset": dataset}
    assert import_violations(layers, planted) == [
        "cvae.data.dataset imports cvae.model.train, a later layer (cvae.model)",
        "cvae.data.dataset imports the private name cvae.core.atomic._temporary",
    ]
    assert any("cvae.data.dataset" in cycle for cycle in cycles(planted))
