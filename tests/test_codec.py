"""`jaxar.codec` and `jaxar-compress` / `jaxar-decompress`: lossless round trips for every
registered autoregressive model and likelihood, files of the model's size, and refusals.

The round trips run on tiny models with random parameters (exactness does not depend on
training): one case per family, covering every likelihood (Bernoulli, categorical, the
discretized logistic mixture over RGB, a 256-level categorical as mu-law audio uses),
labels, float and integer conditioning maps and random orderings.
"""

from __future__ import annotations

import functools
import pathlib
import struct
import subprocess
import sys
import zlib

import jax
import numpy as np
import pytest
import weightnorm_checks
from model_checks import tiny_config
from PIL import Image
from test_protocol import CASES, PP, WAVE

import jaxar
from jaxar import codec, distributions
from jaxar.cli import compress as cli
from jaxar.training import checkpoint, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
_BY_ID = {c[0]: c[1:] for c in CASES}
# (id, model name, event shape, levels, model settings)
ROUND_TRIP = [
    ("made-random-class", *_BY_ID["made-random-class"]),
    ("pixelcnn-bernoulli", *_BY_ID["pixelcnn-bernoulli"]),
    ("gated-spatial", *_BY_ID["gated-spatial"]),
    ("pixelcnn_pp-rgb-16", "pixelcnn_pp", (2, 2, 3), 16, PP),
    ("pixelsnail-codes-cond-class", *_BY_ID["pixelsnail-codes-cond-class"]),
    ("wavenet-mulaw-class-local", "wavenet", (10,), 256,
     dict(WAVE, num_classes=3, cond_shape=(5, 1))),
    ("transformer-random-sequence", *_BY_ID["transformer-random-sequence"]),
]


_BY_ID.update({c[0]: c[1:] for c in ROUND_TRIP})


@functools.cache
def _build(case_id, scale=0.5):
    """The case's model and random variables (built once: tests share compiled programs)."""
    name, shape, levels, kwargs = _BY_ID[case_id]
    model = jaxar.build_model(tiny_config(name, shape, levels, **kwargs))
    return model, weightnorm_checks.random_variables(model, scale=scale)


def _side(model, n, seed=3):
    """Labels (every class in turn) and a conditioning map for n examples."""
    labels = np.arange(n, dtype=np.int32) % model.num_classes if model.num_classes else None
    rng = np.random.default_rng(seed)
    cond = None
    if model.cond_levels:
        cond = rng.integers(0, model.cond_levels, (n, *model.cond_shape)).astype(np.int32)
    elif model.cond_shape:
        cond = rng.standard_normal((n, *model.cond_shape)).astype(np.float32)
    return labels, cond


def test_every_registered_autoregressive_model_round_trips():
    names = {case[1] for case in ROUND_TRIP}
    assert names == {n for n, cls in jaxar.models.REGISTRY.items() if cls.autoregressive}
    likelihoods = {type(jaxar.build_model(tiny_config(*case[1:4], **case[4])).likelihood).__name__
                   for case in ROUND_TRIP}
    assert likelihoods == {"Bernoulli", "Categorical", "DiscretizedLogisticMixture"}


@pytest.mark.parametrize("case", ROUND_TRIP, ids=[c[0] for c in ROUND_TRIP])
def test_round_trip(case):
    """Random rows, all zeros and all maximum levels, in batches of 4 (the last one padded),
    with labels and conditioning maps: decoded exactly."""
    model, variables = _build(case[0])
    rng = np.random.default_rng(0)
    x = rng.integers(0, model.num_levels, (7, *model.event_shape)).astype(np.int32)
    x[1], x[2] = 0, model.num_levels - 1
    labels, cond = _side(model, len(x))
    data = codec.compress(model, variables, x, labels, cond, batch_size=4)
    got = codec.decompress(model, variables, data, labels, cond)
    assert got.dtype == np.int32 and got.shape == x.shape
    np.testing.assert_array_equal(got, x)
    assert codec.read_header(data)["batch"] == 4


def test_images_the_model_deems_impossible_round_trip():
    """Parameters scaled up make the conditionals sharp: random images then have dimensions
    whose float32 probability is exactly 0, coded all the same (in batches of 4, the
    round trip's compiled program)."""
    model, variables = _build("pixelcnn-bernoulli", scale=8.0)
    x = np.random.default_rng(5).integers(0, model.num_levels, (4, *model.event_shape))
    x = x.astype(np.int32)
    lp = np.asarray(jaxar.log_prob(model, variables, x))
    assert lp.min() < -104  # exp(lp) underflows to 0 in float32
    data = codec.compress(model, variables, x)
    np.testing.assert_array_equal(codec.decompress(model, variables, data), x)
    assert 8 * len(data) > 24 * np.sum(lp < -104)  # each such dimension costs 24 bits


