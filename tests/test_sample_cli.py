"""`python -m jaxar.cli.sample`: samples and completions from a run's workdir, clear errors."""

import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jaxar
from jaxar.training import train

# The CLI module is loaded the way `python -m` runs it, with its namespace as a class;
# the tests call its functions directly.
sample_cli = type("SampleCli", (), runpy.run_module("jaxar.cli.sample"))

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cfg = jaxar.load_config(str(ROOT / "experiments" / "gated_pixelcnn_mnist.py:smoke"))
    cfg.model.num_classes = 2
    cfg.data.num_classes = 2
    cfg.train.num_steps = 2
    train.train_and_evaluate(cfg, workdir)
    return workdir


def test_samples_grid_with_labels(run_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["--workdir", str(run_dir), "--num", "6", "--out", str(out), "--labels", "1",
            "--temperature", "0.8", "--method", "naive", "--seed", "3"]
    assert sample_cli.main(args) == 0
    assert "wrote 6 samples of step 2" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (4 * (2 * 9 + 1), 4 * (3 * 9 + 1))  # 2 rows x 3 cols of 8x8, x4


def test_completion_keeps_rows_and_draws_grid(run_dir, tmp_path):
    source = tmp_path / "digit.png"
    image = np.zeros((16, 16), np.uint8)
    image[:, 8:] = 255
    Image.fromarray(image).save(source)
    out = tmp_path / "done.png"
    assert sample_cli.main(["--workdir", str(run_dir), "--num", "3", "--out", str(out),
                            "--complete", str(source), "--keep", "rows:4", "--labels", "0"]) == 0
    grid = np.asarray(Image.open(out))[::4, ::4]  # undo the x4 upscaling
    original, occluded = grid[1:9, 1:9], grid[1:9, 10:18]
    np.testing.assert_array_equal(original[:, :4], 0)
    np.testing.assert_array_equal(original[:, 4:], 255)
    np.testing.assert_array_equal(occluded[4:], 128)  # unknown rows shown grey
    for k in range(3):
        completion = grid[1:9, 1 + (k + 2) * 9: 1 + (k + 2) * 9 + 8]
        np.testing.assert_array_equal(completion[:4], original[:4])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--labels", "7"], "labels must lie in"),
        (["--labels", "x"], "--labels must be"),
        (["--step", "5"], "step must be one of"),
        (["--complete", "9999"], "--complete index must be <"),
        (["--complete", "missing.png"], "cannot read image"),
        (["--complete", "0", "--keep", "rows:99"], "only 8 rows"),
        (["--complete", "0", "--keep", "nope"], "--keep must be"),
        (["--num", "0"], "--num must be >= 1"),
        (["--temperature", "0"], "temperature must be > 0"),
    ],
)
def test_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(["--workdir", str(run_dir), "--out", str(tmp_path / "x.png"), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_module_entry_point_and_unwritable_out(run_dir, tmp_path):
    cmd = [sys.executable, "-m", "jaxar.cli.sample", "--workdir", str(run_dir), "--num", "2"]
    ok = subprocess.run([*cmd, "--out", str(tmp_path / "s.png")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cmd, "--out", "/nonexistent/dir/s.png"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not writable" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([*cmd[:-4], "--workdir", str(tmp_path), "--out", "x.png"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no config.json" in missing.stderr
