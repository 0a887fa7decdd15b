"""Launch scripts: syntax, the exact commands they run (gcloud, srun, python faked on PATH)."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "launch").iterdir() if p.is_file())


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def fake_commands(tmp_path, *names) -> pathlib.Path:
    """A bin directory whose `names` append their argv (as JSON) to tmp_path/calls.jsonl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.jsonl"
    for name in names:
        tool = bin_dir / name
        tool.write_text(
            f"#!{sys.executable}\nimport json, os, sys\n"
            f"with open({str(log)!r}, 'a') as f:\n"
            f"    f.write(json.dumps([{name!r}, *sys.argv[1:],"
            f" os.environ.get('SLURM_PROCID', '')]) + '\\n')\n"
        )
        tool.chmod(0o755)
    return bin_dir


def calls(tmp_path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run_script(args, tmp_path, bin_dir, **env):
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path),
           **env}
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=60, cwd=tmp_path)


TPU_ARGS = ["--name", "demo", "--zone", "us-central2-b", "--accelerator-type", "v4-32"]


def test_tpu_vm_dry_run_prints_the_gcloud_commands_and_runs_nothing(tmp_path):
    bin_dir = fake_commands(tmp_path, "gcloud", "tar", "mkdir")
    result = run_script(
        [ROOT / "launch" / "tpu_vm.sh", "--dry-run", *TPU_ARGS, "--bucket", "gs://my-runs", "--",
         "experiments/pixelcnn_mnist.py", "/mnt/bucket/runs/x", "--config.train.num_steps=10"],
        tmp_path, bin_dir,
    )
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path) == []  # nothing ran
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    tpu = "+ gcloud compute tpus tpu-vm"
    where = "demo --zone=us-central2-b"
    assert lines[0] == (f"{tpu} create {where} --accelerator-type=v4-32 "
                        f"--version=tpu-ubuntu2204-base")
    assert lines[1].startswith(f"+ tar -czf {tmp_path}/jaxar-demo.tar.gz")
    assert lines[2] == (f"{tpu} scp {tmp_path}/jaxar-demo.tar.gz 'demo:~/jaxar.tar.gz' "
                        f"--zone=us-central2-b --worker=all")
    install, mount, training = (shlex.split(line[2:])[-1] for line in lines[3:6])
    assert all(line.startswith(f"{tpu} ssh {where} --worker=all '--command=")
               for line in lines[3:6])
    assert "launch/env.sh" in install and '"jax[tpu]==$(python -c' in install
    assert "gcsfuse --implicit-dirs my-runs /mnt/bucket" in mount
    assert training == (
        "--command=cd ~/jaxar && PYTHON=python3.11 launch/env.sh python -m jaxar.cli.train "
        "--config experiments/pixelcnn_mnist.py --workdir /mnt/bucket/runs/x "
        "--config.train.num_steps=10")
    assert lines[6] == f"{tpu} delete {where} --quiet"
    assert len(lines) == 7


def test_tpu_vm_runs_exactly_the_commands_it_prints(tmp_path):
    """Without --dry-run (gcloud faked), the same commands run, plus copying results back."""
    bin_dir = fake_commands(tmp_path, "gcloud", "tar", "mkdir")
    workdir = tmp_path / "runs" / "x"
    args = [ROOT / "launch" / "tpu_vm.sh", *TPU_ARGS, "--",
            "experiments/pixelcnn_mnist.py", workdir]
    printed = run_script([args[0], "--dry-run", *args[1:]], tmp_path, bin_dir)
    assert printed.returncode == 0, printed.stderr
    result = run_script(args, tmp_path, bin_dir)
    assert result.returncode == 0, result.stderr
    expected = [shlex.split(line[2:]) for line in printed.stdout.splitlines()
                if line.startswith("+ ")]
    assert [c[:-1] for c in calls(tmp_path)] == expected  # (the last field is SLURM_PROCID)
    assert expected[-3] == ["mkdir", "-p", str(workdir.parent)]
    assert expected[-2][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
    assert expected[-2][-1] == "--worker=0"


def test_tpu_vm_needs_zone_and_accelerator(tmp_path):
    result = run_script([ROOT / "launch" / "tpu_vm.sh", "--dry-run", "--", "a.py", "runs/x"],
                        tmp_path, fake_commands(tmp_path, "gcloud"))
    assert result.returncode == 2 and "--zone, --accelerator-type" in result.stderr


def fake_checkout(tmp_path, script: str) -> pathlib.Path:
    """A copy of launch/<script> next to an env.sh that just runs its command."""
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    shutil.copy(ROOT / "launch" / script, repo / "launch" / script)
    env_sh = repo / "launch" / "env.sh"
    env_sh.write_text('#!/usr/bin/env bash\nexec "$@"\n')
    env_sh.chmod(0o755)
    return repo


def test_slurm_script_starts_one_process_per_node_with_the_coordinator(tmp_path):
    repo = fake_checkout(tmp_path, "slurm.sbatch")
    bin_dir = fake_commands(tmp_path, "python")
    # A long node list, gpu-a first: it must be read whole, since `| head -n 1` under
    # pipefail failed the job with scontrol's SIGPIPE whenever head exited first.
    (bin_dir / "scontrol").write_text(
        "#!/usr/bin/env bash\nprintf 'gpu-a\\ngpu-b\\n'\n"
        "for i in {1..20000}; do echo gpu-$i; done\n")
    # srun: two tasks, each with its SLURM_PROCID, running the command after the options.
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'for i in 0 1; do SLURM_NTASKS=2 SLURM_PROCID=$i "$@"; done\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    result = run_script(
        [repo / "launch" / "slurm.sbatch", "experiments/pixelcnn_mnist.py", "/shared/run",
         "--config.train.num_steps=5"],
        tmp_path, bin_dir, SLURM_SUBMIT_DIR=str(repo), SLURM_JOB_NODELIST="gpu-[a-b]",
        SLURM_JOB_ID="1234", SLURM_JOB_NUM_NODES="2",
    )
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls(tmp_path) if c[1:3] == ["-m", "jaxar.cli.train"]]
    assert runs == [
        ["python", "-m", "jaxar.cli.train", "--coordinator_address=gpu-a:21234",
         "--num_processes=2", f"--process_id={i}", "--config", "experiments/pixelcnn_mnist.py",
         "--workdir", "/shared/run", "--config.train.num_steps=5", str(i)]
        for i in range(2)
    ]


def test_multi_gpu_script_runs_one_process_without_distributed_start_up(tmp_path):
    repo = fake_checkout(tmp_path, "multi_gpu.sh")
    bin_dir = fake_commands(tmp_path, "python")
    result = run_script(
        [repo / "launch" / "multi_gpu.sh", "experiments/pixelcnn_mnist.py", "runs/x",
         "--config.mesh.fsdp=2"], tmp_path, bin_dir)
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path)[-1] == [
        "python", "-m", "jaxar.cli.train", "--config", "experiments/pixelcnn_mnist.py", "--workdir",
        "runs/x", "--distributed=off", "--config.mesh.fsdp=2", ""]
