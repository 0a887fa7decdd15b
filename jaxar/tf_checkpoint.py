"""Reading TensorFlow checkpoints without TensorFlow (NumPy only).

`TFCheckpoint(path)` opens either format TensorFlow has written and reads only the
tensors asked for:

* **V1** ("tensor slice" format, TF < 1.4 and `tf.train.Saver(write_version=V1)`): one
  file. It is an SSTable (below) whose entry with the empty key holds a
  `SavedTensorSlices{meta: SavedSliceMeta}` proto listing every tensor (name, shape,
  dtype, the slices saved); every other key is the OrderedCode encoding of
  (0, tensor name, rank, slice extents) and holds a `SavedTensorSlices{data: SavedSlice
  {name, slice, data: TensorProto}}`, the values in the TensorProto's repeated
  `float_val` / `int_val` / ... fields (or `tensor_content`). The keys of one tensor all
  begin with `\\x00` + the OrderedCode string of its name (bytes `\\x00`, `\\xff` escaped
  as `\\x00\\xff`, `\\xff\\x00`, then the terminator `\\x00\\x01`), so a tensor is found by
  that prefix.
* **V2** (bundle, TF >= 1.4): `<prefix>.index`, an SSTable whose empty key holds a
  `BundleHeaderProto` (num_shards, endianness, version) and whose key `<tensor name>`
  holds a `BundleEntryProto` (dtype, shape, shard_id, offset, size, crc32c); the bytes
  of that tensor are `size` bytes at `offset` of `<prefix>.data-<shard>-of-<num_shards>`
  (5-digit numbers), in little-endian C order, and `crc32c` is their masked CRC32C.

SSTable (LevelDB's table format, as TensorFlow's `table_builder` writes it): data blocks,
a meta-index block, an index block, then a 48-byte footer: the varint (offset, size)
handles of the meta-index and index blocks, zero padding to 40 bytes, and the magic
number 0xdb4775248b80fb57 (little-endian). Every block is followed by a 5-byte
trailer: the compression type (0: none, 1: snappy) and the masked CRC32C of the block
contents plus that type byte (mask: rotate right by 15 bits, add 0xa282ead8). A block is
a run of entries (varint shared-prefix length, varint unshared length, varint value
length, the unshared key bytes, the value), then the restart offsets (uint32 each) and
their count (uint32). The index block maps a key >= the last key of each data block
(and < the first key of the next) to that block's handle.

Protobufs are decoded by hand for just the fields above (varints, fixed32/64 and
length-delimited fields). Everything is checked: a file that is truncated, corrupt,
compressed (TensorFlow writes checkpoints uncompressed; snappy is refused), fails a
checksum, or lacks a tensor gives a one-line ValueError naming the file and the tensor.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

FOOTER_SIZE = 48
TABLE_MAGIC = 0xDB4775248B80FB57
BLOCK_TRAILER = 5  # compression type byte + masked crc32c
_MASK_DELTA = 0xA282EAD8

# TensorFlow's DataType enum -> numpy (reference types, enum + 100, map to their base).
DTYPES = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
    9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64,
}
DTYPE_NAMES = {7: "string", 8: "complex64", 14: "bfloat16", 18: "complex128", 21: "variant"}
# TensorProto's repeated value fields (V1 slices store values there), by dtype enum:
# field number, numpy type of the stored element (bool, int8/16, uint8/16 as int32).
_VALUE_FIELDS = {
    1: (5, np.float32), 2: (6, np.float64), 3: (7, np.int32), 4: (7, np.int32),
    5: (7, np.int32), 6: (7, np.int32), 9: (10, np.int64), 10: (11, np.int32),
    17: (7, np.int32), 19: (13, np.int32), 22: (16, np.uint32), 23: (17, np.uint64),
}


# ---------------------------------------------------------------- CRC32C (Castagnoli)

def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
    return table.astype(np.uint32)


_TABLE = _crc_table()
_TABLE_LIST = _TABLE.tolist()


def _raw_crc_small(data: bytes, crc: int = 0) -> int:
    for byte in data:
        crc = _TABLE_LIST[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


@functools.lru_cache(maxsize=64)
def _zero_shift_tables(num_bytes: int, levels: int) -> tuple[np.ndarray, ...]:
    """For each level l < `levels`, tables `[4, 256]` of the linear map "run `num_bytes` *
    2**l zero bytes through the raw CRC register" (init 0, no final xor), one table per
    byte of the register."""
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
    for _ in range(num_bytes):
        basis = _TABLE[basis & 0xFF] ^ (basis >> 8)
    tables = [_tables_from_basis(basis)]
    unit = np.uint32(1) << np.arange(32, dtype=np.uint32)
    for _ in range(1, levels):  # twice the shift: the map composed with itself
        tables.append(_tables_from_basis(_apply(tables[-1], _apply(tables[-1], unit))))
    return tuple(tables[:levels])


def _tables_from_basis(basis: np.ndarray) -> np.ndarray:
    """The map's value on every byte in each register position, from its value on the 32
    unit vectors (linearity: a byte's image is the xor of its bits' images)."""
    tables = np.zeros((4, 256), np.uint32)
    for part in range(4):
        for bit in range(8):
            tables[part, 1 << bit:2 << bit] = tables[part, :1 << bit] ^ basis[8 * part + bit]
    return tables


def _apply(tables: np.ndarray, crc: np.ndarray) -> np.ndarray:
    return (tables[0][crc & 0xFF] ^ tables[1][(crc >> 8) & 0xFF]
            ^ tables[2][(crc >> 16) & 0xFF] ^ tables[3][crc >> 24])


def crc32c(data) -> int:
    """CRC32C of `data` (bytes-like), as TensorFlow and LevelDB compute it.

    Vectorized: the data is cut into equal lanes whose raw CRCs (register starting at 0,
    so leading zero bytes change nothing) are computed side by side, then combined
    pairwise (the CRC of A+B is A's shifted over len(B) zero bytes, xor B's). The
    standard start value 0xffffffff equals xoring the first 4 bytes with 0xff.
    """
    buf = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    n = buf.size
    if n < 64:
        return _raw_crc_small(bytes(buf), 0xFFFFFFFF) ^ 0xFFFFFFFF
    lanes = 1 << min(16, max(0, int(np.log2(n // 64))))
    lane_len = -(-n // lanes)
    padded = np.zeros(lanes * lane_len, np.uint8)
    padded[padded.size - n:] = buf
    padded[padded.size - n:padded.size - n + 4] ^= 0xFF
    columns = np.ascontiguousarray(padded.reshape(lanes, lane_len).T)
    crc = np.zeros(lanes, np.uint32)
    for column in columns:
        crc = _TABLE[(crc ^ column) & 0xFF] ^ (crc >> 8)
    for tables in _zero_shift_tables(lane_len, lanes.bit_length() - 1):
        crc = _apply(tables, crc[0::2]) ^ crc[1::2]
    return int(crc[0]) ^ 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """LevelDB's masked CRC back to the CRC."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ---------------------------------------------------------------- protobuf wire format

