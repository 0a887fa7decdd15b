"""Command-line entry points: `jaxar-train` (`cli.train`), `jaxar-sample` (`cli.sample`),
`jaxar-eval` (`cli.evaluate`), `jaxar-import` (`cli.import_weights`) and `jaxar-compress`
/ `jaxar-decompress` (`cli.compress`).

Every command's `--help` lists its flags, one line each, and the examples at the top of
its module docstring, and exits 0; bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def examples(doc: str) -> str:
    """The example command lines of a CLI module's docstring (its indented lines, with
    their continuations), as the `--help` epilog."""
    lines = [line for line in doc.splitlines() if line.startswith("  ") and line.strip()]
    return "examples:\n" + "\n".join(lines) if lines else ""


def _formatter(prog: str) -> argparse.HelpFormatter:
    # Wide enough that each flag's help is one line; the examples keep their layout.
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30, width=120)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block; exit code 2) and, in `--help`, the
    module docstring's first line as description and its examples as epilog."""

    def __init__(self, prog: str, doc: str, **kwargs):
        super().__init__(prog=prog, description=doc.strip().split("\n")[0],
                         epilog=examples(doc), formatter_class=_formatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run(parser: Parser, work: Callable[[], str], out_of_memory: str | None = None) -> int:
    """Runs a command's `work` and prints the line it returns. Bad input (a ValueError) is
    one line on stderr and exit code 2, a failed read or write (an OSError: a full disk) one
    line and exit 1, Ctrl-C one line and exit 130; outputs are written atomically
    (`jaxar.files`), so none of these leaves a partial file. With `out_of_memory` (advice
    naming the flag that sets how much is computed at once), XLA running out of device
    memory is that advice in one line and exit code 2."""
    try:
        print(work())
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    except OSError as err:
        parser.exit(1, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted: nothing written\n")
    except Exception as err:
        import jax  # noqa: PLC0415 (imported by `work` already; --help stays light)

        if (out_of_memory is None or not isinstance(err, jax.errors.JaxRuntimeError)
                or "RESOURCE_EXHAUSTED" not in str(err)):
            raise
        parser.exit(2, f"{parser.prog}: error: {out_of_memory} (nothing written)\n")
    return 0
