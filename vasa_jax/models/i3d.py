"""The Inflated 3D ConvNet (I3D; Carreira and Zisserman, 2017) in Flax, in the layout of the PyTorch port whose
Kinetics-400 weights FVD implementations load (`i3d_pretrained_400.pt`, a state dict of the InceptionI3d class of
the pytorch-i3d port), and its importer. FVD (`vasa_jax.video_metrics.fvd_features`) reads its 400 class logits.

Input [B, T, 224, 224, 3] RGB in [-1, 1]; output [B, 400], the logits of each time step averaged over time (as the
PyTorch FVD ports average them; T of at least 9 frames).

Padding follows TensorFlow's SAME rule, as the port computes it for every convolution and max pooling: a total of
max(k - s, 0) when the size divides by the stride s, else max(k - size % s, 0), the smaller half in front; max
pooling pads with zeros (it only ever follows a ReLU). BatchNorm epsilon 1e-3. Inference only.

The parameter tree mirrors the checkpoint's names (`Mixed_3b.b1b.conv3d.weight` is `Mixed_3b/b1b/conv3d/kernel`),
so the weights import with `torch_import.import_mirrored_state_dict`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models.layers import conv3d_same
from vasa_jax.models.torch_import import import_mirrored_state_dict, load_torch_state_dict

NUM_CLASSES = 400
INPUT_SIZE = 224
MIN_FRAMES = 9  # the shortest clip whose last feature map still spans the 2-step temporal average pool

# (name, output channels of branches 0, 1a, 1b, 2a, 2b, 3b) of the Inception modules, with the max pools between
# them: ("pool", name, window, stride).
_STAGES = (
    ("pool", "MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("pool", "MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("pool", "MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


def same_padding(sizes: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> list:
    """TensorFlow's SAME padding [(front, back)] per dimension, as the port computes it."""
    pads = []
    for size, k, s in zip(sizes, window, strides):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def max_pool_same(x, window: Sequence[int], strides: Sequence[int]):
    """Max pooling of x [B, T, H, W, C] after zero padding to SAME (the port's MaxPool3dSamePadding)."""
    pads = same_padding(x.shape[1:4], window, strides)
    x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)])
    return nn.max_pool(x, tuple(window), strides=tuple(strides))


class _Conv3d(nn.Module):
    """The port's Conv3d (weights only; `conv3d` in the checkpoint) with SAME padding."""

    features: int
    kernel: Sequence[int]
    stride: Sequence[int] = (1, 1, 1)
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), tuple(self.kernel) + (x.shape[-1], self.features))
        if tuple(self.stride) == (1, 1, 1) and all(k % 2 == 1 for k in self.kernel):
            y = conv3d_same(x, kernel)  # symmetric SAME: the fast CPU lowering applies
        else:
            pads = same_padding(x.shape[1:4], self.kernel, self.stride)
            y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), tuple(self.stride), pads,
                                             dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


class Unit3D(nn.Module):
    """Convolution, BatchNorm (eps 1e-3), ReLU: the port's Unit3D (`<name>.conv3d`, `<name>.bn`)."""

    features: int
    kernel: Sequence[int] = (1, 1, 1)
    stride: Sequence[int] = (1, 1, 1)

    @nn.compact
    def __call__(self, x):
        x = _Conv3d(self.features, self.kernel, self.stride, name="conv3d")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


class InceptionModule(nn.Module):
    """Four branches concatenated along channels: 1x1x1; 1x1x1 -> 3x3x3; 1x1x1 -> 3x3x3; 3x3x3 max pool -> 1x1x1."""

    channels: Sequence[int]

    @nn.compact
    def __call__(self, x):
        c = self.channels
        b0 = Unit3D(c[0], name="b0")(x)
        b1 = Unit3D(c[2], (3, 3, 3), name="b1b")(Unit3D(c[1], name="b1a")(x))
        b2 = Unit3D(c[4], (3, 3, 3), name="b2b")(Unit3D(c[3], name="b2a")(x))
        b3 = Unit3D(c[5], name="b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
    """[B, T, 224, 224, 3] in [-1, 1] -> Kinetics-400 logits [B, 400] (averaged over the remaining time steps)."""

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, video):
        if video.ndim != 5 or video.shape[-1] != 3 or video.shape[1] < MIN_FRAMES:
            raise ValueError(f"I3D reads [B, T >= {MIN_FRAMES}, H, W, 3] videos, got {video.shape}")
        x = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(video)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = Unit3D(64, name="Conv3d_2b_1x1")(x)
        x = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
        for stage in _STAGES:
            if stage[0] == "pool":
                x = max_pool_same(x, stage[2], stage[3])
            else:
                x = InceptionModule(stage[1], name=stage[0])(x)
        if x.shape[2] < 7 or x.shape[3] < 7:
            raise ValueError(f"I3D's 7x7 average pool needs {INPUT_SIZE}x{INPUT_SIZE} input, got {video.shape[2:4]}")
        x = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1))  # dropout before the logits: identity at inference
        x = _Logits(self.num_classes, name="logits")(x)
        return x.mean(axis=(1, 2, 3))


class _Logits(nn.Module):
    """The port's `logits` Unit3D: a biased 1x1x1 convolution without BatchNorm or activation."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        return _Conv3d(self.num_classes, (1, 1, 1), use_bias=True, name="conv3d")(x)


def load_i3d(path: str) -> dict:
    """`i3d_pretrained_400.pt` (the port's Kinetics-400 state dict; or a .safetensors of the same keys) -> variables
    for InceptionI3d. Read without torch and without running pickled code; nothing is downloaded."""
    state_dict = load_torch_state_dict(path, what="I3D's i3d_pretrained_400.pt (a state dict of Conv3d_1a_7x7.*, "
                                                   "Mixed_*.*, logits.*)")
    expected = jax.eval_shape(lambda v: InceptionI3d().init(jax.random.PRNGKey(0), v),
                              jax.ShapeDtypeStruct((1, MIN_FRAMES, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
    return import_mirrored_state_dict(state_dict, expected, "I3D (i3d_pretrained_400.pt)")
