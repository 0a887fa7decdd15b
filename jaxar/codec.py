"""Lossless compression with any trained autoregressive model.

`compress(model, variables, x)` entropy-codes a batch of examples with the model's
per-dimension conditionals; `decompress(model, variables, data)` gives back exactly x.
A file costs about the model's negative log-likelihood: `-log2 p(x)` bits per example,
plus a fixed header of `HEADER_BYTES` and at most a few words the coder flushes.

Exactness by construction: both sides run one compiled program, the sampling loop
(`jaxar.sampling.loop.ancestral`) with the model's cached decoder on a canvas that starts
at zero, on the same batch shape. Where the sampler draws a value, this loop hands the
conditional of every value (`likelihood.log_pmf`, float32, computed in the program) to a
host callback: the encoder codes the true value and writes it into the canvas, the
decoder decodes one and writes that. So every step sees bit-identical inputs on both
sides and computes bit-identical probabilities; no full forward pass (whose rounding
differs from the cached decoder's) is involved. The coder is constriction's range coder
(a queue: symbols are decoded in the order they were encoded, so the encoder streams
them step by step; an ANS stack would need every step's probabilities kept until the
end to encode them in reverse) with its `Categorical(perfect=False)` quantization, which
is exactly reproducible and gives every value a nonzero probability, so values the model
deems impossible (a float32 probability of 0) are still coded, at 24 bits or so.

What must match between the compressing and the decompressing machine: the model (its
config and parameters: checked through a fingerprint in the header), the batch size
(stored), labels and conditioning maps (a checksum is stored), and the floats the
compiled program computes: the same jax/jaxlib version on the same kind of device is
what guarantees that (XLA may vectorize differently on another CPU family). A mismatch
there is caught by the checksum of the original examples the header holds: decoding
then fails with a ValueError, never returns wrong data.

File layout (little-endian): magic `JXAR`, format version (u8), flags (u8; bit 0: the
labels are coded in the payload), model fingerprint (8 bytes), checksum of labels and
conditioning map (u32), number of examples (u32), batch size (u32), payload words (u32),
CRC-32 of the original examples (u32), CRC-32 of the header before it and the payload
(u32); then the range coder's 32-bit words.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import struct
import sys
import threading
import zlib

import constriction
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from tqdm.auto import tqdm

from jaxar.models import common
from jaxar.sampling import loop

MAGIC = b"JXAR"
_OTHER_FLOATS = ("this machine computes other probabilities than the one that compressed "
                 "the data (another jax version or device?)")
FORMAT_VERSION = 1
DEFAULT_BATCH_SIZE = 256
_FLAG_LABELS = 1
_HEAD = struct.Struct("<4sBB8sIIIIII")
HEADER_BYTES = _HEAD.size


def compress(model, variables, x, labels=None, cond=None, *, batch_size: int | None = None,
             store_labels: bool = False, progress: bool = False) -> bytes:
    """Entropy-codes x `[N, *event_shape]` (ints in `[0, num_levels)`) into one file's bytes.

    labels / cond: the model's class labels `[N]` / conditioning map `[N, *cond_shape]`;
      `decompress` needs the same ones, unless `store_labels` codes the labels into the
      file (uniformly: log2(num_classes) bits per example).
    batch_size: examples coded together (default: min(N, 256)); more is faster per
      example, and the file records it (the decoder runs the same batch shape).
    progress: a progress bar on stderr when it is a terminal.
    """
    x, labels, cond = _check(model, x, labels, cond)
    num = x.shape[0]
    batch = _batch_size(batch_size, num)
    if store_labels and not model.num_classes:
        raise ValueError("store_labels=True: this model is unconditional (no labels to store)")
    encoder = constriction.stream.queue.RangeEncoder()
    if store_labels:
        encoder.encode(labels, _uniform(model.num_classes))
    session = _Encoder(encoder, x.reshape(num, -1))
    _run_batches(model, variables, num, batch, labels, cond, session, progress)
    words = np.asarray(encoder.get_compressed(), "<u4")
    flags = _FLAG_LABELS if store_labels else 0
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, flags, model_fingerprint(model, variables),
                      _side_checksum(labels, cond), num, batch, words.size, _crc(x), 0)
    payload = words.tobytes()
    return head[:-4] + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head[:-4]))) + payload


def decompress(model, variables, data: bytes, labels=None, cond=None, *,
               progress: bool = False) -> np.ndarray:
    """The examples `compress` coded into `data`: int32 `[N, *event_shape]`.

    A ValueError, before anything is decoded, for a file that is not a jaxar file, of
    another format version, corrupt or truncated, written with another model, or with
    other labels / conditioning map; and while or after decoding if this machine computes
    other probabilities than the compressing one (the stream then reaches a dead end, or
    the result fails the file's checksum of the original examples).
    """
    head = _read_header(model, variables, data)
    num, batch = head["num"], head["batch"]
    decoder = constriction.stream.queue.RangeDecoder(
        np.frombuffer(data, "<u4", offset=HEADER_BYTES).astype(np.uint32))
    if head["flags"] & _FLAG_LABELS:
        stored = decoder.decode(_uniform(model.num_classes), num).astype(np.int32)
        if labels is not None:
            common.check_labels(model, labels, num)
            if not np.array_equal(np.asarray(labels), stored):
                raise ValueError("labels differ from the ones stored in the file")
        labels = stored
    x_shape = (num, *model.event_shape)
    _, labels, cond = _check(model, np.zeros(x_shape, np.int32), labels, cond, "data")
    if _side_checksum(labels, cond) != head["side"]:
        raise ValueError("labels or cond differ from the ones the file was compressed with")
    session = _Decoder(decoder, num, int(np.prod(model.event_shape)))
    _run_batches(model, variables, num, batch, labels, cond, session, progress)
    x = session.x.reshape(x_shape)
    if _crc(x) != head["data_crc"]:
        raise ValueError(f"data: the decoded examples fail the file's checksum: {_OTHER_FLOATS}")
    return x


def model_fingerprint(model, variables) -> bytes:
    """8 bytes identifying a model: its class, its settings and every parameter's bytes."""
    digest = hashlib.blake2b(digest_size=8)
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}
    digest.update(f"{type(model).__name__}{sorted(fields.items())!r}".encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.digest()


def read_header(data: bytes) -> dict:
    """The header's fields (checked: magic, version, length, checksum), without a model."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise ValueError("data is not a jaxar compressed file (no JXAR header)")
    fields = _HEAD.unpack_from(data)
    _, version, flags, fingerprint, side, num, batch, words, data_crc, crc = fields
    if version != FORMAT_VERSION:
        raise ValueError(f"data has format version {version}; this jaxar reads version "
                         f"{FORMAT_VERSION}")
    payload = data[HEADER_BYTES:]
    if len(payload) != 4 * words:
        raise ValueError(f"data is truncated or has trailing bytes: the header announces "
                         f"{4 * words} bytes of payload, the file holds {len(payload)}")
    if zlib.crc32(payload, zlib.crc32(data[:HEADER_BYTES - 4])) != crc:
        raise ValueError("data is corrupt: its checksum does not match (a changed byte)")
    if num < 1 or batch < 1 or flags & ~_FLAG_LABELS:
        raise ValueError("data is corrupt: invalid header fields")
    return dict(flags=flags, fingerprint=fingerprint, side=side, num=num, batch=batch,
                words=words, data_crc=data_crc)


def _read_header(model, variables, data) -> dict:
    _check_model(model)
    head = read_header(data)
    if head["fingerprint"] != model_fingerprint(model, variables):
        raise ValueError("data was compressed with another model (config or parameters "
                         "differ): decode it with the model that wrote it")
    return head


def _check_model(model) -> None:
    if not model.autoregressive:
        raise ValueError(f"model: {type(model).__name__} is not an autoregressive model and "
                         "cannot code its inputs (compress its codes with a prior instead)")


def _check(model, x, labels, cond, name="x"):
    """Checked inputs as the canonical numpy arrays both sides hash and feed the program."""
    _check_model(model)
    common.check_x(model, x, name)
    common.check_labels(model, labels, x.shape[0])
    common.check_cond(model, cond, x.shape[0])
    x = np.asarray(x, np.int32)
    labels = None if labels is None else np.asarray(labels, np.int32)
    if cond is not None:
        cond = np.asarray(cond, np.int32 if model.cond_levels else np.float32)
    return x, labels, cond


def _batch_size(batch_size, num: int) -> int:
    if batch_size is None:
        return min(num, DEFAULT_BATCH_SIZE)
    return min(common.check_count("batch_size", batch_size), num)


def _uniform(num_classes: int):
    return constriction.stream.model.Categorical(np.full(num_classes, 1.0 / num_classes),
                                                 perfect=False)


def _crc(x: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(x, "<i4").tobytes())


def _side_checksum(labels, cond) -> int:
    crc = 0
    for array in (labels, cond):
        crc = zlib.crc32(b"-" if array is None else
                         np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                         .tobytes(), crc)
    return crc


# Host side of the coding loop. The compiled program calls `_coder_callback` with the id
# of the session it serves (an argument, so that encoder and decoder share one compiled
# program and sessions in several threads do not mix).
_SESSIONS: dict = {}
_SESSION_IDS = itertools.count()
_SESSIONS_LOCK = threading.Lock()
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


class _Session:
    """One compress or decompress call: the coder and the batch being coded."""

    start, valid, error, bar = 0, 0, None, None

    def values(self, dim: int, probs_BV: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, dim: int, probs_BV: np.ndarray) -> np.ndarray:
        out = np.zeros(probs_BV.shape[0], np.int32)
        if self.error is not None:
            return out
        try:
            probs = probs_BV[: self.valid].astype(np.float64)
            if not np.all(np.isfinite(probs)):
                raise ValueError("the model's probabilities are not finite (NaN or inf): "
                                 "its parameters cannot code data")
            out[: self.valid] = self.values(dim, probs)
        except Exception as err:  # reported by the caller once the program returns
            self.error = err
        if self.bar is not None:
            self.bar.update(1)
        return out


class _Encoder(_Session):
    def __init__(self, coder, x_flat_ND):
        self.coder, self.x = coder, x_flat_ND

    def values(self, dim, probs):
        symbols = self.x[self.start: self.start + self.valid, dim]
        self.coder.encode(symbols, _CATEGORICAL, probs)
        return symbols


class _Decoder(_Session):
    def __init__(self, coder, num, dims):
        self.coder, self.x = coder, np.zeros((num, dims), np.int32)

    def values(self, dim, probs):
        try:
            symbols = self.coder.decode(_CATEGORICAL, probs)
        except AssertionError:  # constriction: the stream cannot come from these probabilities
            raise ValueError(f"data: decoding failed: {_OTHER_FLOATS}") from None
        self.x[self.start: self.start + self.valid, dim] = symbols
        return symbols


def _coder_callback(session_id, dim, probs_BV):
    return _SESSIONS[int(session_id)].step(int(dim), np.asarray(probs_BV))


def _run_batches(model, variables, num, batch, labels, cond, session, progress) -> None:
    """Runs the coding program over x in batches of `batch` (the last one padded)."""
    with _SESSIONS_LOCK:
        session_id = next(_SESSION_IDS)
        _SESSIONS[session_id] = session
    num_batches = -(-num // batch)
    dims = int(np.prod(model.event_shape))
    # progress: a bar on a terminal only (disable=None), cleared when done.
    session.bar = tqdm(total=num_batches * dims, unit="step", disable=None if progress else True,
                       file=sys.stderr, leave=False)
    zeros = jnp.zeros((batch, *model.event_shape), jnp.int32)
    try:
        for start in range(0, num, batch):
            session.start, session.valid = start, min(batch, num - start)
            rows = slice(start, start + batch)
            out = _code(model, variables, _padded(labels, rows, batch),
                        _padded(cond, rows, batch), zeros, np.int32(session_id))
            out.block_until_ready()
            if session.error is not None:
                raise session.error
    finally:
        session.bar.close()
        with _SESSIONS_LOCK:
            del _SESSIONS[session_id]


def _padded(array, rows: slice, batch: int):
    """`array[rows]` padded with zeros to `batch` rows (the padding is neither coded nor
    returned); None stays None."""
    if array is None:
        return None
    part = array[rows]
    return jnp.asarray(np.concatenate([part, np.zeros((batch - len(part), *part.shape[1:]),
                                                      part.dtype)]))


@functools.partial(jax.jit, static_argnums=0)
def _code(model, variables, labels, cond, zeros, session_id):
    """The sampling loop with the coder in place of the draw: the canvas it fills."""
    batch = zeros.shape[0]
    decoder = model.decoder(variables, labels, cond, batch)
    lik = model.likelihood

    def provide(t, params_BF, x_flat_BD, dim):
        del t
        x_group_BG, channel = loop.group_of(model, x_flat_BD, dim)
        probs_BV = jnp.exp(lik.log_pmf(params_BF.astype(jnp.float32), x_group_BG, channel))
        return io_callback(_coder_callback, jax.ShapeDtypeStruct((batch,), jnp.int32),
                           session_id, dim, probs_BV, ordered=True)

    return loop.ancestral(model, decoder, None, None, zeros, jnp.zeros(zeros.shape, bool),
                          provide=provide)


__all__ = ["DEFAULT_BATCH_SIZE", "FORMAT_VERSION", "HEADER_BYTES", "MAGIC", "compress",
           "decompress", "model_fingerprint", "read_header"]
