"""Metrics of talking-head videos as papers report them (issue 13): pure functions of embeddings and poses, with the
networks that make the embeddings elsewhere (`vasa_jax.models.syncnet`, ...).

LSE-D and LSE-C (VASA-1's S_D and S_C) follow SyncNet's reference evaluation: every 5-frame window of the video is
compared with the audio windows of the same frame shifted by -15..+15 frames (the audio embeddings padded with
zero vectors past either end), by Euclidean distance; the distances are averaged over the video's windows per
shift; LSE-D is the smallest mean distance, LSE-C the median of the means minus that smallest, and the AV offset
the shift where the smallest falls.
"""

from __future__ import annotations

import numpy as np

MAX_OFFSET = 15  # frames either side, SyncNet's search range


def sync_distances(video_embeddings: np.ndarray, audio_embeddings: np.ndarray,
                   max_offset: int = MAX_OFFSET) -> np.ndarray:
    """[T, D] window embeddings of the video and of the audio (window i of both covering the same 0.2 s) -> [T,
    2 * max_offset + 1] distances: entry (i, j) compares video window i with audio window i + j - max_offset (a
    zero vector past the ends, as the reference pads). torch's pairwise_distance adds 1e-6 to the difference
    before the norm; so does this."""
    video = np.asarray(video_embeddings, np.float64)
    audio = np.asarray(audio_embeddings, np.float64)
    if video.ndim != 2 or audio.shape != video.shape:
        raise ValueError(f"video and audio embeddings must both be [T, D] of one shape, got {video.shape} and "
                         f"{audio.shape}")
    padded = np.pad(audio, ((max_offset, max_offset), (0, 0)))
    width = 2 * max_offset + 1
    windows = np.stack([padded[j : j + len(video)] for j in range(width)], axis=1)  # [T, width, D]
    return np.linalg.norm(video[:, None, :] - windows + 1e-6, axis=-1)


def lse(distances: np.ndarray) -> dict:
    """[T, 2K + 1] distances (`sync_distances`) -> {"lse_d", "lse_c", "offset"}: the smallest mean distance over
    shifts, the median minus it, and the AV offset K - argmin in frames (positive when the audio comes earlier
    than the lips: the best-matching audio window of frame i is window i - offset)."""
    distances = np.asarray(distances, np.float64)
    if distances.ndim != 2 or distances.shape[1] % 2 == 0 or len(distances) == 0:
        raise ValueError(f"distances must be [T > 0, 2K + 1], got {distances.shape}")
    mean = distances.mean(axis=0)
    best = int(np.argmin(mean))
    return {"lse_d": float(mean[best]), "lse_c": float(np.median(mean) - mean[best]),
            "offset": distances.shape[1] // 2 - best}
