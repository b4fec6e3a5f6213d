"""Read a legacy (non-zip) PyTorch state dict into numpy arrays without torch and without executing code."""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import numpy as np

from pipeline_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
# torch's element type of each storage class we accept; anything else is refused.
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a torch.*Storage class: a name and a numpy dtype, deliberately not callable."""

    name: str
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """A persistent id from the pickle: which raw storage a tensor views."""

    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor as described by the pickle, before the raw storages are read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: object, offset: object, shape: object, stride: object, *_: object
) -> _TensorRef:
    """Our replacement for torch._utils._rebuild_tensor_v2: records the view, allocates nothing."""
    if not isinstance(storage, _StorageRef) or not isinstance(offset, int):
        raise ValueError("malformed tensor record")
    if not (_is_int_tuple(shape) and _is_int_tuple(stride) and len(shape) == len(stride)):
        raise ValueError("malformed tensor shape or stride")
    return _TensorRef(storage, offset, shape, stride)


def _is_int_tuple(value: object) -> TypeGuard[tuple[int, ...]]:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only OrderedDict, _rebuild_tensor_v2 and torch.*Storage names."""

    def __init__(self, file: BinaryIO, source: Path) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise ModelLoadError(f"{self._source}: refusing to load {module}.{name} from the weights file")

    def persistent_load(self, pid: Any) -> Any:
        match pid:
            case ("storage", _StorageType() as storage_type, str(key), str(), int(numel), None) if numel >= 0:
                return _StorageRef(key, storage_type.dtype, numel)
        raise ModelLoadError(f"{self._source}: unexpected persistent id {pid!r:.80}")


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a legacy PyTorch .pth state dict; any malformed or unexpected content raises ModelLoadError."""
    try:
        with path.open("rb") as f:
            return _read(f, path)
    except ModelLoadError:
        raise
    except (
        OSError,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        struct.error,
        MemoryError,
    ) as e:
        raise ModelLoadError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {e})") from e


def _read(f: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    magic, protocol = _load(f, path), _load(f, path)
    if magic != _MAGIC_NUMBER or protocol != _PROTOCOL_VERSION:
        raise ModelLoadError(
            f"{path}: not a legacy PyTorch file (magic {magic!r:.40}, protocol {protocol!r:.40})"
        )
    sys_info = _load(f, path)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ModelLoadError(f"{path}: only little-endian weights files are supported")
    state = _load(f, path)
    keys = _load(f, path)
    if not isinstance(state, collections.OrderedDict) or not all(
        isinstance(t, _TensorRef) for t in state.values()
    ):
        raise ModelLoadError(f"{path}: the pickle is not a state dict of tensors")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ModelLoadError(f"{path}: malformed storage key list")
    storages = _read_storages(f, path, keys, state.values())
    return {str(name): _view(path, str(name), ref, storages) for name, ref in state.items()}


def _load(f: BinaryIO, path: Path) -> Any:
    return RestrictedUnpickler(f, path).load()


def _read_storages(f: BinaryIO, path: Path, keys: list[str], tensors: Any) -> dict[str, np.ndarray]:
    """Read the raw storages that follow the pickles: per key, an int64 count then the elements."""
    refs = {t.storage.key: t.storage for t in tensors}
    if set(refs) != set(keys):
        raise ModelLoadError(f"{path}: storage keys do not match the tensors that use them")
    remaining = _remaining_bytes(f)
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = refs[key]
        (count,) = struct.unpack("<q", _read_exact(f, 8, path))
        nbytes = count * ref.dtype.itemsize
        if count != ref.numel or nbytes > remaining:
            raise ModelLoadError(f"{path}: storage {key} is truncated or its size is wrong")
        storages[key] = np.frombuffer(_read_exact(f, nbytes, path), dtype=ref.dtype)
        remaining -= 8 + nbytes
    return storages


def _remaining_bytes(f: BinaryIO) -> int:
    here = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(here)
    return end - here


def _read_exact(f: BinaryIO, n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ModelLoadError(f"{path}: file is truncated")
    return data


def _view(path: Path, name: str, ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    """Materialise one tensor from its storage, honouring offset and strides (the file stores HWIO views)."""
    storage = storages[ref.storage.key]
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True) if n > 0)
    if (
        ref.offset < 0
        or (storage.size and last >= storage.size)
        or (not storage.size and np.prod(ref.shape) > 0)
    ):
        raise ModelLoadError(f"{path}: tensor {name} reaches outside its storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
