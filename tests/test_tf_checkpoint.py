"""jaxar.tf_checkpoint: the TensorFlow checkpoint reader, on checkpoints TensorFlow wrote
(tests/data/original_checkpoints, README there), and its refusals of damaged files."""

import json
import pathlib
import re
import shutil
import zlib

import numpy as np
import pytest

from jaxar import tf_checkpoint as tfc

DATA = pathlib.Path(__file__).parent / "data" / "original_checkpoints"
PP = DATA / "openai_pixelcnn_pp"
SNAIL = DATA / "neocxi_pixelsnail"


def test_crc32c_known_values():
    assert tfc.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert tfc.crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 63, 64, 65, 1000, 4099, 70_001):  # lanes: 1, several, ragged
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        slow = tfc._raw_crc_small(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
        assert tfc.crc32c(data) == slow, n
    # Not zlib's CRC-32 (another polynomial): the two differ on the same bytes.
    assert tfc.crc32c(b"123456789") != zlib.crc32(b"123456789")


@pytest.mark.parametrize("folder", [PP, SNAIL], ids=["pixelcnn_pp", "pixelsnail"])
def test_v1_and_v2_hold_the_same_tensors(folder):
    meta = json.loads((folder / "meta.json").read_text())
    v1 = tfc.TFCheckpoint(folder / "params_cifar.ckpt")
    v2 = tfc.TFCheckpoint(folder / "params_cifar_v2.ckpt")
    v2_by_index = tfc.TFCheckpoint(folder / "params_cifar_v2.ckpt.index")
    assert (v1.format, v2.format, v2_by_index.format) == ("v1", "v2", "v2")
    expected = {name: tuple(shape) for name, shape in meta["checkpoint_variables"]}
    assert v1.names() == v2.names() == v2_by_index.names() == sorted(expected)
    for name in v1.names():
        assert v1.shape(name) == v2.shape(name) == expected[name], name
        assert v1.dtype(name) == v2.dtype(name) == np.float32, name
        a, b = v1.read(name), v2.read(name)
        assert a.shape == expected[name] and a.dtype == np.float32
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert v1.read("Variable") == 2.0  # the Adam step counter after one step (from 1)
    # The EMA shadows were set to raw + 0.01 N(0, 1): they differ, by about 0.01.
    raw = v1.read("model/conv2d_0/V")
    ema = v1.read("model/conv2d_0/V/ExponentialMovingAverage")
    assert 0.003 < np.std(ema - raw) < 0.03
    total = sum(int(np.prod(v1.shape(n))) for n in meta["raw_param_variables"])
    assert total == meta["num_trainable_params"]


def _copy(tmp_path, folder, *names):
    for name in names:
        shutil.copy(folder / name, tmp_path / name)
    return tmp_path


def _flip(path: pathlib.Path, offset: int):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _index_handle(path: pathlib.Path):
    footer = path.read_bytes()[-tfc.FOOTER_SIZE:]
    _, pos = tfc._handle(footer)
    return tfc._handle(footer, pos)[0]


def test_refuses_truncated_files(tmp_path):
    ckpt = _copy(tmp_path, PP, "params_cifar.ckpt") / "params_cifar.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"params_cifar.ckpt: no TensorFlow checkpoint table "
                                         r"magic number at the end \(truncated"):
        tfc.TFCheckpoint(ckpt)
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match="0 bytes, shorter than a TensorFlow checkpoint"):
        tfc.TFCheckpoint(ckpt)
    # A V2 data file cut short: the index opens, the tensor past the end is refused.
    _copy(tmp_path, PP, "params_cifar_v2.ckpt.index", "params_cifar_v2.ckpt.data-00000-of-00001")
    data = tmp_path / "params_cifar_v2.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    v2 = tfc.TFCheckpoint(tmp_path / "params_cifar_v2.ckpt")
    last = max(v2.names(), key=lambda n: v2._entries[n]["offset"])
    with pytest.raises(ValueError, match=rf"tensor '{last}': truncated data file "):
        v2.read(last)


