"""Reader of CTranslate2's `model.bin` (binary versions 2-6), without CTranslate2.

The layout, as CTranslate2 writes it (python/ctranslate2/specs/model_spec.py) and reads it
(src/models/model.cc), little-endian throughout:

    u32 binary_version            (>= 2 here; 6 today)
    str spec_name                 (e.g. "WhisperSpec")
    u32 spec_revision
    u32 num_variables
    num_variables x:
        str name                  ("encoder/layer_0/self_attention/linear_0/weight")
        u8  rank, rank x u32 dims
        u8  dtype id              (version >= 4; DATA_TYPES below)
        u32 num_bytes, then the raw row-major data
    u32 num_aliases               (version >= 3)
    num_aliases x: str alias, str target name

where `str` is a u16 byte length followed by the bytes of a NUL-terminated UTF-8 string.
Scalars (rank 0) hold model attributes (activation ids, flags); int8 weights carry a
per-row float "<name>_scale" with weight = int8 / scale.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

# CTranslate2's DataType enum (include/ctranslate2/types.h), in order.
DATA_TYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
SUPPORTED_BINARY_VERSIONS = range(2, 7)


class _Cursor:
    def __init__(self, data: memoryview, where: str):
        self.data, self.pos, self.where = data, 0, where

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise InputError(f"{self.where}: truncated or corrupt CTranslate2 model.bin "
                             f"(needs {n} bytes at offset {self.pos}, file has {len(self.data)})")
        out = self.data[self.pos: self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.u16()))
        try:
            return raw.split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.where}: corrupt CTranslate2 model.bin (a name is not UTF-8 "
                             f"near offset {self.pos})") from None


def _array(raw: memoryview, dtype, shape: tuple[int, ...], name: str, where: str) -> np.ndarray:
    if dtype == "bfloat16":  # numpy has no bfloat16: widen the 16 bits into float32's top half
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise InputError(f"{where}: corrupt CTranslate2 model.bin: variable {name!r} has {arr.size} values "
                         f"for shape {list(shape)}")
    return arr.reshape(shape)


def read_model_bin(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable name: array}) with aliases resolved and int8 weights dequantized
    to float32 (float16/bfloat16 stay as stored, widened by the caller as it needs)."""
    where = str(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as e:
        raise InputError(f"{where}: cannot read: {e.strerror}") from None
    cur = _Cursor(data, where)
    version = cur.u32()
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise InputError(f"{where}: not a CTranslate2 model.bin this reader knows (binary version {version}; "
                         f"supported {SUPPORTED_BINARY_VERSIONS.start}-{SUPPORTED_BINARY_VERSIONS.stop - 1})")
    spec = cur.string()
    cur.u32()  # spec revision: the variable names below are what we map, whatever the revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(cur.u32()):
        name = cur.string()
        shape = tuple(cur.u32() for _ in range(cur.u8()))
        type_id = cur.u8()
        if version < 4:  # older files stored the item size, not a type id
            type_id = {4: 0, 2: 2, 1: 1}.get(type_id, -1)
        if type_id not in DATA_TYPES:
            raise InputError(f"{where}: corrupt CTranslate2 model.bin: variable {name!r} has unknown "
                             f"data type {type_id}")
        nbytes = cur.u32()
        if version < 4:
            nbytes *= np.dtype(DATA_TYPES[type_id]).itemsize
        variables[name] = _array(cur.take(nbytes), DATA_TYPES[type_id], shape, name, where)
    if version >= 3:
        for _ in range(cur.u32()):
            alias, target = cur.string(), cur.string()
            if target in variables:
                variables[alias] = variables[target]
    for name in [n for n, v in variables.items() if v.dtype == np.int8 and f"{n}_scale" in variables]:
        scale = variables.pop(f"{name}_scale").astype(np.float32)
        variables[name] = variables[name].astype(np.float32) / scale.reshape(-1, *([1] * (variables[name].ndim - 1)))
    return spec, variables
