"""Every shell command in the README and the docs pages is run by a test or marked as needing
what the test suite cannot give it.

A command is a line (with its `\\` continuations) of a ```bash fence in README.md, docs/*.md
or docs/guides/*.md. Each one either
- ends with a comment saying what it needs: `# needs: accelerator` (GPUs or TPUs),
  `# needs: download (what)` (data, weights or packages from the network) or
  `# needs: minutes` (a timing run), or
- has an entry in `COMMAND_TESTS`: its program and flags (values, positional arguments and
  wrappers such as `launch/env.sh` left out, since runs/NAME, CONFIG, photo.png stand for
  whatever the reader has) -> the test that runs that program with those flags. That test
  must exist, and its code (its function with its decorators, and the module-level code
  beside it) must name the program and every flag: a flag renamed on either side fails.
Every command's program must exist with each of its flags in the program's source, every
experiment config it names must load, and each `--config.KEY=...` must name a real key.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import re
import shlex
import tomllib

import pytest

import jaxar
from jaxar import settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "docs" / "guides").glob("*.md"))]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
NEEDS = re.compile(r"\bneeds:\s*(accelerator|download|minutes)\b")
EXTERNAL = {"git", "pip", "pytest"}  # programs jaxar does not ship
WRAPPERS = {"launch/env.sh"}  # run the rest of the line in jaxar's venv
OPTION_WRAPPERS = {"sbatch"}  # run the script after their own options
CONFIG_OVERRIDE = "--config.*"  # `--config.KEY=VALUE`, for any KEY

# Program and flags -> the test that runs them.
COMMAND_TESTS = {
    "pytest -n": "tests/test_docs.py::test_ci_runs_the_readme_test_command_and_builds_the_docs",
    "jaxar-train --config --workdir":
        "tests/test_train.py::test_cli_trains_writes_files_and_resumes",
    "jaxar-train --config --config.* --workdir":
        "tests/test_train.py::test_cli_trains_writes_files_and_resumes",
    "jaxar-train --config --coordinator_address --num_processes --process_id --workdir":
        "tests/test_sharding.py::test_two_processes_train_like_one",
    "jaxar-sample --num --out --workdir": "tests/test_sample_cli.py::test_samples_grid_with_labels",
    "jaxar-sample --labels --out --temperature --workdir":
        "tests/test_sample_cli.py::test_samples_grid_with_labels",
    "jaxar-sample --complete --keep --out --workdir":
        "tests/test_sample_cli.py::test_completion_keeps_rows_and_draws_grid",
    "jaxar-sample --complete --out --workdir":
        "tests/test_sample_cli.py::test_16_bit_complete_png_and_the_default_keep",
    "jaxar-sample --num --out --top --workdir":
        "tests/test_latent.py::test_cli_samples_images_through_the_latent_space",
    "jaxar-eval --workdir": "tests/test_evaluate.py::test_cli_on_8_devices_equals_1_device",
    "jaxar-eval --config.* --scores --workdir":
        "tests/test_evaluate.py::test_cli_on_8_devices_equals_1_device",
    "jaxar-eval --out --split --step --workdir":
        "tests/test_released.py::test_eval_cli_reports_the_mean_bits_per_dim_of_the_fixture_images",
    "jaxar-compress --out --workdir": "tests/test_codec.py::test_cli_round_trip_and_refusals",
    "jaxar-compress --out --split --workdir":
        "tests/test_codec.py::test_cli_round_trip_and_refusals",
    "jaxar-decompress --out-dir --workdir":
        "tests/test_codec.py::test_cli_round_trip_and_refusals",
    "jaxar-import --workdir": "tests/test_released.py::test_import_cli_end_to_end",
    "launch/multi_gpu.sh":
        "tests/test_launch.py::test_multi_gpu_script_runs_one_process_without_distributed_start_up",
    "launch/slurm.sbatch":
        "tests/test_launch.py::test_slurm_script_starts_one_process_per_node_with_the_coordinator",
    "launch/tpu_vm.sh --accelerator-type --bucket --zone":
        "tests/test_launch.py::test_tpu_vm_dry_run_prints_the_gcloud_commands_and_runs_nothing",
    "launch/tpu_vm.sh --accelerator-type --dry-run --zone":
        "tests/test_launch.py::test_tpu_vm_dry_run_prints_the_gcloud_commands_and_runs_nothing",
}


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a page: where it is, its text without the comment, the comment."""

    page: str
    line: int
    text: str
    comment: str

    @property
    def needs(self) -> set[str]:
        return set(NEEDS.findall(self.comment))


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One program run by a command (a command may chain several with && or ;)."""

    program: str
    flags: tuple[str, ...]  # as written, without values
    words: tuple[str, ...]  # every argument, values and positional ones included

    @property
    def key(self) -> str:
        flags = sorted({CONFIG_OVERRIDE if f.startswith("--config.") else f for f in self.flags})
        return " ".join([self.program, *flags])


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of a shell line: the comment starts at a `#` that begins a word
    outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def commands(markdown: str, page: str = "") -> list[Command]:
    """The commands of every ```bash (sh, shell, console) fence, `\\` continuations joined;
    comment lines and blank lines are not commands."""
    found, fence, pending, start = [], False, "", 0
    for number, raw in enumerate(markdown.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = not fence and stripped[3:].strip() in ("bash", "sh", "shell", "console")
            continue
        if not fence or (not pending and (not stripped or stripped.startswith("#"))):
            continue
        code, comment = split_comment(stripped)
        start = start or number
        if code.endswith("\\") and not comment:
            pending += code[:-1].rstrip() + " "
            continue
        found.append(Command(page, start, pending + code, comment))
        pending, start = "", 0
    return found


def canonical(program: str) -> str:
    """`python -m jaxar.cli.train` runs the console script `jaxar-train`."""
    names = [name for name, entry in SCRIPTS.items() if entry.split(":")[0] == program]
    return names[0] if len(names) == 1 else program


def invocations(command: str) -> list[Invocation]:
    """The programs a command line runs, each with its flags and arguments."""
    tokens = shlex.split(command)
    runs, current = [], []
    for token in [*tokens, "&&"]:
        if token in ("&&", "||", ";", "|"):
            runs.append(current)
            current = []
        else:
            current.append(token)
    found = []
    for words in runs:
        while words and (words[0] in WRAPPERS or re.fullmatch(r"[A-Z_]+=\S*", words[0])):
            words = words[1:]
        if words and words[0] in OPTION_WRAPPERS:
            words = words[1:]
            while words and words[0].startswith("-"):
                words = words[1:]
        if not words or words[0] == "cd":
            continue
        program, args = words[0], words[1:]
        if re.fullmatch(r"python3?(\.\d+)?", program):
            if args[:1] == ["-m"]:
                program, args = canonical(args[1]), args[2:]
            else:
                program, args = args[0], args[1:]
        flags = []
        for arg in args:
            if arg == "--":  # what follows goes to another program
                break
            if arg.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", arg):
                flags.append(arg.split("=", 1)[0])
        found.append(Invocation(program, tuple(flags), tuple(args)))
    return found


def unaccounted(found: list[Command], mapping: dict[str, str]) -> list[str]:
    """The commands that are neither marked with what they need nor run by a mapped test."""
    return [f"{c.page}:{c.line}: {inv.key!r} (from {c.text!r})" for c in found
            for inv in invocations(c.text) if not c.needs and inv.key not in mapping]


def page_commands() -> list[Command]:
    return [c for page in PAGES for c in commands(page.read_text(), str(page.relative_to(ROOT)))]


# --- What a test's code must say for it to count as running a command.

def code_of_test(node_id: str) -> str | None:
    """The code of test `path::name`: its function (decorators included) and the
    module-level code beside it (imports, constants, helpers), but no other test. None if
    there is no such test."""
    path, _, name = node_id.partition("::")
    source = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
    lines = source.splitlines()
    body = ast.parse(source).body if source else []
    if not any(isinstance(n, ast.FunctionDef) and n.name == name for n in body):
        return None
    kept = []
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test") \
                and node.name != name:
            continue
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        kept.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n".join(kept)


def program_names(program: str) -> list[str]:
    """Regexes any of which a test's code matches when it runs `program`."""
    if program in SCRIPTS:
        module, _, function = SCRIPTS[program].partition(":")
        parent, _, leaf = module.rpartition(".")
        names = [re.escape(program), re.escape(module),
                 rf"from {re.escape(parent)} import [\w, ]*\b{leaf}\b"]
        return names + ([rf"\b{function}\b"] if function not in ("main", "run") else [])
    path = pathlib.PurePosixPath(program)
    if path.suffix:  # a file of the repository
        names = [re.escape(program), re.escape(path.name)]
        if path.suffix == ".py":
            dotted = ".".join(path.with_suffix("").parts)
            names += [re.escape(dotted),
                      rf"from {re.escape(str(path.parent))} import [\w, ]*\b{path.stem}\b"]
        return names
    return [rf"\b{re.escape(program)}\b"]


def flag_pattern(flag: str) -> str:
    if flag == CONFIG_OVERRIDE:
        return r"--config\.\w"
    return rf"(?<![\w-]){re.escape(flag)}(?![\w-])"


def missing_from_test(code: str, invocation: Invocation) -> list[str]:
    """What of `invocation` (its program, its flags) the test's `code` does not name."""
    missing = [] if any(re.search(p, code) for p in program_names(invocation.program)) \
        else [invocation.program]
    return missing + [f for f in sorted(set(invocation.flags))
                      if not re.search(flag_pattern(CONFIG_OVERRIDE if f.startswith("--config.")
                                                    else f), code)]


# --- The tests.

def test_every_documented_command_is_run_by_a_test_or_marked():
    found = page_commands()
    assert len(found) > 30  # the pages were read
    problems = unaccounted(found, COMMAND_TESTS)
    assert not problems, (
        "commands neither run by a test nor marked `# needs: accelerator|download|minutes`; "
        "add the marker, or the test that runs the command to COMMAND_TESTS in "
        "tests/test_doc_commands.py:\n" + "\n".join(problems))