def test_size_is_the_model_bits_plus_the_header():
    """Bits on disk within 1% of the model's bits (`jaxar.bits_per_dim`, the full forward
    pass) on the same batch, plus the fixed header."""
    model, variables = _build("made-random-class")
    num = 1024
    x = np.random.default_rng(2).integers(0, model.num_levels, (num, *model.event_shape))
    x = x.astype(np.int32)
    labels, _ = _side(model, num)
    model_bits = float(np.sum(np.asarray(jaxar.bits_per_dim(model, variables, x, labels),
                                         np.float64))) * x[0].size
    data = codec.compress(model, variables, x, labels, batch_size=num)
    payload_bits = 8 * (len(data) - codec.HEADER_BYTES)
    assert codec.HEADER_BYTES <= 40
    assert model_bits > 4000
    assert abs(payload_bits - model_bits) <= 0.01 * model_bits, (payload_bits, model_bits)
    np.testing.assert_array_equal(codec.decompress(model, variables, data, labels), x)


@pytest.fixture(scope="module")
def coded():
    model, variables = _build("transformer-random-sequence")
    x = np.random.default_rng(1).integers(0, 4, (4, 6)).astype(np.int32)
    return model, variables, x, codec.compress(model, variables, x)


def _refused(coded, data, message, variables=None, **kwargs):
    model, own, _, _ = coded
    with pytest.raises(ValueError, match=message):
        codec.decompress(model, own if variables is None else variables, data, **kwargs)


def test_every_flipped_bit_is_refused(coded):
    _, _, _, data = coded
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        message = ("not a jaxar" if bit < 32 else "format version" if bit < 40
                   else "corrupt|truncated")
        _refused(coded, bytes(flipped), message)


def test_truncated_and_extended_files_are_refused(coded):
    _, _, _, data = coded
    for cut in (0, 3, codec.HEADER_BYTES - 1, codec.HEADER_BYTES, len(data) - 4, len(data) - 1):
        _refused(coded, data[:cut], "not a jaxar|truncated")
    _refused(coded, data + b"\0\0\0\0", "truncated or has trailing bytes")


def test_another_model_or_version_is_refused(coded):
    model, variables, _, data = coded
    other = jax.tree.map(lambda a: a * 1.0001, variables)
    _refused(coded, data, "another model", variables=other)
    newer = bytearray(data)
    newer[4] = codec.FORMAT_VERSION + 1
    _refused(coded, bytes(newer), f"format version {codec.FORMAT_VERSION + 1}")


def test_other_labels_or_cond_are_refused():
    model, variables = _build("pixelsnail-codes-cond-class")
    x = np.zeros((4, *model.event_shape), np.int32)
    labels, cond = _side(model, 4)
    data = codec.compress(model, variables, x, labels, cond)
    with pytest.raises(ValueError, match="labels or cond differ"):
        codec.decompress(model, variables, data, (labels + 1) % 2, cond)
    with pytest.raises(ValueError, match="labels or cond differ"):
        codec.decompress(model, variables, data, labels, (cond + 1) % model.cond_levels)
    stored = codec.compress(model, variables, x, labels, cond, store_labels=True)
    np.testing.assert_array_equal(codec.decompress(model, variables, stored, cond=cond), x)
    with pytest.raises(ValueError, match="labels differ from the ones stored"):
        codec.decompress(model, variables, stored, (labels + 1) % 2, cond)


def test_a_wrong_decoder_result_is_refused(coded, monkeypatch):
    """Probabilities that differ on the decoding machine decode other data: the checksum
    of the original examples refuses it (simulated by a file claiming another checksum)."""
    _, _, _, data = coded
    head = bytearray(data[:codec.HEADER_BYTES - 4])
    head[-4:] = struct.pack("<I", (struct.unpack("<I", head[-4:])[0] + 1) % 2**32)
    payload = data[codec.HEADER_BYTES:]
    crc = zlib.crc32(payload, zlib.crc32(bytes(head)))
    _refused(coded, bytes(head) + struct.pack("<I", crc) + payload, "fail the file's checksum")


def test_other_probabilities_are_refused(coded, monkeypatch):
    """Where decoding computes other probabilities than encoding (here: other parameters
    behind an equal fingerprint) the stream decodes into a dead end or other data: a
    ValueError either way, never wrong examples."""
    model, variables, _, data = coded
    monkeypatch.setattr(codec, "model_fingerprint", lambda *args: b"12345678")
    head = bytearray(data[:codec.HEADER_BYTES - 4])
    head[6:14] = b"12345678"
    payload = data[codec.HEADER_BYTES:]
    data = bytes(head) + struct.pack("<I", zlib.crc32(payload, zlib.crc32(bytes(head)))) + payload
    for scale in (1.5, -1.0, 3.0):
        other = jax.tree.map(lambda a, scale=scale: a * scale, variables)
        _refused(coded, data, "other probabilities", variables=other)


