"""`python -m jaxar.cli.sample`: samples and completions from a run's workdir, clear errors."""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

import jaxar
from jaxar.cli import sample as sample_cli  # the tests call its functions
from jaxar.training import checkpoint, train

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
    assert bad.returncode == 2 and "--out: the folder '/nonexistent/dir' does not exist" \
        in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([*cmd[:-4], "--workdir", str(tmp_path), "--out", "x.png"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no config.json" in missing.stderr


@pytest.mark.parametrize("out,message", [
    ("DIR", "--out must name a file, got the directory"),
    ("DIR/missing/s.png", "--out: the folder"),
    ("DIR/s.jpg", "--out must end in one of .png"),
])
def test_out_is_refused_before_any_work(tmp_path, capsys, out, message):
    # The workdir does not exist: the refusal names --out, so it came first.
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(["--workdir", str(tmp_path / "no_run"),
                         "--out", out.replace("DIR", str(tmp_path))])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_huge_num_is_refused_before_sampling(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(["--workdir", str(run_dir), "--num", str(10**9),
                         "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "--num 1000000000: the grid would have" in err and "more than Pillow opens" in err
    fits = int(err.split("use --num ")[1].split()[0])  # 8x8 images: 36 x 36 PNG pixels each
    assert 60_000 < fits < Image.MAX_IMAGE_PIXELS // (36 * 36)
    sample_cli.check_grid_size(fits, (8, 8, 1))
    with pytest.raises(ValueError, match="the grid would have"):
        sample_cli.check_grid_size(fits + 1, (8, 8, 1))
    assert not (tmp_path / "x.png").exists()


def test_samples_in_batches_equal_the_sampler_calls_the_docstring_names(run_dir):
    cfg, model, variables, _ = checkpoint.load_run(run_dir)
    key = jax.random.key(5)
    labels = np.array([1, 0, 1], np.int32)
    draw = lambda k, n, labels: jaxar.sample(model, variables, k, n, labels, method="cached")
    xs = sample_cli.in_batches(draw, key, 3, 2, labels=labels)
    np.testing.assert_array_equal(xs[:2], draw(key, 2, labels[:2]))
    np.testing.assert_array_equal(xs[2:], draw(jax.random.fold_in(key, 1), 2, labels[[2, 2]])[:1])
    np.testing.assert_array_equal(sample_cli.in_batches(draw, key, 2, 5, labels=labels[:2]),
                                  draw(key, 2, labels[:2]))


def test_16_bit_complete_png_and_the_default_keep(run_dir, tmp_path):
    """The 16-bit file gives the 8-bit file's original; the default --keep is the top half
    (rows:4 of 8: the old fixed rows:14 did not fit this model)."""
    grey = np.zeros((8, 8), np.uint8)
    grey[:, 4:] = 200
    grey[2, :] = 60
    Image.fromarray(grey).save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    cfg, model, _, _ = checkpoint.load_run(run_dir)
    original = sample_cli.load_original(str(tmp_path / "sixteen.png"), cfg, model)
    expected = grey.reshape(1, 8, 8, 1).astype(np.int32) * model.num_levels // 256
    np.testing.assert_array_equal(original, expected)
    assert model.num_levels == 2 and (expected[0, 2, :4] == 0).all()  # 60*257 clipped: 1
    np.testing.assert_array_equal(
        original, sample_cli.load_original(str(tmp_path / "eight.png"), cfg, model))
    mask = sample_cli.keep_mask(None, cfg, model)
    assert mask[:4].all() and not mask[4:].any()
    out = tmp_path / "done.png"
    assert sample_cli.main(["--workdir", str(run_dir), "--num", "1", "--out", str(out),
                            "--complete", str(tmp_path / "sixteen.png"), "--labels", "0"]) == 0
    grid = np.asarray(Image.open(out))[::4, ::4]
    occluded = grid[1:9, 10:18]
    np.testing.assert_array_equal(occluded[4:], 128)
    assert (occluded[:4] != 128).any()


def test_truncated_complete_png_is_one_line(run_dir, tmp_path, capsys):
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(tmp_path / "a.png")
    whole = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(["--workdir", str(run_dir), "--out", str(tmp_path / "x.png"),
                         "--complete", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert f"--complete: cannot read image '{tmp_path / 'a.png'}'" in err
    assert not (tmp_path / "x.png").exists()


def test_ctrl_c_exits_130_and_leaves_the_previous_file(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid.png"
    out.write_bytes(b"previous")
    real_sample = jaxar.sampling.sample

    def interrupted_after_one_batch(*args, **kwargs):
        x = real_sample(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt in this thread
        time.sleep(10)
        return x

    monkeypatch.setattr(jaxar.sampling, "sample", interrupted_after_one_batch)
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(["--workdir", str(run_dir), "--num", "3", "--batch", "2",
                         "--out", str(out)])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "jaxar-sample: interrupted: nothing written\n"
    assert out.read_bytes() == b"previous" and sorted(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("message,code", [("RESOURCE_EXHAUSTED: Out of memory", 2),
                                          ("INTERNAL: a failed kernel", None)])
def test_out_of_device_memory_is_one_line_naming_the_batch(run_dir, tmp_path, capsys,
                                                            monkeypatch, message, code):
    """XLA out of memory: one line advising a smaller --batch, exit 2, nothing written;
    any other runtime error keeps its traceback."""
    def failing(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(message)

    monkeypatch.setattr(jaxar.sampling, "sample", failing)
    argv = ["--workdir", str(run_dir), "--num", "5", "--batch", "3",
            "--out", str(tmp_path / "x.png")]
    if code is None:
        with pytest.raises(jax.errors.JaxRuntimeError, match="a failed kernel"):
            sample_cli.main(argv)
    else:
        with pytest.raises(SystemExit) as exit_info:
            sample_cli.main(argv)
        assert exit_info.value.code == code
        assert capsys.readouterr().err == (
            "jaxar-sample: error: out of memory drawing 3 samples at once: use a smaller "
            "--batch (nothing written)\n")
    assert not (tmp_path / "x.png").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (tests run as root here); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_keeps_the_previous_png_and_leaves_no_partial_file(run_dir, small_disk,
                                                                      capsys):
    good = small_disk / "grid.png"
    assert sample_cli.main(["--workdir", str(run_dir), "--num", "2", "--out", str(good)]) == 0
    before = good.read_bytes()
    with open(small_disk / "filler", "wb", buffering=0) as filler:  # fills the disk
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 512)
    capsys.readouterr()
    for out in (good, small_disk / "new.png"):
        with pytest.raises(SystemExit) as exit_info:
            sample_cli.main(["--workdir", str(run_dir), "--num", "2", "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
        assert f"--out: cannot write '{out}' (No space left on device)" in err
    assert good.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "grid.png"]
