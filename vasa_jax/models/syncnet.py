"""SyncNet (Chung and Zisserman, 2016) in Flax, and an importer for the published `syncnet_v2.model` weights: the
network behind the LSE-C / LSE-D lip-sync scores (VASA-1's S_C and S_D) that talking-head papers report.

Two towers map a 0.2 s window to a 1024-d embedding each:
* audio: 13 MFCCs x 20 steps (100 Hz) [N, 13, 20] -> conv 3x3 stack with BatchNorm and max pooling -> 512 -> MLP;
* lips: 5 RGB frames of the 224x224 face crop, BGR order and 0-255 values as the reference feeds them
  [N, 5, 224, 224, 3] -> a 5x7x7 3D conv over the window, then 1xkxk convs and pooling -> 512 -> MLP.
Matching windows have nearby embeddings; `vasa_jax.video_metrics.lse` turns the distances into the scores.

The parameter tree mirrors the checkpoint's names (`netcnnaud.0` is `netcnnaud_0`), so the weights import with
`torch_import.import_mirrored_state_dict`. Inference only: BatchNorm uses the stored statistics.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models.torch_import import import_mirrored_state_dict, load_torch_state_dict

EMBEDDING_DIM = 1024
NUM_MFCC, MFCC_STEPS = 13, 20  # one window: 0.2 s of 100 Hz MFCCs
NUM_FRAMES, CROP_SIZE = 5, 224  # one window: 0.2 s of 25 fps video


def _conv(features, kernel, name, stride=1, padding=0):
    ndim = len(kernel)
    stride = (stride,) * ndim if isinstance(stride, int) else stride
    padding = (padding,) * ndim if isinstance(padding, int) else padding
    return nn.Conv(features, kernel, strides=stride, padding=[(p, p) for p in padding], name=name)


def _norm(name):
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, name=name)


def _embedding_head(x, prefix):
    """Linear 512, BatchNorm, ReLU, Linear 1024 (the checkpoint's `<prefix>.0`, `.1`, `.3`)."""
    x = nn.relu(_norm(f"{prefix}_1")(nn.Dense(512, name=f"{prefix}_0")(x)))
    return nn.Dense(EMBEDDING_DIM, name=f"{prefix}_3")(x)


class SyncNet(nn.Module):
    """Use through `apply(variables, mfcc, method="embed_audio")`, `apply(variables, frames, method="embed_lips")`;
    `init(rng, mfcc, frames, method="embed_both")` creates both towers."""

    @nn.compact
    def __call__(self, x, tower: str):
        if tower == "audio":
            return self._audio_tower(x)
        if tower == "lips":
            return self._lip_tower(x)
        raise ValueError(f"tower {tower!r}: 'audio' or 'lips'")

    def embed_audio(self, mfcc):
        """[N, 13, 20] MFCC windows -> [N, 1024]."""
        return self(mfcc, "audio")

    def embed_lips(self, frames):
        """[N, 5, 224, 224, 3] windows of face crops (BGR, 0-255) -> [N, 1024]."""
        return self(frames, "lips")

    def embed_both(self, mfcc, frames):
        return self(mfcc, "audio"), self(frames, "lips")

    @staticmethod
    def _audio_tower(mfcc):
        x = mfcc[..., None]
        layers = [  # (index of the conv in the checkpoint's Sequential, features, kernel, padding, max pool after)
            (0, 64, (3, 3), 1, None), (4, 192, (3, 3), 1, ((3, 3), (1, 2))), (8, 384, (3, 3), 1, None),
            (11, 256, (3, 3), 1, None), (14, 256, (3, 3), 1, ((3, 3), (2, 2))), (18, 512, (5, 4), 0, None),
        ]
        for index, features, kernel, padding, pool in layers:
            x = _conv(features, kernel, f"netcnnaud_{index}", padding=padding)(x)
            x = nn.relu(_norm(f"netcnnaud_{index + 1}")(x))
            if pool is not None:
                x = nn.max_pool(x, pool[0], strides=pool[1])
        return _embedding_head(x.reshape(x.shape[0], -1), "netfcaud")

    @staticmethod
    def _lip_tower(frames):
        x = frames
        layers = [  # (conv index, features, kernel, stride, padding, (window, stride, padding) of the max pool)
            (0, 96, (5, 7, 7), (1, 2, 2), 0, ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
            (4, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1))),
            (8, 256, (1, 3, 3), 1, (0, 1, 1), None),
            (11, 256, (1, 3, 3), 1, (0, 1, 1), None),
            (14, 256, (1, 3, 3), 1, (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
            (18, 512, (1, 6, 6), 1, 0, None),
        ]
        for index, features, kernel, stride, padding, pool in layers:
            x = _conv(features, kernel, f"netcnnlip_{index}", stride=stride, padding=padding)(x)
            x = nn.relu(_norm(f"netcnnlip_{index + 1}")(x))
            if pool is not None:
                window, strides, pads = pool
                x = nn.max_pool(x, window, strides=strides, padding=[(p, p) for p in pads])
        return _embedding_head(x.reshape(x.shape[0], -1), "netfclip")


def load_syncnet(path: str) -> dict:
    """`syncnet_v2.model` (the published state dict; or a .safetensors of the same keys) -> variables for SyncNet.
    Read without torch and without running pickled code; nothing is downloaded."""
    state_dict = load_torch_state_dict(path, what="SyncNet's syncnet_v2.model (a state dict of netcnnaud.*, "
                                                   "netfcaud.*, netcnnlip.*, netfclip.*)")
    expected = jax.eval_shape(
        lambda mfcc, frames: SyncNet().init(jax.random.PRNGKey(0), mfcc, frames, method="embed_both"),
        jax.ShapeDtypeStruct((1, NUM_MFCC, MFCC_STEPS), jnp.float32),
        jax.ShapeDtypeStruct((1, NUM_FRAMES, CROP_SIZE, CROP_SIZE, 3), jnp.float32))
    return import_mirrored_state_dict(state_dict, expected, "SyncNet (syncnet_v2.model)")
