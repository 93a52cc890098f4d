"""Torch-free loading of pretrained weight files, plus helpers for importers.

Supported formats (picked by content, not by file extension):

* PyTorch ``torch.save`` zip archives (``.pth`` / ``.pt`` / ``.bin``).  These are
  zip files holding a pickle (``<name>/data.pkl``) plus one raw little-endian
  blob per storage (``<name>/data/<key>``).  We unpickle with a restricted
  :class:`pickle.Unpickler` that only knows the handful of globals a plain
  state dict needs and rebuilds every tensor as a NumPy array, so arbitrary code
  in an untrusted checkpoint cannot run and PyTorch is not needed.
  The pre-1.6 legacy (non-zip) stream format, used by older published
  checkpoints, is read too; the ancient tar-based format is not.
* ``.safetensors`` files (8-byte little-endian header length, JSON header,
  raw tensor bytes).
* ``.npz`` archives (loaded with ``allow_pickle=False``).

Public API:

* :func:`load_torch_state_dict` -> ``dict[str, np.ndarray]``
* :func:`save_safetensors` (tiny writer, handy for converting weights)
* :class:`ParamSpec` / :func:`convert_state_dict`: shared machinery used by the
  model importers to map PyTorch keys to a nested Flax params pytree while
  reporting missing, unexpected and shape-mismatched keys in one error.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np

try:  # ml_dtypes ships with jax; only needed for bfloat16 / float8 tensors.
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - jax always brings it
    _ml_dtypes = None


__all__ = [
    "load_torch_state_dict",
    "save_safetensors",
    "ParamSpec",
    "convert_state_dict",
    "conv_kernel_from_torch",
    "linear_kernel_from_torch",
    "import_mirrored_state_dict",
]


# ---------------------------------------------------------------------------
# dtype tables
# ---------------------------------------------------------------------------

def _optional_dtype(name: str):
    if _ml_dtypes is None:
        return None
    return np.dtype(getattr(_ml_dtypes, name))


# torch storage class name -> numpy dtype
_TORCH_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": _optional_dtype("bfloat16"),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}

# safetensors dtype tag <-> numpy dtype
_SAFETENSORS_DTYPES: dict[str, Any] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": _optional_dtype("bfloat16"),
    "F8_E4M3": _optional_dtype("float8_e4m3fn"),
    "F8_E5M2": _optional_dtype("float8_e5m2"),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


# ---------------------------------------------------------------------------
# PyTorch checkpoints (zip format and legacy pre-1.6 format)
# ---------------------------------------------------------------------------

class _StorageRef:
    """A storage: a flat numpy array of its dtype (filled later for legacy files)."""

    __slots__ = ("dtype", "numel", "array", "base", "offset")

    def __init__(self, dtype, numel: int, array: np.ndarray | None = None,
                 base: "_StorageRef | None" = None, offset: int = 0):
        self.dtype = dtype
        self.numel = int(numel)
        self.array = array
        self.base = base  # legacy storage views share their root storage
        self.offset = int(offset)

    def flat(self) -> np.ndarray:
        if self.base is not None:
            return self.base.flat()[self.offset:self.offset + self.numel]
        if self.array is None:
            raise ValueError("malformed checkpoint: storage data never provided")
        return self.array


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co. inside the pickle."""

    def __init__(self, name: str):
        self.name = name

    @property
    def dtype(self):
        dt = _TORCH_STORAGE_DTYPES.get(self.name)
        if dt is None:
            raise ValueError(f"unsupported torch storage type torch.{self.name}")
        return dt


class _Placeholder:
    """Stand-in for a class referenced only as a tag (e.g. torch.Tensor)."""

    def __init__(self, name: str):
        self.name = name


