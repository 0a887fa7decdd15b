"""Runs one benchmark on two checkouts of jaxar, alternating, to compare old and new code.

    git worktree add /tmp/old <commit>
    launch/env.sh python benchmarks/compare.py --old /tmp/old --rounds 2 -- \
        benchmarks/sampling.py --naive_max_steps 8

Each round runs the benchmark script of each checkout in a fresh process with that
checkout first on `PYTHONPATH` (so it imports its own jaxar), old then new; the
outputs are printed under their labels. Alternating keeps both exposed to the same
load on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

NEW = pathlib.Path(__file__).resolve().parents[1]


def run(root: pathlib.Path, script: str, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(root)}
    check = "import jaxar, sys; sys.stdout.write(jaxar.__file__)"
    where = subprocess.run([sys.executable, "-c", check], env=env, cwd=root,
                           capture_output=True, text=True, check=True).stdout
    if not where.startswith(str(root)):
        raise SystemExit(f"{root} does not import its own jaxar (got {where})")
    out = subprocess.run([sys.executable, script, *args], env=env, cwd=root,
                         capture_output=True, text=True)
    return out.stdout + (out.stderr if out.returncode else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, type=pathlib.Path, help="old checkout")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("script", help="benchmark script, relative to each checkout")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    for r in range(opts.rounds):
        for label, root in (("old", opts.old.resolve()), ("new", NEW)):
            print(f"=== round {r + 1} {label} ({root})", flush=True)
            print(run(root, opts.script, opts.args), flush=True)


if __name__ == "__main__":
    main()
