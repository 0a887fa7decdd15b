#!/usr/bin/env bash
# Trains jaxar on a Cloud TPU VM (one host, e.g. v4-8, or a pod slice, e.g. v4-32):
# creates the VM, copies this checkout to every worker and installs it, starts the
# same training command on all workers at once, then deletes the VM.
#
#   launch/tpu_vm.sh [options] -- CONFIG WORKDIR [jaxar.cli.train flags...]
#
#   launch/tpu_vm.sh --name jaxar-v4 --zone us-central2-b --accelerator-type v4-8 \
#       -- experiments/pixelcnn_mnist.py runs/pixelcnn_mnist --config.train.num_steps=2000
#
# Options:
#   --name NAME                TPU VM name (default: jaxar-$USER)
#   --zone ZONE                Cloud zone that has the accelerator type (required)
#   --accelerator-type TYPE    e.g. v4-8 (one host), v4-32 (4 hosts), v5litepod-16 (required)
#   --version IMAGE            TPU VM software image (default: tpu-ubuntu2204-base)
#   --project PROJECT          Cloud project (default: gcloud's configured one)
#   --spot                     create a Spot VM (cheaper, may be preempted; rerun resumes)
#   --bucket BUCKET            mount gs://BUCKET with gcsfuse at /mnt/bucket on every worker.
#                              A pod slice needs this (or another shared file system): all
#                              hosts write one checkpoint, so WORKDIR=/mnt/bucket/runs/x
#   --skip-create              use an existing VM of that name
#   --keep                     do not delete the VM at the end
#   --dry-run                  print every command (local and gcloud) without running any
#
# Every worker runs the same command; jaxar.cli.train detects the TPU VM and calls
# jax.distributed.initialize(), which reads the pod's layout from the VM metadata.
# A relative WORKDIR lies in ~/jaxar on the workers; without --bucket it is copied
# back from worker 0 (into this checkout) before the VM is deleted. Re-running the
# same command on a kept VM or with --bucket resumes from the latest checkpoint.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="jaxar-${USER:-user}"
zone=""
accelerator=""
version="tpu-ubuntu2204-base"
project=""
spot=0
bucket=""
create=1
keep=0
dry_run=0

usage() { sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator-type) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --bucket) bucket="${2#gs://}"; shift 2 ;;
    --skip-create) create=0; shift ;;
    --keep) keep=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_vm.sh: unknown option $1" >&2; usage ;;
  esac
done
if [[ -z "$zone" || -z "$accelerator" || $# -lt 2 ]]; then
  echo "tpu_vm.sh: --zone, --accelerator-type, CONFIG and WORKDIR are required" >&2
  usage
fi
config="$1"; workdir="$2"; shift 2

# Prints a command, quoted so that it can be pasted into a shell, then runs it
# (unless --dry-run).
run() {
  local arg line="+"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[][A-Za-z0-9_./:=,@%+-]+$ ]]; then line+=" $arg"
    else line+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  echo "$line"
  if [[ $dry_run -eq 0 ]]; then "$@"; fi
}

common=(--zone="$zone")
if [[ -n "$project" ]]; then common+=(--project="$project"); fi
tarball="${TMPDIR:-/tmp}/jaxar-$name.tar.gz"

# The training command every worker runs, as one shell string for `ssh --command`.
train_cmd="cd ~/jaxar && PYTHON=python3.11 launch/env.sh python -m jaxar.cli.train"
train_cmd+="$(printf ' %q' --config "$config" --workdir "$workdir" "$@")"

# Python 3.11 (jaxar needs >= 3.11; the image ships 3.10), this checkout, its
# dependencies in ~/jaxar/.venv (launch/env.sh), then the TPU build of the same jax.
install_cmd="sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv"
install_cmd+=" && rm -rf ~/jaxar && mkdir -p ~/jaxar && tar -xzf ~/jaxar.tar.gz -C ~/jaxar"
install_cmd+=" && cd ~/jaxar && PYTHON=python3.11 launch/env.sh sh -c"
install_cmd+=" 'python -m pip install --quiet \"jax[tpu]==\$(python -c \"import jax; print(jax.__version__)\")\"'"

# gcsfuse from Google's apt repository, then the bucket mounted at /mnt/bucket.
mount_cmd="echo \"deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\""
mount_cmd+=" | sudo tee /etc/apt/sources.list.d/gcsfuse.list"
mount_cmd+=" && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
mount_cmd+=" | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc > /dev/null"
mount_cmd+=" && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse"
mount_cmd+=" && sudo mkdir -p /mnt/bucket && sudo chown \$USER /mnt/bucket"
mount_cmd+=" && (mountpoint -q /mnt/bucket || gcsfuse --implicit-dirs $bucket /mnt/bucket)"

if [[ $create -eq 1 ]]; then
  # 1. Create the TPU VM: one host per 4 (v4, v5p) or 8 (v5e, v6e) chips; all hosts
  #    ("workers") get the same image.
  create_args=(--accelerator-type="$accelerator" --version="$version")
  if [[ $spot -eq 1 ]]; then create_args+=(--spot); fi
  run gcloud compute tpus tpu-vm create "$name" "${common[@]}" "${create_args[@]}"
fi

# 2. Package this checkout (without the local venv and runs) and copy it to every worker.
run tar -czf "$tarball" --exclude=./.venv --exclude=./runs --exclude=./.git -C "$root" .
run gcloud compute tpus tpu-vm scp "$tarball" "$name:~/jaxar.tar.gz" "${common[@]}" --worker=all

# 3. Install it on every worker (in parallel: --worker=all).
run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command="$install_cmd"
if [[ -n "$bucket" ]]; then
  # 3b. Shared storage for the workdir: checkpoints of a pod slice are written by all hosts.
  run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command="$mount_cmd"
fi

# 4. Train: the same command on all workers at once; each host reads its share of the data.
status=0
run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command="$train_cmd" \
  || status=$?

if [[ $keep -eq 0 ]]; then
  if [[ -z "$bucket" ]]; then
    # 5. Copy the workdir (metrics, samples, checkpoints) back from worker 0.
    if [[ "$workdir" == /* ]]; then remote="$workdir"; local_dir="$workdir"
    else remote="~/jaxar/$workdir"; local_dir="$root/$workdir"; fi
    run mkdir -p "$(dirname "$local_dir")"
    run gcloud compute tpus tpu-vm scp --recurse "$name:$remote" "$(dirname "$local_dir")" \
      "${common[@]}" --worker=0
  fi
  # 6. Tear down: deleting the VM stops the billing (a bucket's workdir survives).
  run gcloud compute tpus tpu-vm delete "$name" "${common[@]}" --quiet
fi
exit "$status"
