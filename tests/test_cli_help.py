"""Every console script's `--help` lists its own flags, shows examples and exits 0."""

import importlib
import pathlib
import re
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_lists_flags_and_examples_and_exits_0(name, monkeypatch, capsys):
    module_name, _, function = SCRIPTS[name].partition(":")
    entry = getattr(importlib.import_module(module_name), function)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        entry()
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "--workdir" in out  # every command works on a run's directory
    examples = out[out.index("examples:"):]
    # The examples are command lines of this very command.
    assert re.search(rf"^  {re.escape(name)} ", examples, re.MULTILINE), examples
    flags = re.findall(r"^  (--[\w.-]+)", out, re.MULTILINE)
    assert len(flags) >= 2 and len(flags) == len(set(flags)), flags
