"""`jaxar.evaluate` and `jaxar-eval`: every example scored once, the trainer's numbers,
per-example scores, 8 devices like 1, and one-line refusals."""

import json
import os
import pathlib
import runpy
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxar
from jaxar import data
from jaxar.training import checkpoint, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke")
# 27 test examples in batches of 8: three full batches and one of 3 rows plus 5 padding.
RAGGED = {"data.num_test": 27, "eval.batch_size": 8}

eval_cli = type("EvalCli", (), runpy.run_module("jaxar.cli.evaluate"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir whose checkpoint's EMA parameters differ from its raw ones (what the
    trainer writes, without compiling a train step), the trainer's own evaluation, and
    the raw parameters."""
    workdir = tmp_path_factory.mktemp("run")
    cfg = jaxar.load_config(SMOKE)
    cfg.data.num_classes = 2  # labelled stripes: the scores carry labels
    model = jaxar.build_model(cfg)
    trainer = train.Trainer(model, cfg)
    train_iter, test = data.create_datasets(cfg)
    state = trainer.init_state(jax.random.PRNGKey(0), train_iter.split.get(np.arange(8)))
    ema = jax.tree.map(lambda p: p + 0.05 * np.sin(np.arange(p.size)).reshape(p.shape),
                       state.ema_params)
    state = state.replace(ema_params=jax.device_put(ema))
    trainer_eval = trainer.evaluate(state, test)
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(5, state, train_iter.get_state(), cfg)
    ckpt.close()
    train_iter.close()
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    return workdir, trainer_eval, jax.device_get(state.params)


def direct_scores(workdir, overrides, split="test"):
    """bits/dim and nats of every example of the split, from `jaxar.bits_per_dim` on the
    EMA parameters at once (no batching, no padding)."""
    cfg, model, variables, _ = checkpoint.load_run(workdir)
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    examples = dict(zip(("train", "test"), data.load_splits(cfg), strict=True))[split]
    batch = examples.get(np.arange(len(examples)))
    bpd = np.asarray(jaxar.bits_per_dim(model, variables, batch["x"]), np.float64)
    return bpd, bpd * np.prod(model.event_shape) * np.log(2.0), batch["labels"]


def test_every_example_once_and_scores_equal_direct(run, tmp_path):
    workdir, trainer_eval, _ = run
    # The default (test split, eval.batch_size 16 over all 32 examples): the trainer's
    # own evaluation of the same parameters, to the last bit.
    default = jaxar.evaluate(workdir)
    assert default.summary["bits_per_dim"] == trainer_eval["eval/bpd"]
    assert default.summary["nats_per_example"] == trainer_eval["eval/nll_nats"]
    assert json.loads((workdir / "eval_test_5.json").read_text()) == default.summary

    scores_file = tmp_path / "scores.jsonl"
    result = jaxar.evaluate(workdir, overrides=RAGGED, out=tmp_path / "s.json",
                            scores=scores_file)
    bpd, nats, labels = direct_scores(workdir, RAGGED)
    assert result.summary["examples"] == 27 == len(bpd)
    assert result.summary["batch_size"] == 8
    np.testing.assert_allclose(result.summary["bits_per_dim"], bpd.mean(), rtol=1e-6)
    np.testing.assert_allclose(result.summary["nats_per_example"], nats.mean(), rtol=1e-6)

    lines = [json.loads(line) for line in scores_file.read_text().splitlines()]
    assert [r["index"] for r in lines] == list(range(27))
    assert [r["label"] for r in lines] == labels.tolist()
    assert set(labels.tolist()) == {0, 1}
    np.testing.assert_allclose([r["bits_per_dim"] for r in lines], bpd, rtol=1e-6)
    np.testing.assert_allclose([r["nats"] for r in lines], nats, rtol=1e-6)
    np.testing.assert_allclose(result.scores["nats"], nats, rtol=1e-6)

    train_split = jaxar.evaluate(workdir, "train", overrides={"data.num_train": 13},
                                 out=tmp_path / "t.json")
    bpd, _, _ = direct_scores(workdir, {"data.num_train": 13}, split="train")
    assert train_split.summary["examples"] == 13
    np.testing.assert_allclose(train_split.summary["bits_per_dim"], bpd.mean(), rtol=1e-6)


def test_ema_parameters_are_scored(run, tmp_path):
    workdir, _, raw_params = run
    cfg, model, variables, _ = checkpoint.load_run(workdir)
    x = data.load_splits(cfg)[1].get(np.arange(32))["x"]
    result = jaxar.evaluate(workdir, out=tmp_path / "e.json")
    ema = np.asarray(jaxar.bits_per_dim(model, variables, x)).mean()
    raw = np.asarray(jaxar.bits_per_dim(model, {"params": raw_params}, x)).mean()
    np.testing.assert_allclose(result.summary["bits_per_dim"], ema, rtol=1e-6)
    assert abs(ema - raw) > 1e-3  # so the raw parameters would have been noticed
    assert result.summary["params"] == "ema"
    result = jaxar.evaluate(workdir, out=tmp_path / "r.json", params="raw")
    np.testing.assert_allclose(result.summary["bits_per_dim"], raw, rtol=1e-6)
    assert result.summary["params"] == "raw"


def test_cli_on_8_devices_equals_1_device(run, tmp_path):
    """The console script end to end, in a process with 8 CPU devices."""
    workdir = run[0]
    one = jaxar.evaluate(workdir, overrides=RAGGED, out=tmp_path / "one.json")
    devices = "--xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {devices}".strip()}
    out, scores = tmp_path / "eight.json", tmp_path / "eight.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "jaxar.cli.evaluate", "--workdir", str(workdir), "--out",
         str(out), "--scores", str(scores), "--config.data.num_test=27",
         "--config.eval.batch_size", "8"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip()
    assert "\n" not in line and "27 examples" in line and "bits/dim" in line
    assert "eval: 100%" in result.stderr  # the progress bar
    eight = json.loads(out.read_text())
    assert eight["devices"] == 8 and eight["examples"] == 27
    assert f"{eight['bits_per_dim']:.4f} bits/dim" in line
    np.testing.assert_allclose(eight["bits_per_dim"], one.summary["bits_per_dim"], rtol=1e-6)
    rows = [json.loads(r) for r in scores.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(27))
    np.testing.assert_allclose([r["nats"] for r in rows], one.scores["nats"], rtol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--split", "validation"], "split must be one of ('train', 'test'), got 'validation'"),
    (["--workdir", "MISSING"], "holds no config.json"),
    (["--out", "DIR"], "--out must name a file"),
    (["--scores", "s.csv"], "--scores must end in one of .jsonl"),
    (["--step", "9"], "step must be one of the saved steps [5]"),
    (["--params", "best"], "argument --params: invalid choice: 'best'"),
    (["--config.model.features=3"], "jaxar-eval overrides data.* and eval.* only"),
    (["--config.data.num_tests=3"], 'Did you mean "num_test"'),
    (["--config.data.num_test=0"], "data.num_test must be an int >= 1"),
    (["--config.data.source=folder", "--config.data.path=DIR"], "data.path"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run, tmp_path, capsys, args,
                                                             message):
    workdir = run[0]
    before = sorted(p.name for p in workdir.iterdir())
    args = [a.replace("MISSING", str(tmp_path / "nope")).replace("DIR", str(tmp_path))
            for a in args]
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--workdir", str(workdir), "--no_progress", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("jaxar-eval: error:")
    assert sorted(p.name for p in workdir.iterdir()) == before
    assert not list(tmp_path.iterdir())


def test_api_refuses_model_overrides(run):
    with pytest.raises(ValueError, match="only data.<key> and eval.<key>"):
        jaxar.evaluate(run[0], overrides={"model.features": 8})
