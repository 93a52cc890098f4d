"""Where training runs write, datasets live and trained models are read: a local folder, a `file://` URL, or an
object store's URL (`gs://`, `s3://`, `az://`, `hf://`) through `etils.epath`, which serves those schemes (with
gcsfs, s3fs, adlfs or huggingface_hub installed, or TensorFlow's gfile when TensorFlow is).

Every trainer path goes through `location` first, so a URL never reaches `os.path`: `os.path.abspath("gs://b/run")`
is `<cwd>/gs:/b/run`, a local folder named after the scheme, where each host of a pod would write its own copy and
from which no run could resume. A scheme nobody serves is refused by name instead of becoming such a folder.

Orbax writes the checkpoints' arrays through TensorStore, which reads these URLs itself; everything else the
trainer writes (evaluation JSON, sample images, TensorBoard events, the data iterator's position), the motion
datasets, the prepared datasets' index and the exported model folders go through the functions here (TFDS and
ArrayRecord read a prepared dataset's shards at a URL themselves).
"""

import io
import json
import os
import posixpath
import re
import urllib.parse
from typing import Any

import numpy as np
from etils import epath

REMOTE_SCHEMES = ("gs", "s3", "az", "hf")  # the URL schemes etils.epath serves
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
TMP = ".tmp"


def scheme(path: str) -> str | None:
    """The URL scheme of `path` in lower case ("gs", "file", ...), or None for a plain path."""
    match = _URL.match(str(path))
    return match.group(1).lower() if match else None


def is_remote(path: str) -> bool:
    return scheme(path) in REMOTE_SCHEMES


def location(path: str) -> str:
    """The canonical form of a workdir or model folder given by a user: an absolute local path (plain paths and
    `file://` URLs), or the URL itself for the object stores; ValueError for any other scheme."""
    path = str(path)
    kind = scheme(path)
    if kind is None:
        return os.path.abspath(os.path.expanduser(path))
    if kind == "file":
        parsed = urllib.parse.urlparse(path)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{path}: a file:// URL names a local path (file:///abs/path), not host {parsed.netloc!r}")
        return os.path.abspath(urllib.parse.unquote(parsed.path))
    if kind in REMOTE_SCHEMES:
        return path.rstrip("/")
    raise ValueError(f"{path}: unsupported URL scheme {kind}:// (use a local path, file://, or one of "
                     + ", ".join(f"{name}://" for name in REMOTE_SCHEMES) + ")")


def canonical(path: str) -> str:
    """`location` with local symbolic links resolved: two spellings of one place compare equal."""
    path = location(path)
    return path if is_remote(path) else os.path.realpath(path)


def join(base: str, *names: str) -> str:
    return posixpath.join(base, *names) if is_remote(base) else os.path.join(base, *names)


def makedirs(path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


def glob(directory: str, pattern: str) -> list[str]:
    """The paths under `directory` matching `pattern`, sorted, as strings in the directory's own form."""
    return sorted(join(directory, found.name) for found in epath.Path(directory).glob(pattern))


def listdir(path: str) -> list[str]:
    """The names in a folder, sorted."""
    return sorted(entry.name for entry in epath.Path(path).iterdir())


def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def read_bytes(path: str) -> bytes:
    return epath.Path(path).read_bytes()


def load_npz(path: str) -> dict:
    """The arrays of an .npz file, read whole (one download for an object store)."""
    with np.load(io.BytesIO(read_bytes(path))) as data:
        return {name: data[name] for name in data.files}


def save_npz(path: str, arrays) -> None:
    """An .npz file written whole or not at all (see write_bytes)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` whole or not at all: locally beside the target under a TMP name, then renamed over it; an
    object store replaces an object in one upload, so a URL is written directly."""
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        target.write_bytes(data)
        return
    tmp = path + TMP
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_json(path: str, value: Any, indent: int = 1) -> None:
    write_bytes(path, json.dumps(value, indent=indent).encode())