def test_each_mapped_test_exists_and_runs_the_program_with_every_flag():
    used = {inv.key: inv for c in page_commands() for inv in invocations(c.text)}
    problems = []
    for key, node_id in COMMAND_TESTS.items():
        if key not in used:
            problems.append(f"{key!r}: no page has this command any more")
        elif (code := code_of_test(node_id)) is None:
            problems.append(f"{key!r}: no test {node_id}")
        elif missing := missing_from_test(code, used[key]):
            problems.append(f"{key!r}: {node_id} does not name {missing}")
    assert not problems, "\n".join(problems)


def program_source(program: str) -> str | None:
    """The source that defines `program`'s flags, '' for external programs, None if
    `program` is none of jaxar's console scripts, repository files or modules."""
    if program in EXTERNAL:
        return ""
    if program in SCRIPTS:
        module = SCRIPTS[program].split(":")[0]
        files = [importlib.util.find_spec(module).origin, ROOT / "jaxar" / "cli" / "__init__.py"]
        return "\n".join(pathlib.Path(f).read_text() for f in files)
    if (ROOT / program).is_file():
        return (ROOT / program).read_text()
    if program.startswith("jaxar.") and (spec := importlib.util.find_spec(program)):
        return pathlib.Path(spec.origin).read_text()
    return None