class _PendingTensor:
    """A tensor whose storage bytes may not have been read yet."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self) -> np.ndarray:
        flat = self.storage.flat()
        size = tuple(int(n) for n in self.size)
        stride = tuple(int(n) for n in self.stride)
        offset = int(self.offset)
        if len(size) != len(stride):
            raise ValueError("malformed checkpoint: tensor size/stride rank mismatch")
        if any(n == 0 for n in size):
            return np.zeros(size, dtype=flat.dtype)
        if any(st < 0 for st in stride):
            raise ValueError("malformed checkpoint: negative tensor stride")
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if offset < 0 or last >= flat.size:
            raise ValueError("malformed checkpoint: tensor view exceeds its storage")
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(st * item for st in stride), writeable=False
        )
        return np.array(view, copy=True)  # own, contiguous memory


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _PendingTensor:
    """Replacement for ``torch._utils._rebuild_tensor_v2`` (and v1)."""
    if not isinstance(storage, _StorageRef):
        raise ValueError("malformed checkpoint: tensor does not reference a storage")
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_unused):
    return data


def _rebuild_from_type_v2(func, _new_type, args, _state):
    return func(*args)


def _materialize(obj: Any) -> Any:
    """Replace every pending tensor in a loaded pickle by a numpy array."""
    if isinstance(obj, _PendingTensor):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _Placeholder("Tensor"),
    ("torch.nn.parameter", "Parameter"): _Placeholder("Parameter"),
    ("torch", "Size"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a plain state dict needs."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key]
        if module in ("torch", "torch.storage") and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{self._path}: refusing to unpickle global {module}.{name}; only plain "
            "tensor state dicts are supported (re-save with "
            "torch.save(model.state_dict(), path))"
        )

    def _parse_storage_id(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5):
            raise pickle.UnpicklingError(f"{self._path}: unsupported persistent id {pid!r}")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename != "storage":
            raise pickle.UnpicklingError(
                f"{self._path}: unsupported persistent id type {typename!r} (only tensors are supported)")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._path}: unknown storage type {storage_type!r}")
        return storage_type.dtype, key, int(pid[4]), (pid[5] if len(pid) > 5 else None)


class _ZipUnpickler(_RestrictedUnpickler):
    def __init__(self, file, zf: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(file, path)
        self._zf = zf
        self._prefix = prefix
        self._byteorder = byteorder

    def persistent_load(self, pid):
        dtype, key, numel, _ = self._parse_storage_id(pid)
        if key in self.storages:
            return self.storages[key]
        try:
            raw = self._zf.read(f"{self._prefix}data/{key}")
        except KeyError:
            raise ValueError(f"{self._path}: storage record data/{key} missing from archive") from None
        count = len(raw) // dtype.itemsize
        if count < numel:
            raise ValueError(f"{self._path}: storage {key} is truncated")
        stored = dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        arr = np.frombuffer(raw, dtype=stored, count=count).astype(dtype, copy=False)
        ref = self.storages[key] = _StorageRef(dtype, count, arr)
        return ref


class _LegacyUnpickler(_RestrictedUnpickler):
    """Pre-1.6 format: storage bytes follow the pickle, read after loading."""

    def persistent_load(self, pid):
        dtype, key, numel, view = self._parse_storage_id(pid)
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _StorageRef(dtype, numel)
        if view is None:
            return root
        _view_key, view_offset, view_size = view
        return _StorageRef(dtype, view_size, base=root, offset=view_offset)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _load_torch_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        pkl_names = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise ValueError(
                f"{path}: zip archive is not a torch.save checkpoint (expected exactly one "
                "'<name>/data.pkl' record)"
            )
        prefix = pkl_names[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in zf.namelist():
            byteorder = zf.read(f"{prefix}byteorder").decode("ascii").strip() or "little"
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: unknown byteorder record {byteorder!r}")
        with zf.open(pkl_names[0]) as fh:
            try:
                return _materialize(_ZipUnpickler(fh, zf, prefix, byteorder, path).load())
            except pickle.UnpicklingError as err:
                raise ValueError(str(err)) from None


def _load_torch_legacy(path: str) -> Any:
    """The pre-1.6 ``torch.save`` stream: magic, protocol, sys info, the object
    pickle, the list of storage keys, then per storage an int64 element count
    followed by its raw little-endian bytes."""
    not_torch = ValueError(
        f"{path}: not a torch checkpoint (pickle without the torch magic number); "
        "only state dicts saved with torch.save, .safetensors or .npz are supported"
    )
    with open(path, "rb") as fh:
        try:
            magic = _RestrictedUnpickler(fh, path).load()
            if magic != _LEGACY_MAGIC:
                raise not_torch
            if _RestrictedUnpickler(fh, path).load() != _LEGACY_PROTOCOL:
                raise ValueError(f"{path}: unsupported legacy torch protocol version")
            sys_info = _RestrictedUnpickler(fh, path).load()
            if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
                raise ValueError(f"{path}: big-endian legacy torch checkpoints are not supported")
            unpickler = _LegacyUnpickler(fh, path)
            result = unpickler.load()
            keys = _RestrictedUnpickler(fh, path).load()
        except pickle.UnpicklingError as err:
            raise ValueError(str(err)) from None
        for key in keys:
            ref = unpickler.storages.get(str(key))
            if ref is None:
                raise ValueError(f"{path}: storage {key} listed but never referenced")
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError(f"{path}: truncated legacy checkpoint")
            (numel,) = struct.unpack("<q", head)
            raw = fh.read(numel * ref.dtype.itemsize)
            if len(raw) != numel * ref.dtype.itemsize:
                raise ValueError(f"{path}: truncated legacy checkpoint")
            ref.array = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<")).astype(ref.dtype)
            ref.numel = numel
    return _materialize(result)


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

def _starts_with(path: str, prefix: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(prefix)) == prefix


def _looks_like_safetensors(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) != 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 8 + n <= os.path.getsize(path)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: file too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise ValueError(f"{path}: implausible safetensors header size {n}")
        header = json.loads(fh.read(n).decode("utf-8"))
        data = fh.read()
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tag = info.get("dtype")
        dtype = _SAFETENSORS_DTYPES.get(tag)
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {tag!r}")
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(v) for v in info["data_offsets"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not (0 <= begin <= end <= len(data)) or end - begin != nbytes:
            raise ValueError(f"{path}: tensor {name!r} has inconsistent data offsets")
        arr = np.frombuffer(memoryview(data)[begin:end], dtype=dtype.newbyteorder("<"))
        out[name] = arr.astype(dtype, copy=True).reshape(shape)
    return out


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> array) as a ``.safetensors`` file."""
    inverse = {dt: tag for tag, dt in _SAFETENSORS_DTYPES.items() if dt is not None}
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        tag = inverse.get(arr.dtype)
        if tag is None:
            raise ValueError(f"save_safetensors: tensor {name!r} has unsupported dtype {arr.dtype}")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * (-len(hdr) % 8)  # keep the data section 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hdr)))
        fh.write(hdr)
        for raw in blobs:
            fh.write(raw)


