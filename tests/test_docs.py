"""The documentation covers the public API, the README's commands stay the ones CI runs, and
the code's docstrings and comments say what it does and why, not what it measured.

The Sphinx build itself (warnings as errors) runs in `.ci/run` with the `docs` extra; these
checks need no Sphinx."""

import ast
import inspect
import io
import pathlib
import re
import tokenize

import pytest

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


# Figures that belong on the benchmarks and results pages, not in docstrings or comments: a
# measurement, a machine, a speed ratio, a rate, a timing, a share of a step, an exact version.
MEASUREMENT = re.compile(
    r"""\bmeasured\b
    | \b(EPYC|Xeon|Ryzen|Threadripper)\b | \b\d+-core\b
    | \b\d+(\.\d+)?(-\d+(\.\d+)?)?\s?x\s+(faster|slower|the)\b | \b\d+\.\d+x\b
    | \b\d[\d,.]*\s?(images|steps|batches|samples|examples|tokens)/s\b | \bs/step\b | GFLOP
    | \btook\s+(about\s+)?\d | \bcompil\w*\s+(\w+\s+){0,3}\d+(\.\d+)?\s?s\b
    | \b\d+(\.\d+)?\s?(s|ms|min)\s+(per\s+step|of\s+(XLA|compil))
    | \d+(\.\d+)?%\s+of\s+(the|its|a)\s+[\w' ]{0,30}\b(step|time)\b
    | \bcosts?\s+(about\s+)?\d+(\.\d+)?%
    | \bjax(lib)?\s+\d+\.\d+\.\d+""",
    re.IGNORECASE | re.VERBOSE,
)
CHECKED_CODE = ("jaxar", "experiments")


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring (module, class, function) and comment in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if (doc := ast.get_docstring(node, clean=False)) is not None:
                found.append((node.body[0].lineno, doc))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.start[0], token.string))
    return found


def measurements(source: str) -> list[tuple[int, str]]:
    """(line, matched text) of each measurement in `source`'s docstrings and comments."""
    return [(line, m.group(0)) for line, text in prose(source)
            for m in MEASUREMENT.finditer(text)]


def test_docstrings_and_comments_hold_no_measurements():
    """Figures live in docs/benchmarks.md and docs/results.md, where they name their machine."""
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for folder in CHECKED_CODE for path in sorted((ROOT / folder).rglob("*.py"))
             for line, text in measurements(path.read_text())]
    found += [f"{path.relative_to(ROOT)}:{number}: {m.group(0)!r}"  # the launch scripts
              for path in sorted((ROOT / "launch").iterdir())
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if line.lstrip().startswith("#") and (m := MEASUREMENT.search(line))]
    assert not found, "measurements in docstrings or comments:\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    "randomness: each draw costs about 1 s of XLA:CPU compile (measured, jax 0.10.2)",
    "on a 2-core AMD EPYC the gather came 3.8-5.6x faster",
    "the train step 1.71x the full softmax's with blocks of 64",
    "a 1x1 64->64 convolution's forward + backward: 9x slower than the matmul",
    "XLA's convolution costs about 10x the gather",
    "409-619 vs 107-111 batches/s, or 40 images/s",
    "1500 steps of 8 took 6 min on a shared CPU",
    "its compilation 30 s -> 50 s with 64",
    "about 0.5 s per step of 16 images",
    "concat_elu at 16.4% of the step's time; the gathers cost 5% of the attention",
    "on a Xeon",
])
def test_the_measurement_check_finds_planted_figures(text):
    for source in (f'"""{text}"""\n', f"def f():\n    # {text}\n    pass\n"):
        assert measurements(source), source


def test_the_measurement_check_passes_plain_descriptions():
    source = '''"""Prints examples, bits/dim and images/s; 3 x 512 hidden, 1x1 and 7x7 kernels."""
rate = f"{n / seconds:.1f} images/s"  # the figure of this run, printed (code, not prose)


def f():
    """1 s clips; compiled once; 53% of the full [N, N] logits; 8 x log2(levels)."""
'''
    assert measurements(source) == []
