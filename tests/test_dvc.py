"""dvc.yaml against the code: each stage's deps list the modules that decide its numbers, and
params.yaml lists every setting (so that config.py's defaults never reach a stage unseen)."""

import ast
from pathlib import Path

import yaml

from autoswap.config import flatten, parse

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "autoswap"

# Modules a stage may import without listing them as deps: they move files and records around (or
# print progress) but compute none of a stage's numbers. config.py decides nothing either: every
# setting is in params.yaml (the test below), and dvc.yaml's `params` carry those.
INFRASTRUCTURE = {"__init__", "cli", "config", "errors", "files", "progress", "tracking"}


def imports_of(module: str) -> set[str]:
    """autoswap modules that `module` imports anywhere in it (top level or inside functions)."""
    tree = ast.parse((SRC / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "autoswap":
            if node.module == "autoswap":
                out |= {a.name for a in node.names}
            else:
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("autoswap.")}
    return {m for m in out if (SRC / f"{m}.py").is_file()}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imports_of(m) - seen)
    return seen


def stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_each_stage_lists_the_modules_that_decide_its_numbers():
    problems = []
    for name, stage in stages().items():
        entry = stage["cmd"].split()[1]  # `autoswap <command> ...` runs src/autoswap/<command>.py
        assert (SRC / f"{entry}.py").is_file(), f"dvc.yaml stage {name}: no module for {stage['cmd']!r}"
        deps = {Path(d).stem for d in stage.get("deps", []) if str(d).startswith("src/autoswap/")}
        missing = closure(entry) - deps - INFRASTRUCTURE
        if missing:
            problems.append(f"{name}: add {sorted(f'src/autoswap/{m}.py' for m in missing)}")
        unused = deps - closure(entry)
        if unused:
            problems.append(f"{name}: imports none of {sorted(unused)}")
    assert not problems, "; ".join(problems)


def leaf_keys(raw, prefix="") -> set[str]:
    """`a.b.c` for every leaf value of a YAML mapping."""
    if not isinstance(raw, dict):
        return {prefix}
    return set().union(*(leaf_keys(v, f"{prefix}.{k}" if prefix else k) for k, v in raw.items()))


def test_every_setting_is_in_params_yaml():
    for f in (ROOT / "params.yaml", ROOT / "params" / "seed.yaml"):
        raw = yaml.safe_load(f.read_text())
        settings = set(flatten(parse(raw)))  # every setting, the file's and the defaults
        assert settings - leaf_keys(raw) == set(), f"{f.name} lacks {sorted(settings - leaf_keys(raw))}"


def test_no_stage_imports_another_stage():
    stage_modules = {s["cmd"].split()[1] for s in stages().values()}
    for m in stage_modules:
        others = closure(m) & stage_modules - {m}
        assert not others, f"{m}.py imports the stage module(s) {sorted(others)}"


def test_no_module_imports_in_a_circle():
    modules = [p.stem for p in SRC.glob("*.py")]
    circles = {tuple(sorted((m, n))) for m in modules for n in imports_of(m) if n != m and m in closure(n)}
    assert not circles, f"import circles: {sorted(circles)}"