# ---------------------------------------------------------------------------
# public loader
# ---------------------------------------------------------------------------

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "params_ema", "params", "module")


def _to_flat_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
    """Unwrap common checkpoint containers and keep only array entries."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, np.ndarray) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: checkpoint does not contain a state dict (got {type(obj).__name__})")
    out = dict(_flatten_mappings(obj))
    if not out:
        raise ValueError(f"{path}: checkpoint contains no tensors")
    return out


def _flatten_mappings(obj: Mapping, prefix: str = ""):
    """Arrays of a (possibly nested) mapping with dotted keys: a file holding several state dicts, as
    LivePortrait's stitching file does ({"retarget_eye": {...}, ...}), reads as one with prefixed names."""
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            yield prefix + str(key), value
        elif isinstance(value, Mapping):
            yield from _flatten_mappings(value, f"{prefix}{key}.")


def load_torch_state_dict(path: str | os.PathLike, what: str | None = None) -> dict[str, np.ndarray]:
    """Load a weight file into a flat ``{name: np.ndarray}`` dict, without torch.

    ``path`` may be a ``torch.save`` zip checkpoint (``.pth``/``.pt``/``.bin``),
    a ``.safetensors`` file or a ``.npz`` archive.  Nested checkpoints such as
    ``{"state_dict": {...}}`` are unwrapped, other nested mappings are flattened
    with dotted keys, and a ``module.`` prefix common to every key (from
    ``DataParallel``) is stripped.  ``what`` describes the
    expected contents and is used in the error message when the file is
    missing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        desc = what or "a PyTorch state dict (.pth/.pt), .safetensors or .npz weight file"
        raise FileNotFoundError(f"weights file not found: {path!r} (expected {desc})")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n.endswith("data.pkl") for n in names):
            sd = _to_flat_state_dict(_load_torch_zip(path), path)
        elif names and all(n.endswith(".npy") for n in names):
            with np.load(path, allow_pickle=False) as npz:
                sd = {k: np.asarray(npz[k]) for k in npz.files}
        else:
            raise ValueError(f"{path}: zip archive is neither a torch.save checkpoint nor an .npz file")
    elif path.endswith(".safetensors") or _looks_like_safetensors(path):
        sd = _load_safetensors(path)
    elif _starts_with(path, b"\x80"):  # a bare pickle stream: legacy torch.save format
        sd = _to_flat_state_dict(_load_torch_legacy(path), path)
    else:
        raise ValueError(
            f"{path}: unrecognised weight file format (expected a torch.save checkpoint, "
            ".safetensors or .npz; very old tar-based torch checkpoints are not supported)"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# ---------------------------------------------------------------------------
# importer helpers
# ---------------------------------------------------------------------------

def conv_kernel_from_torch(w: np.ndarray) -> np.ndarray:
    """Torch conv weight [out, in, kh, kw] -> Flax kernel [kh, kw, in, out]."""
    return np.transpose(w, (2, 3, 1, 0))


def linear_kernel_from_torch(w: np.ndarray) -> np.ndarray:
    """Torch linear weight [out, in] -> Flax Dense kernel [in, out]."""
    return np.transpose(w, (1, 0))


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One imported tensor: torch key, where it goes, its torch shape, converter."""

    torch_key: str
    flax_path: tuple[str, ...]
    torch_shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray] = lambda a: a


