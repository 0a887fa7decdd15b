#!/usr/bin/env bash
# Trains jaxar on every GPU of this machine: one process, the mesh spans all its GPUs
# (train.batch_size is the global batch, split over them).
#
#   launch/multi_gpu.sh CONFIG WORKDIR [jaxar.cli.train flags...]
#   launch/multi_gpu.sh experiments/pixelcnn_mnist.py runs/pixelcnn_mnist --config.mesh.fsdp=2
#
# CUDA_VISIBLE_DEVICES=0,1 restricts the run to those GPUs. The first run creates
# .venv (launch/env.sh) and adds the CUDA 12 build of the installed jax version.
# Re-running the same command resumes from WORKDIR's latest checkpoint.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="$1"; workdir="$2"; shift 2

# The CUDA plugin must match jax exactly, so it is installed for the version that
# pyproject.toml resolved to.
"$root/launch/env.sh" sh -c 'python -c "import jax_cuda12_plugin" 2>/dev/null ||
  python -m pip install --quiet "jax[cuda12]==$(python -c "import jax; print(jax.__version__)")"'

# XLA preallocates 75% of each GPU by default; that is what training wants, so keep it.
# --distributed=off: one process owns all the GPUs, even inside a SLURM allocation.
exec "$root/launch/env.sh" python -m jaxar.cli.train --config "$config" --workdir "$workdir" \
  --distributed=off "$@"
