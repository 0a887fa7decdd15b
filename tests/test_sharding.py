"""Sharded training on CPU: 8 fake devices and 2 real processes agree with 1 device.

Device counts are fixed when JAX starts, so those runs happen in subprocesses
(tests/sharding_worker.py, the CLI); this process keeps its single device.
"""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxar
from jaxar import data
from jaxar.models import common
from jaxar.training import checkpoint, reporting, sharding, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharding_worker.py"
SMOKE = str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke")
TIMEOUT = 400  # seconds for any one subprocess


def smoke(**train_overrides):
    cfg = jaxar.load_config(SMOKE)
    cfg.train.update(train_overrides)
    return cfg


def env_with_devices(num_devices: int) -> dict:
    """Environment for a subprocess with `num_devices` CPU devices (and the suite's other
    XLA flags, `conftest.py`'s)."""
    devices = f"--xla_force_host_platform_device_count={num_devices}"
    return {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {devices}".strip()}


def run_worker(*args, num_devices: int) -> str:
    result = subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)], env=env_with_devices(num_devices),
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_eight_fake_devices_match_one_device(tmp_path):
    """8x1 and 4x2 (data x fsdp) meshes, gradient accumulation, weight-norm init, errors."""
    out = tmp_path / "meshes.json"
    run_worker("meshes", out, num_devices=8)
    results = json.loads(out.read_text())
    for mesh in ("8x1", "4x2"):
        # The state is finite; one NaN on one device makes every device say it is not.
        assert results[mesh]["state_is_finite"] == [True, False], results
        assert results[mesh]["loss_diff"] <= 1e-5, results
        assert results[mesh]["first_step_diff"] <= 1e-5, results
        assert results[mesh]["last_step_diff"] <= 1e-5, results
    assert results["8x1"]["sharded_param_leaves"] == 0
    assert results["4x2"]["sharded_param_leaves"] > 0  # fsdp really split the params
    assert results["grad_accum"]["loss_diff"] <= 1e-5, results
    assert results["grad_accum"]["param_diff"] <= 1e-5, results
    assert results["weight_norm_init"]["g_leaves"] > 0  # data-dependent scales exist
    assert results["weight_norm_init"]["diff"] <= 1e-5, results
    errors = results["errors"]
    assert "train.batch_size=12" in errors["batch_12_on_8"]
    assert "train.batch_size=8" in errors["accum_2_on_8"]
    assert "train.grad_accum_steps=2" in errors["accum_2_on_8"]
    assert "mesh.data=3" in errors["mesh_3"]


def test_checkpoint_saved_on_8_devices_resumes_on_2(tmp_path):
    """An FSDP-sharded checkpoint (4x2 mesh) resumes on 2 devices; the run ends as if whole."""
    cfg = smoke()
    cfg.mesh.update(data=4, fsdp=2, fsdp_min_size=0)
    config_8 = tmp_path / "config_8.json"
    config_8.write_text(cfg.to_json_best_effort())
    full = tmp_path / "full"
    run_worker("train", config_8, full, tmp_path / "full.npz", num_devices=8)

    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "3", resumed / "checkpoints" / "3")
    cfg.mesh.update(data=-1, fsdp=1)
    config_2 = tmp_path / "config_2.json"
    config_2.write_text(cfg.to_json_best_effort())
    stdout = run_worker("train", config_2, resumed, tmp_path / "resumed.npz", num_devices=2)
    assert "resumed from the checkpoint at step 3" in stdout

    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert (int(a["num_devices"]), int(b["num_devices"])) == (8, 2)
    assert a.files == b.files and len(a.files) > 10
    for name in set(a.files) - {"num_devices"}:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)


