"""Atomic file writes for datasets: write beside the target under a `.tmp` name, then rename, so a crash leaves
either the previous file or the complete new one, never a partial one (an object store's URL: one upload, see
`vasa_jax.storage.write_bytes`). Readers skip names containing TMP."""

from typing import Any, Mapping

import numpy as np

from vasa_jax import storage

TMP = storage.TMP


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    storage.save_npz(path, arrays)


def write_json(path: str, value: Any, indent: int = 1) -> None:
    storage.write_json(path, value, indent)