def test_inputs_are_checked(coded):
    model, variables, x, _ = coded
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 4\)"):
        codec.compress(model, variables, x + 4)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        codec.compress(model, variables, x, batch_size=0)
    with pytest.raises(ValueError, match="data must be bytes"):
        codec.decompress(model, variables, "JXAR")
    vq = jaxar.build_model(tiny_config("vqvae", (8, 8, 1), 4, features=8, residual_features=4,
                                       num_residual_layers=1, code_features=4, num_codes=8))
    with pytest.raises(ValueError, match="not an autoregressive model"):
        codec.compress(vq, {}, np.zeros((1, 8, 8, 1), np.int32))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cfg = jaxar.load_config(str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke"))
    cfg.train.num_steps = 2
    train.train_and_evaluate(cfg, workdir)
    return workdir


def _cli(capsys, main, *args):
    """In-process run of a console script: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as err:
        code = err.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_round_trip_and_refusals(run_dir, tmp_path, capsys):
    """PNGs in, one .jaxar file out, the same PNGs back (`python -m jaxar.cli.compress
    decompress`, a subprocess); bad input: one line, exit 2, nothing written."""
    rng = np.random.default_rng(0)
    images = (rng.random((3, 8, 8)) < 0.3).astype(np.uint8) * 255
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"in{i}.png")
        Image.fromarray(image).save(paths[-1])
    out = tmp_path / "imgs.jaxar"
    code, stdout, stderr = _cli(capsys, cli.compress_main, "--workdir", str(run_dir),
                                *map(str, paths), "--out", str(out))
    assert code == 0, stderr
    assert "3 images" in stdout and "bits/dim on disk" in stdout and "optimized PNG" in stdout
    decoded = tmp_path / "decoded"
    done = subprocess.run([sys.executable, "-m", "jaxar.cli.compress", "decompress",
                           "--workdir", str(run_dir), str(out), "--out-dir", str(decoded)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "decoded 3 images" in done.stdout
    for i, image in enumerate(images):
        np.testing.assert_array_equal(np.asarray(Image.open(decoded / f"{i:05d}.png")
                                                 .convert("L")), image)
    # A split of the run's own data instead of PNG files (3 images: the same shapes).
    split_file = tmp_path / "split.jaxar"
    code, stdout, stderr = _cli(capsys, cli.compress_main, "--workdir", str(run_dir),
                                "--split", "test", "--num", "3", "--out", str(split_file))
    assert code == 0 and "3 images" in stdout, stderr
    code, _, stderr = _cli(capsys, cli.decompress_main, "--workdir", str(run_dir),
                           str(split_file), "--out-dir", str(tmp_path / "split"))
    assert code == 0, stderr
    test_split = jaxar.data.load_splits(checkpoint.read_run_config(run_dir))[1]
    test_x = test_split.get(np.arange(3))["x"]
    for i, x in enumerate(test_x):  # 2 levels: 0 and 1 are black and white
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "split" / f"{i:05d}.png").convert("L")),
            x[..., 0] * 255)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(grey)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(big)
    corrupt = tmp_path / "corrupt.jaxar"
    corrupt.write_bytes(out.read_bytes()[:-1])
    bad = [
        (cli.compress_main, (str(grey), "--out", str(tmp_path / "a.jaxar")),
         "not the model's 2 levels", tmp_path / "a.jaxar"),
        (cli.compress_main, (str(big), "--out", str(tmp_path / "b.jaxar")),
         "8x8 pixels", tmp_path / "b.jaxar"),
        (cli.compress_main, ("--split", "test", "--num", "0", "--out",
                             str(tmp_path / "d.jaxar")), "--num must lie in", tmp_path / "d.jaxar"),
        (cli.decompress_main, (str(corrupt), "--out-dir", str(tmp_path / "c")), "truncated",
         tmp_path / "c"),
    ]
    for main, args, message, target in bad:
        code, _, stderr = _cli(capsys, main, "--workdir", str(run_dir), *args)
        assert code == 2, stderr
        assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert not target.exists()


@pytest.mark.parametrize("lik", [distributions.Bernoulli(), distributions.Categorical(5),
                                 distributions.DiscretizedLogisticMixture(16, 3, 3)],
                         ids=["bernoulli", "categorical", "dmol-rgb"])
def test_log_pmf_is_the_conditional_of_every_value(lik):
    """`log_pmf` at the true value is `log_prob` of each channel given the earlier ones,
    and it sums to 1 over the values."""
    rng = np.random.default_rng(4)
    group = 3 if lik.groups_channels else 1
    params = rng.standard_normal((6, lik.num_params(group))).astype(np.float32)
    x = rng.integers(0, lik.num_levels, (6, group)).astype(np.int32)
    # Jitted: eagerly, each of the likelihood's ops would compile a program of its own.
    want = np.asarray(jax.jit(lik.log_prob)(params, x))
    log_pmf = jax.jit(lik.log_pmf, static_argnums=2)
    for channel in range(group):
        got = np.asarray(log_pmf(params, x, channel))
        assert got.shape == (6, lik.num_levels)
        np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(got[np.arange(6), x[:, channel]], want[:, channel],
                                   rtol=1e-5, atol=1e-6)