def test_two_processes_train_like_one(tmp_path):
    """The same CLI command as one process (1 device) and as two processes on localhost
    (1 device each, gloo collectives): the same metrics and parameters."""
    port = portpicker.pick_unused_port()
    one, two = tmp_path / "one", tmp_path / "two"
    cli = [sys.executable, "-m", "jaxar.cli.train", "--config", SMOKE, "--workdir"]
    commands = [[*cli, str(one)]] + [
        [*cli, str(two), f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}"] for i in range(2)
    ]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, env=env_with_devices(1), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for command in commands
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
    assert "1 process(es), 1 device(s)" in outputs[0]
    assert "2 process(es), 2 device(s)" in outputs[1]
    assert "eval bpd" in outputs[1] and "eval bpd" not in outputs[2]  # process 0 reports

    rows_two, rows_one = reporting.read_metrics(two), reporting.read_metrics(one)
    assert [sorted(r) for r in rows_two] == [sorted(r) for r in rows_one]
    for r2, r1 in zip(rows_two, rows_one, strict=True):
        for key in set(r1) - {"train/images_per_sec"}:
            np.testing.assert_allclose(r2[key], r1[key], rtol=1e-5, err_msg=key)
    (*_, params_two, step_two), (*_, params_one, step_one) = map(checkpoint.load_run, (two, one))
    assert step_two == step_one == 6
    pairs = zip(jax.tree.leaves(params_two), jax.tree.leaves(params_one), strict=True)
    for got, want in pairs:
        np.testing.assert_allclose(got, want, atol=1e-5)