def convert_state_dict(
    state_dict: Mapping[str, Any],
    specs: Sequence[ParamSpec],
    *,
    model_name: str,
    ignore: Callable[[str], bool] = lambda k: False,
    dtype=np.float32,
) -> dict:
    """Map a flat torch state dict to a nested params dict following ``specs``.

    Raises one ``ValueError`` listing every missing, unexpected and
    shape-mismatched key.  Keys for which ``ignore(key)`` is true are skipped.
    Returns the nested dict (without the ``{"params": ...}`` wrapper).
    """
    wanted = {s.torch_key: s for s in specs}
    missing = [k for k in wanted if k not in state_dict]
    unexpected = sorted(k for k in state_dict if k not in wanted and not ignore(k))
    mismatched = []
    for key, spec in wanted.items():
        if key in state_dict:
            shape = tuple(np.shape(state_dict[key]))
            if shape != tuple(spec.torch_shape):
                mismatched.append(f"{key}: got {shape}, expected {tuple(spec.torch_shape)}")
    if missing or unexpected or mismatched:
        lines = [f"cannot import {model_name} weights:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        raise ValueError("\n".join(lines))
    params: dict = {}
    for key, spec in wanted.items():
        node = params
        for part in spec.flax_path[:-1]:
            node = node.setdefault(part, {})
        value = spec.convert(np.asarray(state_dict[key]).astype(dtype))
        node[spec.flax_path[-1]] = np.ascontiguousarray(value)
    return params


def _flax_path(torch_module: str) -> tuple[str, ...]:
    """`down_blocks.0.conv` -> ("down_blocks_0", "conv"): a purely numeric segment joins the one before it."""
    parts: list[str] = []
    for part in torch_module.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    return tuple(parts)


def _fold_spectral_norm(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torch's spectral_norm keeps weight_orig, u and v; in eval mode the weight is weight_orig / (u . W v)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_u") or key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_orig"):
            stem = key[: -len(".weight_orig")]
            u, v = state_dict[stem + ".weight_u"], state_dict[stem + ".weight_v"]
            matrix = value.reshape(value.shape[0], -1).astype(np.float64)
            sigma = float(u.astype(np.float64) @ (matrix @ v.astype(np.float64)))
            out[stem + ".weight"] = (value / sigma).astype(value.dtype)
        else:
            out[key] = value
    return out


def _strip_ddp(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "module")


def import_mirrored_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, Any],
                               model_name: str) -> dict:
    """A torch state dict -> {"params": ..., "batch_stats": ...} for a Flax module whose tree mirrors the torch
    module names (torch `blocks.0.conv` is Flax `blocks_0/conv`, the name Flax gives the i-th member of a list;
    weight -> kernel (transposed) or scale, running_mean / running_var -> batch_stats mean / var; spectral norm
    folded; `module.` segments dropped). `expected`: the variables' shapes (`jax.eval_shape` of the init, both
    collections). Raises one ValueError naming every missing, unexpected and mis-shaped tensor."""
    state_dict = _fold_spectral_norm({_strip_ddp(k): np.asarray(v) for k, v in state_dict.items()})
    expected_flat = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in _flatten(expected.get(collection, {})):
            expected_flat[(collection,) + path] = tuple(leaf.shape)
    filled: dict[tuple, np.ndarray] = {}
    unexpected, mismatched = [], []
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        path = _flax_path(module)
        candidates = {
            "weight": [("params",) + path + ("kernel",), ("params",) + path + ("scale",)],
            "bias": [("params",) + path + ("bias",)],
            "running_mean": [("batch_stats",) + path + ("mean",)],
            "running_var": [("batch_stats",) + path + ("var",)],
        }.get(leaf, [("params",) + path + (leaf,)])
        target = next((c for c in candidates if c in expected_flat), None)
        if target is None:
            unexpected.append(key)
            continue
        if target[-1] == "kernel":  # torch [out, in, *window] -> Flax [*window, in, out]; Linear [out, in]
            value = np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
        if value.shape != expected_flat[target]:
            mismatched.append(f"{key}: {value.shape} -> {'/'.join(target)} expects {expected_flat[target]}")
            filled[target] = None
            continue
        filled[target] = np.ascontiguousarray(value, dtype=np.float32)
    missing = ["/".join(p) for p in expected_flat if p not in filled]  # (a mis-shaped tensor is named once)
    if missing or unexpected or mismatched:
        lines = [f"cannot import {model_name}:"]
        for title, items in (("missing", missing), ("unexpected tensors", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12])
                             + (f", ... ({len(items) - 12} more)" if len(items) > 12 else ""))
        raise ValueError("\n".join(lines))
    variables: dict = {}
    for path, value in filled.items():
        node = variables
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return variables


def _flatten(tree, prefix=()):
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _flatten(value, prefix + (key,))
    else:
        yield prefix, tree
