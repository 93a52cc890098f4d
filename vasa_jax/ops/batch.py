"""Several frames of each example through one network call, laid out so that a batch-sharded step keeps every
example's rows on the device that holds the example."""

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

__all__ = ["join_examples", "join_frames", "split_examples", "split_frames"]


def join_examples(parts: Sequence[Any]) -> Any:
    """Per-example parts [B, n_j, ...] joined into one batch [B * sum(n_j), ...], example by example: the rows of
    example 0 from every part, then those of example 1, and so on.

    Under a batch-sharded mesh every example's rows stay on the device that holds the example. Batches joined end
    to end (`jnp.concatenate` along axis 0) would be laid out over the devices anew, moving most rows to another
    device (a collective-permute of the whole joined array) at every step."""
    return jnp.concatenate(parts, axis=1).reshape((-1,) + parts[0].shape[2:])


def split_examples(joined: Any, sizes: Sequence[int]) -> list:
    """The inverse of `join_examples`: [B * sum(sizes), ...] -> one array [B, n_j, ...] per size n_j."""
    per_example = joined.reshape((-1, sum(sizes)) + joined.shape[1:])
    ends = np.cumsum(sizes)
    return [per_example[:, end - size : end] for size, end in zip(sizes, ends)]


def join_frames(frames: Sequence[Any]) -> Any:
    """n batches of single frames [B, ...] joined example by example into one batch [B * n, ...]."""
    return join_examples([frame[:, None] for frame in frames])


def split_frames(joined: Any, n: int) -> list:
    """The inverse of `join_frames`: [B * n, ...] -> n arrays [B, ...]."""
    return [part[:, 0] for part in split_examples(joined, [1] * n)]
