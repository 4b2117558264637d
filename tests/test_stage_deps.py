"""Every DVC stage lists, as deps in dvc.yaml, all the project code its entry point runs.

A stage whose code changed must re-run; DVC only knows that if the file is a dep. This test
follows the imports of each `python -m stages.<name>` (statically, every `import` in the
module at any depth, so lazy imports inside functions count too) through the project's own
modules, and fails naming the stage and the file that no dep in dvc.yaml covers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bardlet", "stages")


def module_file(name: str) -> Path | None:
    """The file of a project module (`bardlet.data.loaders`), or None if it is not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Names of the modules `path` imports, with each package along the way (importing
    `bardlet.data.loaders` runs `bardlet/__init__.py` and `bardlet/data/__init__.py`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            # `from bardlet.data import loaders` imports the submodule loaders.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return with_parents


def code_of(entry: str) -> set[Path]:
    """Every project file that `python -m entry` may import."""
    seen: set[Path] = set()
    todo = [entry, *[entry.rsplit(".", 1)[0]] * ("." in entry)]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path, name))
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def uncovered(stage: dict) -> list[str]:
    command = stage["cmd"].split()
    assert command[:3] == ["python", "-m", command[2]], f"unexpected cmd {stage['cmd']!r}"
    deps = [Path(dep) for dep in stage.get("deps", [])]
    missing = []
    for path in sorted(code_of(command[2])):
        relative = path.relative_to(REPO)
        if not any(relative == dep or dep in relative.parents for dep in deps):
            missing.append(relative.as_posix())
    return missing


def test_every_stage_lists_the_code_it_runs():
    gaps = {name: missing for name, stage in stages().items() if (missing := uncovered(stage))}
    assert not gaps, "dvc.yaml deps miss code the stage imports (add them):\n" + "\n".join(
        f"  {name}: {', '.join(files)}" for name, files in gaps.items()
    )


def test_no_stage_lists_code_it_does_not_run():
    """A code dep the stage never imports would re-run it for nothing (and retrain a model
    because a file it does not use changed)."""
    extra = {}
    for name, stage in stages().items():
        used = {p.relative_to(REPO).as_posix() for p in code_of(stage["cmd"].split()[2])}
        code = [d for d in stage.get("deps", []) if d.split("/")[0] in PACKAGES]
        code = [d for d in code if d.endswith(".py") or any((REPO / d).rglob("*.py"))]
        unused = [d for d in code if not any(u == d or u.startswith(d + "/") for u in used)]
        if unused:
            extra[name] = unused
    assert not extra, f"dvc.yaml lists code the stage does not import (remove it): {extra}"


def test_the_import_walk_finds_what_a_stage_really_imports():
    # A known chain: pretrain -> bardlet.training.loop -> bardlet.evaluation.
    found = {p.relative_to(REPO).as_posix() for p in code_of("stages.pretrain")}
    assert {
        "stages/__init__.py",
        "stages/pretrain.py",
        "bardlet/__init__.py",
        "bardlet/training/loop.py",
        "bardlet/evaluation.py",
        "bardlet/model.py",
    } <= found
    # And it does not wander into code the stage never touches.
    assert "bardlet/server/app.py" not in found
    assert "bardlet/cli.py" not in found
