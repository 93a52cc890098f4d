"""Where training runs write, datasets live and trained models are read: a local folder, a `file://` URL, or an
object store's URL (`gs://`, `s3://`, `az://`, `hf://`) through `etils.epath`, which serves those schemes (with
gcsfs, s3fs, adlfs or huggingface_hub installed, or TensorFlow's gfile when TensorFlow is).

Every trainer path goes through `location` first, so a URL never reaches `os.path`: `os.path.abspath("gs://b/run")`
is `<cwd>/gs:/b/run`, a local folder named after the scheme, where each host of a pod would write its own copy and
from which no run could resume. A scheme nobody serves is refused by name instead of becoming such a folder.

Orbax writes the checkpoints' arrays through TensorStore, which reads these URLs itself; everything else the
trainer writes (evaluation JSON, sample images, TensorBoard events, the data iterator's position), the motion
datasets, the data preparation's input videos, clip files and index, and the exported model folders go through the
functions here (TFDS and ArrayRecord read a prepared dataset's shards at a URL themselves; written locally, the
shards are uploaded with `upload_tree`).
"""

import contextlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import urllib.parse
from typing import Any, Iterator

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


def walk_files(directory: str) -> list[str]:
    """Every file under `directory` (recursively), as sorted paths relative to it ("/"-separated for a URL)."""
    if not is_remote(directory):
        return sorted(os.path.relpath(os.path.join(folder, name), directory)
                      for folder, _, names in os.walk(directory) for name in names)
    found, top = [], None
    for folder, _, names in epath.Path(directory).walk():
        top = top or str(folder)  # the first folder walked is `directory` itself, in the backend's own spelling
        found += [posixpath.join(posixpath.relpath(str(folder), top), name) for name in names]
    return sorted(posixpath.normpath(name) for name in found)


def remove_tree(path: str) -> None:
    """Remove a folder and everything under it, if it exists."""
    if exists(path):
        epath.Path(path).rmtree()


def remove(path: str) -> None:
    """Remove a file, if it exists."""
    if exists(path):
        epath.Path(path).unlink()


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local path holding the file at `path`, for libraries that open files by name (FFmpeg, MediaPipe): the
    path itself when local, else a download into the system's temporary folder (same file name suffix), removed
    when the block ends."""
    if not is_remote(path):
        yield path
        return
    handle, copy = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(handle, "wb") as target, epath.Path(path).open("rb") as source:
            shutil.copyfileobj(source, target, 1 << 22)
        yield copy
    finally:
        os.remove(copy)


def upload_tree(local_dir: str, target: str, last: tuple[str, ...] = ()) -> None:
    """Copy every file under the local folder `local_dir` to the folder `target` (a URL), streamed file by file;
    the files named in `last` (relative paths) go after all others, so a reader that waits for them sees a whole
    folder."""
    names = [name.replace(os.sep, "/") for name in walk_files(local_dir)]
    for name in sorted(names, key=lambda name: (name in last, name)):
        destination = epath.Path(join(target, *name.split("/")))
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(local_dir, name), "rb") as source, destination.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 22)


def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def read_bytes(path: str) -> bytes:
    return epath.Path(path).read_bytes()


def open_npz(path: str):
    """An .npz file opened for reading (np.load's NpzFile, a context manager): read lazily, array by array, from
    a local file; downloaded whole first from an object store."""
    return np.load(io.BytesIO(read_bytes(path)) if is_remote(path) else path)


def load_npz(path: str) -> dict:
    """The arrays of an .npz file."""
    with open_npz(path) as data:
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
