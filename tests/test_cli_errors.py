"""Bad input to the training CLI: one clear line on stderr, exit code 2, no traceback."""

import pathlib
import subprocess
import sys

import pytest

import jaxar
from jaxar.training import lock, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke")

# One case per way the CLI can refuse its input (the rules themselves: tests/test_config.py):
# a config file it cannot load, a variant its get_config refuses, an override of a key the
# config lacks, a config file that sets a key nothing reads, a dataset that is not there,
# and a value the model refuses (`train.BadInput`, like every case of IN_PROCESS below).
CASES = [
    (["--config", "experiments/nope.py"], "nope.py"),
    (["--config", str(ROOT / "experiments" / "pixelcnn_mnist.py:huge")],
     "config variant must be one of"),
    (["--config", SMOKE, "--config.train.nope=3"], "nope"),
    (["--config", "BADKEY"], "did you mean 'num_steps'?"),
    (["--config", SMOKE, "--config.data.source=tfds", "--config.data.name=mnist",
      "--config.data.tfds_dir=EMPTY"], "data.tfds_dir"),
    (["--config", SMOKE, "--config.model.ordering=zigzag"], "pixelcnn only supports ordering"),
]
# Bad values train_and_evaluate refuses with `train.BadInput` (which the CLI prints as its
# one line, exit 2: the last case above) before it writes anything.
IN_PROCESS = [
    ({"model.name": "resnet"}, "model.name must be one of"),
    ({"data.source": "folder", "data.path": "EMPTY"}, "data.path"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"data.num_levels": 1}, "data.num_levels"),
    ({"train.ema_decay": 1.5}, "train.ema_decay must lie in [0, 1)"),
    ({"model.num_classes": 10}, "needs labelled data"),
]
# A config file that sets a key no part of jaxar reads.
BADKEY_FILE = """from experiments import pixelcnn_mnist

def get_config(arg=None):
    cfg = pixelcnn_mnist.get_config("smoke")
    cfg.train.num_step = 3
    return cfg
"""


@pytest.mark.parametrize("args,message", CASES, ids=[m for _, m in CASES])
def test_bad_cli_input_exits_2(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "badkey.py").write_text(BADKEY_FILE)
    args = [a.replace("EMPTY", str(empty)).replace("BADKEY", str(tmp_path / "badkey.py"))
            for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "jaxar.cli.train", "--workdir", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()  # refused before any writing


@pytest.mark.parametrize("overrides,message", IN_PROCESS, ids=[m for _, m in IN_PROCESS])
def test_bad_values_are_refused_in_one_line_before_anything_is_written(
        tmp_path, overrides, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = jaxar.load_config(SMOKE)
    for key, value in overrides.items():
        section, leaf = key.split(".")
        cfg[section][leaf] = str(empty) if value == "EMPTY" else value
    with pytest.raises(train.BadInput) as err:
        train.train_and_evaluate(cfg, tmp_path / "run")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "config.json").exists()
    if (tmp_path / "run").exists():  # refused after taking the workdir: it let it go
        lock.WorkdirLock(tmp_path / "run").acquire().release()


def test_empty_workdir_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxar.cli.train", "--config", SMOKE, "--workdir", ""],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2 and "--workdir must name a directory" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_unusable_workdir_exits_2(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "jaxar.cli.train", "--config", SMOKE, "--workdir",
         str(blocker / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "--workdir" in result.stderr
    assert "Traceback" not in result.stderr
