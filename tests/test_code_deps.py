"""Code is an input: every stage of dvc.yaml depends on the modules it runs (that editing the
model reruns training and what follows, and editing the figures only them, is run in
test_dvc_pipeline.py, on its reproduced project)."""

import ast

import yaml

from tests.conftest import PROJECT

# the module whose function each stage's `cvae <command>` calls (cvae.cli imports it)
STAGE_MODULES = {
    "download": "cvae.source.download",
    "validate": "cvae.validation.validate",
    "prepare": "cvae.data.prepare",
    "train": "cvae.model.train",
    "train_classifier": "cvae.quality.classifier",
    "evaluate": "cvae.quality.evaluate",
    "promote": "cvae.registry.promote",
    "visualize": "cvae.figures",
}
# every stage runs the command line (whose other commands' imports it does not run)
ALWAYS_RUN = {"cvae/__init__.py", "cvae/cli.py"}


def module_file(module: str) -> str:
    path = module.replace(".", "/")
    return f"{path}/__init__.py" if (PROJECT / path).is_dir() else f"{path}.py"


def imported_modules(module: str) -> set[str]:
    """The cvae modules `module` imports anywhere in its file (functions' imports too),
    with the packages above each (importing cvae.model.cvae runs cvae/model/__init__.py)."""
    tree = ast.parse((PROJECT / module_file(module)).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cvae":
            found.add(node.module)
            # from cvae.registry import store: the name is a module
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if (PROJECT / module_file(f"{node.module}.{alias.name}")).exists()}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cvae.")}
    return {".".join(name.split(".")[:end]) for name in found for end in range(1, name.count(".") + 2)}


def code_run_by(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imported_modules(current))
    return {module_file(name) for name in seen} | ALWAYS_RUN


def declared_code(stage: dict) -> set[str]:
    deps = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in stage.get("deps", [])]
    return {dep for dep in deps if dep.startswith("cvae/")}


def test_every_stage_depends_on_exactly_the_code_it_runs():
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    assert set(STAGE_MODULES) == set(stages) - {"check_source"}  # that one runs every time anyway
    for name, module in STAGE_MODULES.items():
        assert stages[name]["cmd"].startswith(f"cvae {name.replace('_', '-')} ")
        runs, declared = code_run_by(module), declared_code(stages[name])
        assert declared == runs, (f"dvc.yaml stage {name}: add {sorted(runs - declared)},"
                                  f" remove {sorted(declared - runs)}")


def test_the_import_walk_sees_imports_inside_functions():
    # cvae.quality.evaluate loads the model inside a function: the walk must follow it
    assert "cvae/model/cvae.py" in code_run_by("cvae.quality.evaluate")
    assert "cvae/figures.py" not in code_run_by("cvae.registry.promote")