def _conv_and_matmul_dtypes(jaxpr) -> list[tuple[str, tuple[str, ...]]]:
    """(primitive, operand dtypes) of every convolution and matmul, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += _conv_and_matmul_dtypes(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += _conv_and_matmul_dtypes(sub)
    return found


def test_bfloat16_step_computes_in_bf16_on_float32_state():
    """The dense lax.conv path (what GPUs and TPUs run) in bf16: every conv and matmul of
    the step (forward and backward) takes bf16 operands, the state stays float32."""
    cfg32 = smoke()
    cfg32.model.conv_impl = "plain"
    cfg16 = smoke(compute_dtype="bfloat16")
    cfg16.model.conv_impl = "plain"
    model = jaxar.build_model(cfg32)
    trainers = {"float32": train.Trainer(model, cfg32), "bfloat16": train.Trainer(model, cfg16)}
    train_iter, _ = data.create_datasets(cfg32)
    init_batch = train_iter.split.get(np.arange(8))
    host_state = trainers["float32"].to_host(
        trainers["float32"].init_state(jax.random.PRNGKey(0), init_batch))
    batch = next(train_iter)
    losses, dtypes = {}, {}
    for name, trainer in trainers.items():
        shardings = jax.tree.map(lambda s: s.sharding, trainer.abstract_state)
        state = jax.device_put(host_state, shardings)
        device_batch = trainer.device_batch(batch)
        with common.rng_context():
            jaxpr = jax.make_jaxpr(trainer.train_step)(state, device_batch)
            lowered = trainer.train_step.lower(state, device_batch).as_text()
            state, metrics = trainer.train_step(state, device_batch)
        losses[name] = float(metrics["train/bpd"])
        dtypes[name] = _conv_and_matmul_dtypes(jaxpr.jaxpr)
        float_leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert {x.dtype for x in float_leaves} == {jnp.dtype(jnp.float32)}
    assert any(p == "conv_general_dilated" for p, _ in dtypes["bfloat16"])
    assert {d for _, d in dtypes["bfloat16"]} == {("bfloat16", "bfloat16")}
    assert {d for _, d in dtypes["float32"]} == {("float32", "float32")}
    assert "stablehlo.convolution" in lowered and "xbf16>" in lowered
    assert losses["bfloat16"] != losses["float32"]
    assert abs(losses["bfloat16"] - losses["float32"]) <= 5e-3 * losses["float32"], losses


# ------------------------------------------------------------------ in-process unit tests


def test_mesh_shape_and_errors():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2}, 8) == (4, 2)
    assert sharding.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4)
    assert sharding.mesh_shape({}, 1) == (1, 1)
    with pytest.raises(ValueError, match="mesh.data=3 x mesh.fsdp=1"):
        sharding.mesh_shape({"data": 3, "fsdp": 1}, 8)
    with pytest.raises(ValueError, match="only one of mesh.data and mesh.fsdp"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="mesh.fsdp must be a positive int or -1"):
        sharding.mesh_shape({"data": -1, "fsdp": 0}, 8)


def test_batch_size_must_split_over_devices_and_micro_batches():
    mesh = sharding.make_mesh({})
    sharding.check_batch_size(6, mesh, 3)
    with pytest.raises(ValueError, match="train.batch_size=7 .* multiple of 2"):
        sharding.check_batch_size(7, mesh, 2)
    with pytest.raises(ValueError, match="train.grad_accum_steps=0"):
        sharding.check_batch_size(8, mesh, 0)
    with pytest.raises(ValueError, match="train.compute_dtype"):
        train.Trainer(jaxar.build_model(smoke()), smoke(compute_dtype="float16"))


def test_fsdp_rule_splits_the_largest_divisible_axis_of_big_float_leaves():
    spec = functools.partial(sharding.leaf_spec, fsdp=4, min_size=64)
    assert spec((3, 3, 8, 16), np.float32) == P(None, None, None, "fsdp")
    assert spec((12, 6), np.float32) == P("fsdp", None)
    assert spec((3, 5, 7), np.float32) == P()  # nothing divides
    assert spec((16,), np.float32) == P()  # too small to be worth a gather
    assert spec((64, 64), np.int32) == P()
    assert sharding.leaf_spec((64, 64), np.float32, fsdp=1, min_size=0) == P()


@pytest.mark.parametrize("run", [train.FINITE_CHECK_RUN, 5])
def test_all_finite_reads_every_float_leaf_of_every_dtype(run, monkeypatch):
    """In one run per dtype, and in runs of at most 5 elements (each leaf its own run).
    (Over several devices, with fsdp-split leaves: test_eight_fake_devices_match_one_device.)"""
    monkeypatch.setattr(train, "FINITE_CHECK_RUN", run)
    mesh = sharding.make_mesh({})
    replicated = NamedSharding(mesh, P())
    tree = {"w": np.ones((3, 4), np.float32), "h": np.ones(5, jnp.bfloat16),
            "v": np.ones(4, np.float32), "steps": np.arange(3), "key": jax.random.key(0)}
    check = train.all_finite(mesh, jax.tree.map(lambda _: replicated, tree))
    assert bool(check(tree))
    for name, bad in [("w", np.nan), ("w", -np.inf), ("h", np.inf), ("h", np.nan),
                      ("v", np.nan)]:
        leaf = tree[name].copy()
        leaf.reshape(-1)[-1] = bad
        assert not bool(check({**tree, name: leaf})), (name, bad)
    no_floats = {"steps": np.arange(3)}
    assert bool(train.all_finite(mesh, {"steps": replicated})(no_floats))


SLURM_TWO_TASKS = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
                   "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("mode,env,on_tpu,expected", [
    ("auto", {}, False, None),
    ("auto", SLURM_TWO_TASKS, False, {}),
    ("auto", {**SLURM_TWO_TASKS, "SLURM_NTASKS": "1"}, False, None),
    ("auto", {}, True, {}),
    ("on", {}, False, {}),
    ("off", SLURM_TWO_TASKS, True, None),
])
def test_distributed_start_up_is_detected(mode, env, on_tpu, expected):
    assert sharding.distributed_init_kwargs(mode, env=env, on_tpu=on_tpu) == expected


def test_explicit_distributed_flags():
    kwargs = sharding.distributed_init_kwargs("auto", "10.0.0.1:1234", 4, 3, env=SLURM_TWO_TASKS)
    assert kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                      "process_id": 3, "cluster_detection_method": "deactivate"}
    with pytest.raises(ValueError, match="--num_processes, --process_id must be given"):
        sharding.distributed_init_kwargs("auto", "10.0.0.1:1234")
    with pytest.raises(ValueError, match="--process_id=4"):
        sharding.distributed_init_kwargs("auto", "10.0.0.1:1234", 4, 4)


def test_cloud_tpu_vm_is_recognised_from_pci_ids(tmp_path):
    def pci(name, vendor, device):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "device").write_text(device + "\n")

    pci("0000:00:04.0", "0x1ae0", "0x0042")  # Google gVNIC: a GCE VM, not a TPU
    pci("0000:00:05.0", "0x8086", "0x005e")
    assert not sharding.on_cloud_tpu_vm(str(tmp_path))
    pci("0000:00:06.0", "0x1ae0", "0x005e")  # TPU v4
    assert sharding.on_cloud_tpu_vm(str(tmp_path))


def test_cli_rejects_incomplete_multi_process_flags(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxar.cli.train", "--config", SMOKE, "--workdir", str(tmp_path),
         "--coordinator_address=127.0.0.1:1234", "--process_id=0"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "--num_processes must be given" in result.stderr