class _Corrupt(Exception):
    """Malformed bytes inside a block or proto (reported with the file and tensor)."""


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("a varint runs past its end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf) -> dict[int, list]:
    """A proto message's fields: number -> values in order (ints for varint and fixed
    fields, memoryviews for length-delimited ones)."""
    buf = memoryview(buf)
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _Corrupt("a fixed64 field runs past its message")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Corrupt("a length-delimited field runs past its message")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _Corrupt("a fixed32 field runs past its message")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise _Corrupt(f"wire type {wire} of field {number}")
        fields.setdefault(number, []).append((wire, value))
    return fields


def _one(fields: dict, number: int, default=None):
    values = fields.get(number)
    return values[-1][1] if values else default


def _shape(proto) -> tuple[int, ...]:
    """TensorShapeProto: dim (2) = Dim{size (1)}."""
    dims = []
    for _, dim in _fields(proto).get(2, []):
        dims.append(_signed64(_one(_fields(dim), 1, 0)))
    if any(d < 0 for d in dims):
        raise _Corrupt(f"a shape of unknown size {dims}")
    return tuple(dims)


def _extents(proto, rank: int) -> list[tuple[int, int | None]]:
    """TensorSliceProto: extent (1) = Extent{start (1), length (2)}; no length: the whole
    axis. Returns (start, length or None) per axis."""
    extents = []
    for _, extent in _fields(proto).get(1, []):
        fields = _fields(extent)
        length = _one(fields, 2)
        extents.append((_signed64(_one(fields, 1, 0)),
                        None if length is None else _signed64(length)))
    if not extents:
        extents = [(0, None)] * rank
    if len(extents) != rank:
        raise _Corrupt(f"a slice of {len(extents)} axes for a tensor of rank {rank}")
    return extents


def _repeated(fields: dict, number: int, dtype) -> np.ndarray:
    """A repeated numeric field, packed or not (varints of int types)."""
    parts = []
    dtype = np.dtype(dtype)
    for wire, value in fields.get(number, []):
        if wire == 2 and dtype.kind == "f":
            parts.append(np.frombuffer(value, dtype.newbyteorder("<")).astype(dtype))
        elif wire == 2:  # packed varints
            buf, pos, items = value, 0, []
            while pos < len(buf):
                item, pos = _varint(buf, pos)
                items.append(_signed64(item))
            parts.append(np.array(items, dtype=np.int64))
        elif wire == 5 and dtype.kind == "f":
            parts.append(np.frombuffer(value.to_bytes(4, "little"), "<f4"))
        elif wire == 1 and dtype.kind == "f":
            parts.append(np.frombuffer(value.to_bytes(8, "little"), "<f8"))
        else:
            parts.append(np.array([_signed64(value)], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


# ---------------------------------------------------------------- SSTable

def _block_entries(contents) -> list[tuple[bytes, memoryview]]:
    """The (key, value) entries of one uncompressed block, in order."""
    if len(contents) < 4:
        raise _Corrupt("a block shorter than its restart count")
    num_restarts = int.from_bytes(contents[-4:], "little")
    end = len(contents) - 4 - 4 * num_restarts
    if end < 0:
        raise _Corrupt("a block's restart array runs past its start")
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(contents, pos)
        unshared, pos = _varint(contents, pos)
        value_len, pos = _varint(contents, pos)
        if shared > len(key) or pos + unshared + value_len > end:
            raise _Corrupt("a block entry runs past its block")
        key = key[:shared] + bytes(contents[pos:pos + unshared])
        pos += unshared
        entries.append((key, contents[pos:pos + value_len]))
        pos += value_len
    return entries


def _handle(buf, pos: int = 0) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


class _Table:
    """An SSTable file: the index read at open, data blocks read (and checked) on demand."""

    def __init__(self, path: pathlib.Path, file_size: int, read):
        self.path, self._read = path, read
        if file_size < FOOTER_SIZE:
            raise ValueError(f"{path}: {file_size} bytes, shorter than a TensorFlow "
                             f"checkpoint table's footer (truncated or not a checkpoint)")
        footer = read(file_size - FOOTER_SIZE, FOOTER_SIZE)
        if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
            raise ValueError(f"{path}: no TensorFlow checkpoint table magic number at the end "
                             f"(truncated, or not a TensorFlow checkpoint)")
        try:
            _, pos = _handle(footer)
            index_handle, _ = _handle(footer, pos)
        except _Corrupt as err:
            raise ValueError(f"{path}: corrupt table footer ({err})") from None
        self.file_size = file_size
        self._cache: dict[tuple[int, int], list] = {}  # the last blocks read, parsed
        self.index = [(key, _handle(value)[0])
                      for key, value in self._entries(index_handle, "the table index")]

    def _block(self, handle: tuple[int, int], what: str) -> memoryview:
        offset, size = handle
        if offset + size + BLOCK_TRAILER > self.file_size:
            raise ValueError(f"{self.path}: truncated: {what} needs bytes up to "
                             f"{offset + size + BLOCK_TRAILER}, the file has {self.file_size}")
        raw = self._read(offset, size + BLOCK_TRAILER)
        kind = raw[size]
        if kind == 1:
            raise ValueError(f"{self.path}: {what} is snappy-compressed, which this reader "
                             f"does not decode (TensorFlow writes checkpoints uncompressed)")
        if kind != 0:
            raise ValueError(f"{self.path}: {what} has unknown block compression type {kind}")
        stored = unmask_crc(int.from_bytes(raw[size + 1:], "little"))
        if crc32c(raw[:size + 1]) != stored:
            raise ValueError(f"{self.path}: checksum mismatch in {what} (block at byte "
                             f"{offset}): the file is corrupt")
        return memoryview(raw)[:size]

    def _entries(self, handle, what: str):
        if handle in self._cache:
            return self._cache[handle]
        contents = self._block(handle, what)
        try:
            entries = _block_entries(contents)
        except _Corrupt as err:
            raise ValueError(f"{self.path}: corrupt {what} ({err})") from None
        if len(self._cache) >= 4:  # consecutive tensors mostly share blocks
            self._cache.pop(next(iter(self._cache)))
        self._cache[handle] = entries
        return entries

    def scan(self, start: bytes, what: str):
        """(key, value) of every entry with key >= `start`, in key order."""
        first = next((i for i, (key, _) in enumerate(self.index) if key >= start),
                     len(self.index))
        for _, handle in self.index[first:]:
            for key, value in self._entries(handle, what):
                if key >= start:
                    yield key, value

    def get(self, key: bytes, what: str):
        """The value of `key`, or None."""
        for found, value in self.scan(key, what):
            return value if found == key else None
        return None


def _ordered_code_string(text: bytes) -> bytes:
    escape = {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}
    return b"".join(escape.get(c, bytes((c,))) for c in text) + b"\x00\x01"


# ---------------------------------------------------------------- the checkpoint

class TFCheckpoint:
    """A TensorFlow checkpoint: V1 (one file: give its path) or V2 (give the prefix, the
    part before `.index`, or the `.index` file itself).

    `names()`, `shape(name)`, `dtype(name)` come from the checkpoint's table of
    contents; `read(name)` reads that tensor alone, checking every checksum on its way.
    """

    def __init__(self, path: str | os.PathLike):
        path = pathlib.Path(path)
        if path.suffix == ".index" and path.is_file():
            path = path.with_suffix("")
        if path.with_name(path.name + ".index").is_file():
            self.format, self.path = "v2", path
            self._open_v2()
        elif path.is_file():
            self.format, self.path = "v1", path
            self._open_v1()
        elif any(path.parent.glob(f"{path.name}.data-*")) if path.parent.is_dir() else False:
            raise ValueError(f"{path}: the V2 checkpoint's {path.name}.index file is missing")
        else:
            raise ValueError(f"{path}: no such TensorFlow checkpoint (neither a V1 file nor "
                             f"a V2 prefix with {path.name}.index)")

    # -- file access
    @staticmethod
    def _reader(path: pathlib.Path):
        def read(offset: int, size: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{path}: truncated: {size} bytes wanted at byte {offset}")
            return data
        return read

    def _table(self, path: pathlib.Path) -> _Table:
        return _Table(path, path.stat().st_size, self._reader(path))

    def _error(self, name: str, what: str) -> ValueError:
        return ValueError(f"{self.path}: tensor {name!r}: {what}")

    # -- V2
    def _open_v2(self):
        index = self._table(self.path.with_name(self.path.name + ".index"))
        self._index_path = index.path
        self._entries: dict[str, dict] = {}
        try:
            header = None
            for key, value in index.scan(b"", "the bundle index"):
                if key == b"":
                    header = _fields(value)
                    continue
                fields = _fields(value)
                self._entries[key.decode("utf-8", "replace")] = {
                    "dtype": _one(fields, 1, 0),
                    "shape": _shape(_one(fields, 2, b"")),
                    "shard": _one(fields, 3, 0),
                    "offset": _one(fields, 4, 0),
                    "size": _one(fields, 5, 0),
                    "crc": _one(fields, 6),
                    "sliced": bool(fields.get(7)),
                }
        except _Corrupt as err:
            raise ValueError(f"{index.path}: corrupt bundle index ({err})") from None
        if header is None:
            raise ValueError(f"{index.path}: no bundle header (not a TensorFlow V2 "
                             f"checkpoint index)")
        self._num_shards = _one(header, 1, 1)
        if _one(header, 2, 0) != 0:
            raise ValueError(f"{index.path}: a big-endian bundle, which this reader refuses")

    def _read_v2(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        if entry["sliced"]:
            raise self._error(name, "saved as partitioned slices, which this reader refuses")
        dtype = self._numpy_dtype(name, entry["dtype"])
        data_path = self.path.with_name(
            f"{self.path.name}.data-{entry['shard']:05d}-of-{self._num_shards:05d}")
        if not data_path.is_file():
            raise self._error(name, f"its data file {data_path.name} is missing")
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if entry["size"] != count * dtype.itemsize:
            raise self._error(name, f"{entry['size']} bytes stored for shape {entry['shape']} "
                                    f"of {dtype}")
        if entry["offset"] + entry["size"] > data_path.stat().st_size:
            raise self._error(name, f"truncated data file {data_path.name} (needs bytes up to "
                                    f"{entry['offset'] + entry['size']}, has "
                                    f"{data_path.stat().st_size})")
        raw = self._reader(data_path)(entry["offset"], entry["size"])
        if entry["crc"] is not None and crc32c(raw) != unmask_crc(entry["crc"]):
            raise self._error(name, f"checksum mismatch in {data_path.name}: the file is "
                                    f"corrupt")
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(entry["shape"])

    # -- V1
    def _open_v1(self):
        self._table_v1 = self._table(self.path)
        value = self._table_v1.get(b"", "the table of contents")
        if value is None:
            raise ValueError(f"{self.path}: no table of contents (empty key): not a "
                             f"TensorFlow V1 checkpoint")
        self._entries = {}
        try:
            meta = _one(_fields(value), 1)
            if meta is None:
                raise _Corrupt("no SavedSliceMeta")
            for _, tensor in _fields(meta).get(1, []):
                fields = _fields(tensor)
                name = bytes(_one(fields, 1, b"")).decode("utf-8", "replace")
                self._entries[name] = {"dtype": _one(fields, 3, 0),
                                       "shape": _shape(_one(fields, 2, b""))}
        except _Corrupt as err:
            raise ValueError(f"{self.path}: corrupt table of contents ({err})") from None

    def _read_v1(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        dtype = self._numpy_dtype(name, entry["dtype"])
        shape = entry["shape"]
        out = np.zeros(shape, dtype)
        covered = np.zeros(shape, bool)
        prefix = b"\x00" + _ordered_code_string(name.encode())
        try:
            for key, value in self._table_v1.scan(prefix, f"the blocks of tensor {name!r}"):
                if not key.startswith(prefix):
                    break
                saved = _fields(_one(_fields(value), 2, b""))
                if bytes(_one(saved, 1, b"")).decode("utf-8", "replace") != name:
                    raise _Corrupt("a slice stored under another tensor's name")
                extents = _extents(_one(saved, 2, b""), len(shape))
                index = tuple(slice(s, None if n is None else s + n) for s, n in extents)
                values = self._proto_values(name, _fields(_one(saved, 3, b"")), entry["dtype"])
                target = out[index]
                if values.size != target.size:
                    raise _Corrupt(f"a slice of {values.size} values for {target.shape}")
                out[index] = values.reshape(target.shape)
                covered[index] = True
        except _Corrupt as err:
            raise self._error(name, f"corrupt data ({err})") from None
        if not covered.all():
            raise self._error(name, "its data is missing from the file (truncated or corrupt)")
        return out

    def _proto_values(self, name: str, proto: dict, dtype_enum: int) -> np.ndarray:
        dtype = self._numpy_dtype(name, dtype_enum)
        content = _one(proto, 4)
        if content is not None:
            return np.frombuffer(content, dtype.newbyteorder("<")).astype(dtype)
        number, stored = _VALUE_FIELDS[dtype_enum % 100]
        values = _repeated(proto, number, stored)
        if dtype == np.float16:
            return values.astype(np.uint16).view(np.float16)
        return values.astype(dtype)

    # -- common
    def _numpy_dtype(self, name: str, enum: int) -> np.dtype:
        enum = enum % 100 if enum > 100 else enum
        if enum not in DTYPES:
            raise self._error(name, f"dtype {DTYPE_NAMES.get(enum, enum)} is not read here")
        return np.dtype(DTYPES[enum])

    def _entry(self, name: str) -> dict:
        if name not in self._entries:
            raise self._error(name, "not in this checkpoint")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every tensor's name, sorted."""
        return sorted(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)["shape"]

    def dtype(self, name: str) -> np.dtype:
        return self._numpy_dtype(name, self._entry(name)["dtype"])

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` as a numpy array (checksums verified)."""
        self._entry(name)
        return self._read_v2(name) if self.format == "v2" else self._read_v1(name)
