"""The documentation covers the public API and the README's commands stay the ones CI runs.

The Sphinx build itself (warnings as errors) runs in `.ci/run` with the `docs` extra; these
checks need no Sphinx."""

import inspect
import pathlib
import re

import jaxar
from jaxar import codec

ROOT = pathlib.Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "api.md"

# The public API: everything `jaxar` exports, and the codec's two functions.
PUBLIC = {f"jaxar.{name}": getattr(jaxar, name) for name in jaxar.__all__} | {
    "jaxar.codec.compress": codec.compress,
    "jaxar.codec.decompress": codec.decompress,
}


def _api_entries() -> set[str]:
    return set(re.findall(r"^\s+(jaxar(?:\.\w+)+)\s*$", API_PAGE.read_text(), re.MULTILINE))


def test_every_public_function_has_a_docstring():
    missing = [name for name, obj in PUBLIC.items() if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, f"public API without a docstring: {missing}"


def test_every_public_function_is_in_the_api_reference():
    missing = sorted(set(PUBLIC) - _api_entries())
    assert not missing, f"public API missing from docs/api.md: {missing}"


def test_every_api_reference_entry_exists():
    """An entry naming something that is gone would only show up as a Sphinx warning."""
    for entry in _api_entries():
        module_name, _, attr = entry.rpartition(".")
        try:
            module = __import__(module_name, fromlist=[attr])
            getattr(module, attr)
        except (ImportError, AttributeError):
            module = __import__(entry, fromlist=["_"])  # the entry is a module itself
        assert module is not None, entry


def test_ci_runs_the_readme_test_command_and_builds_the_docs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "launch/env.sh python -m pytest -n auto"
    assert command in readme
    assert command in ci
    assert "python -m sphinx -W" in ci


def test_the_readme_python_example_runs():
    """The README's API example, as written (a smoke model: seconds)."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)
    xs, bpd = namespace["xs"], namespace["bpd"]
    assert xs.shape == (4, *namespace["model"].event_shape)
    assert bpd.shape == (4,) and (bpd > 0).all()
