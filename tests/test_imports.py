"""jaxar's imports run one way (layers <- models <- sampling <- training <- CLI, data beside)
and no module shadows the public API."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxar"

# A module may import modules of its own package or of a lower rank only.
RANKS = {
    "jaxar.distributions": 0,
    "jaxar.files": 0,
    "jaxar.compilation_cache": 0,
    "jaxar.settings": 0,
    "jaxar.tf_checkpoint": 0,
    "jaxar.nn": 1,
    "jaxar.data": 1,
    "jaxar.models": 2,
    "jaxar.sampling": 3,
    "jaxar.config": 3,
    "jaxar.training": 4,
    "jaxar.codec": 4,
    "jaxar.cli": 5,
    "jaxar.main": 6,
    "jaxar": 6,
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: pathlib.Path) -> set[str]:
    """Every jaxar module `path` imports, at any depth of the file (deferred imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jaxar"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxar"):
            for alias in node.names:  # `from jaxar.x import y`: y may be a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def package(name: str) -> str:
    return max((p for p in RANKS if name == p or name.startswith(p + ".")), key=len)


def test_every_module_has_a_rank():
    assert all(package(name) in RANKS for name in MODULES)


def test_imports_run_one_way():
    wrong = [
        f"{a} imports {b}"
        for a, targets in GRAPH.items()
        for b in targets
        if package(a) != package(b) and RANKS[package(b)] >= RANKS[package(a)]
    ]
    assert not wrong, wrong


def test_no_import_cycles():
    state, stack, cycles = {}, [], []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for dep in GRAPH.get(name, ()):
            # `import jaxar.x.y` runs jaxar.x first: package __init__s are edges too.
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep in GRAPH and dep not in state:
                visit(dep)
        stack.pop()
        state[name] = "done"

    for name in GRAPH:
        if name not in state:
            visit(name)
    assert not cycles, cycles


def test_importing_every_module_leaves_the_public_api_intact():
    code = (
        "import importlib, inspect, jaxar\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "for name in jaxar.__all__:\n"
        "    assert inspect.isfunction(getattr(jaxar, name)), name\n"
        "assert jaxar.sample.__module__ == 'jaxar.sampling', jaxar.sample\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)