def test_refuses_bit_flips(tmp_path):
    # V1: a flipped bit in a data block fails that block's checksum when a tensor in it
    # is read (the table of contents sits in the first block, checked at open).
    ckpt = _copy(tmp_path, PP, "params_cifar.ckpt") / "params_cifar.ckpt"
    first = tfc.TFCheckpoint(PP / "params_cifar.ckpt")._table_v1.index
    (_, (offset, size)) = first[-1]  # the last data block
    _flip(ckpt, offset + size // 2)
    v1 = tfc.TFCheckpoint(ckpt)
    errors = []
    for name in v1.names():
        try:
            v1.read(name)
        except ValueError as err:
            errors.append(str(err))
    assert errors and len(errors) < len(v1.names())  # only the tensors of that block
    assert all(re.fullmatch(r".*params_cifar.ckpt: checksum mismatch in the blocks of "
                            r"tensor '[^']+' \(block at byte \d+\): the file is corrupt", e)
               for e in errors), errors[:2]
    # V2: a flipped bit in a tensor's bytes fails its own crc32c, named.
    _copy(tmp_path, PP, "params_cifar_v2.ckpt.index", "params_cifar_v2.ckpt.data-00000-of-00001")
    v2 = tfc.TFCheckpoint(tmp_path / "params_cifar_v2.ckpt")
    entry = v2._entries["model/conv2d_3/V"]
    _flip(tmp_path / "params_cifar_v2.ckpt.data-00000-of-00001", entry["offset"] + 5)
    with pytest.raises(ValueError, match=r"tensor 'model/conv2d_3/V': checksum mismatch in "
                                         r"params_cifar_v2.ckpt.data-00000-of-00001"):
        v2.read("model/conv2d_3/V")
    v2.read("model/conv2d_4/V")  # the others still read
    # A flipped bit in the index file's index block.
    index = tmp_path / "params_cifar_v2.ckpt.index"
    offset, size = _index_handle(index)
    _flip(index, offset + 1)
    with pytest.raises(ValueError, match=r"params_cifar_v2.ckpt.index: checksum mismatch in "
                                         r"the table index"):
        tfc.TFCheckpoint(tmp_path / "params_cifar_v2.ckpt")


def test_refuses_compressed_blocks_and_other_files(tmp_path):
    index = _copy(tmp_path, SNAIL, "params_cifar_v2.ckpt.index") / "params_cifar_v2.ckpt.index"
    offset, size = _index_handle(index)
    data = bytearray(index.read_bytes())
    data[offset + size] = 1  # the block's compression type: snappy
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"the table index is snappy-compressed, which this "
                                         r"reader does not decode"):
        tfc.TFCheckpoint(tmp_path / "params_cifar_v2.ckpt")
    data[offset + size] = 7
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="unknown block compression type 7"):
        tfc.TFCheckpoint(tmp_path / "params_cifar_v2.ckpt")
    # Wrong formats: an npz, a missing file, a V2 prefix without its index.
    with pytest.raises(ValueError, match=r"reference.npz: no TensorFlow checkpoint table magic"):
        tfc.TFCheckpoint(SNAIL / "reference.npz")
    with pytest.raises(ValueError, match=r"nothing.ckpt: no such TensorFlow checkpoint"):
        tfc.TFCheckpoint(tmp_path / "nothing.ckpt")
    _copy(tmp_path, SNAIL, "params_cifar_v2.ckpt.data-00000-of-00001")
    index.unlink()
    with pytest.raises(ValueError, match=r"the V2 checkpoint's params_cifar_v2.ckpt.index "
                                         r"file is missing"):
        tfc.TFCheckpoint(tmp_path / "params_cifar_v2.ckpt")


def test_missing_tensor_is_named():
    for path in (SNAIL / "params_cifar.ckpt", SNAIL / "params_cifar_v2.ckpt"):
        ckpt = tfc.TFCheckpoint(path)
        with pytest.raises(ValueError, match=r"tensor 'model/conv2d_99/V': not in this "
                                             r"checkpoint"):
            ckpt.read("model/conv2d_99/V")