def config_problems(invocation: Invocation) -> list[str]:
    """Experiment configs named by the command that do not load (a VARIANT in capitals is
    a placeholder: the file must exist), and `--config.KEY` overrides of unknown keys."""
    problems, named = [], None
    for word in invocation.words:
        if m := re.fullmatch(r"(experiments/\w+\.py)(?::(\w+))?", word):
            if not (ROOT / m[1]).is_file():
                problems.append(f"no config file {m[1]}")
            elif not (m[2] or "").isupper():
                try:
                    named = jaxar.load_config(str(ROOT / word))
                except ValueError as err:
                    problems.append(str(err))
    base = settings.base_config()
    for word in invocation.words:
        if word.startswith("--config."):
            key = word.split("=", 1)[0][len("--config."):]
            node = named if key.startswith("model.") else base
            for part in key.split(".") if node is not None else ():
                if not hasattr(node, "keys") or part not in node:
                    problems.append(f"{word}: no config key {key}")
                    break
                node = node[part]
    return problems


def test_documented_programs_flags_and_configs_exist():
    problems = []
    for c in page_commands():
        for inv in invocations(c.text):
            where = f"{c.page}:{c.line}: {inv.program}"
            source = program_source(inv.program)
            if source is None:
                problems.append(f"{where}: no such program")
                continue
            if source:
                problems += [f"{where}: no flag {f}" for f in sorted(set(inv.flags))
                             if not (re.search(flag_pattern(f), source) or re.search(
                                 rf"[\"']{re.escape(f.lstrip('-'))}[\"']", source))]
                if any(f.startswith("--config.") for f in inv.flags) and \
                        not re.search(r"[\"'](--)?config[\"']", source):
                    problems.append(f"{where}: takes no --config overrides")
            problems += [f"{where}: {p}" for p in config_problems(inv)]
    assert not problems, "\n".join(problems)


