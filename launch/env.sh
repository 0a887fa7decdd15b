#!/usr/bin/env bash
# Runs a command inside the project's virtual environment (.venv), creating it
# or bringing it up to date first when pyproject.toml changed. Plain venv + pip
# because they ship with every Python 3.11+, so a fresh machine needs nothing else.
#   launch/env.sh python -m jaxar.cli.train --config experiments/pixelcnn_mnist.py --workdir runs/x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${JAXAR_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.jaxar-installed"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "[env] creating $venv" >&2
  "$python" -m venv "$venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "[env] installing jaxar and its dependencies into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -e "$root[test]" >&2
  echo "$want" > "$stamp"
fi
cd "$root"
export PATH="$venv/bin:$PATH"
exec "$@"