PLANTED = """\
Text with `jaxar-sample --inline` (not a fence: not a command).

```bash
# a comment line
launch/env.sh jaxar-train --config experiments/pixelcnn_mnist.py:smoke \\
    --workdir runs/x --config.train.num_steps=3   # trains
JAXAR_VENV=/tmp/v launch/env.sh pip install torch  # needs: download (PyTorch)
git clone <this repository> jaxar && cd jaxar
jaxar-new-tool --workdir runs/x --fast "a # in quotes"
```

```python
jaxar.sample(model)
```
"""


def test_the_checker_finds_an_unmarked_untested_command():
    found = commands(PLANTED, "page.md")
    assert [(c.line, c.text, c.comment) for c in found] == [
        (5, "launch/env.sh jaxar-train --config experiments/pixelcnn_mnist.py:smoke "
            "--workdir runs/x --config.train.num_steps=3", "trains"),
        (7, "JAXAR_VENV=/tmp/v launch/env.sh pip install torch", "needs: download (PyTorch)"),
        (8, "git clone <this repository> jaxar && cd jaxar", ""),
        (9, 'jaxar-new-tool --workdir runs/x --fast "a # in quotes"', ""),
    ]
    train, pip, clone, new = (invocations(c.text) for c in found)
    assert [i.key for i in train] == ["jaxar-train --config --config.* --workdir"]
    assert [i.key for i in pip] == ["pip"] and found[1].needs == {"download"}
    assert [i.key for i in clone] == ["git"]  # `cd` runs nothing
    assert [i.key for i in new] == ["jaxar-new-tool --fast --workdir"]
    mapping = {"jaxar-train --config --config.* --workdir": "tests/x.py::test_y"}
    problems = unaccounted(found, mapping)
    assert [p.split(": ")[0] for p in problems] == ["page.md:8", "page.md:9"]
    assert unaccounted(found, mapping | {"git": "t", "jaxar-new-tool --fast --workdir": "t"}) \
        == []


def test_python_modules_and_option_wrappers_name_the_program_they_run():
    [train] = invocations("python -m jaxar.cli.train --config C --workdir W --process_id=0")
    assert train.key == "jaxar-train --config --process_id --workdir"
    [slurm] = invocations("sbatch --nodes=4 launch/slurm.sbatch experiments/a.py runs/x")
    assert (slurm.key, slurm.words) == ("launch/slurm.sbatch", ("experiments/a.py", "runs/x"))
    [tpu] = invocations("launch/tpu_vm.sh --zone z -- CONFIG WORKDIR --config.x=1")
    assert tpu.key == "launch/tpu_vm.sh --zone"  # flags after `--` are the trainer's


def test_a_test_that_lacks_a_flag_or_the_program_does_not_count():
    [inv] = invocations("jaxar-sample --workdir runs/x --num 16 --out a.png")
    code = 'from jaxar.cli import sample as cli\nargs = ["--workdir", w, "--num", "2", "--out", o]'
    assert missing_from_test(code, inv) == []
    assert missing_from_test(code.replace('"--num"', '"--number"'), inv) == ["--num"]
    assert missing_from_test(code.replace("sample as", "evaluate as"), inv) == ["jaxar-sample"]
    [compress] = invocations("jaxar-decompress --workdir runs/x f.jaxar --out-dir d")
    assert missing_from_test("cli.decompress_main(['--workdir', w, f, '--out-dir', d])",
                             compress) == []
    assert code_of_test("tests/test_codec.py::test_no_such_test") is None


@pytest.mark.parametrize("word,problem", [
    ("experiments/nope.py", "no config file experiments/nope.py"),
    ("experiments/pixelcnn_mnist.py:huge", "variant must be one of"),
    ("--config.train.num_stepz=3", "no config key train.num_stepz"),
])
def test_configs_and_override_keys_are_checked(word, problem):
    [inv] = invocations(f"jaxar-train --workdir runs/x {word}")
    assert any(problem in p for p in config_problems(inv)), config_problems(inv)
    [fine] = invocations("jaxar-train --config experiments/pixelcnn_mnist.py:VARIANT "
                         "--config.train.num_steps=3 --config.model.features=8")
    assert config_problems(fine) == []
