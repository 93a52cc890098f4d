"""Small building blocks shared by the stage-1 networks: convolutions with logical axis names, GroupNorm residual
blocks and down/up-sampling blocks in 2D and 3D, all channels-last.

Every kernel carries logical axis names so that the trainer can shard parameters with rules from the config
(`conv_in`/`conv_out` for convolutions, `embed`/`mlp` for dense layers). Norm scales and biases stay replicated.
Block outputs are constrained to the batch sharding (`batch_sharded`) when the trainer traces them on a mesh.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def config_from_mapping(cls, config: Any, what: str):
    """A frozen dataclass of model sizes from a config section, refusing keys it does not know (a typo in a
    config fails at start-up instead of silently keeping a default)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(config)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown {what} config keys: {unknown}; known keys: {sorted(fields)}")
    return cls(**values)


BATCH = "batch"  # the logical name of every activation's leading axis; the trainer maps it to the batch mesh axes


def batch_sharded(x):
    """x with its leading axis constrained to the logical `BATCH` sharding: a no-op unless the trainer traces the
    model with a mesh and logical rules set (`vasa_jax.train.sharding.activation_context`).

    Without it the partitioner may meet a convolution whose kernel is split over the fsdp axis by resharding the
    activations instead of gathering the (much smaller) kernel: measured on the stage-1 step, all-gathers of whole
    batches of feature maps to every device. With the blocks' outputs pinned to the batch split, every device keeps
    its own examples and only kernels move."""
    return nn.with_logical_constraint(x, (BATCH,) + (None,) * (x.ndim - 1))


def conv_kernel_init(ndim: int):
    """He-style init for a conv kernel of `ndim` spatial dims, with logical axes (spatial..., conv_in, conv_out)."""
    axes = (None,) * ndim + ("conv_in", "conv_out")
    return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def bias_init():
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",))


def dense_bias_init():
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",))


def norm_init(value):
    return nn.with_logical_partitioning(value, ("norm",))


# On CPU, XLA's native 3D convolution runs at a fraction of its 2D convolution's speed (measured on a 2-core AVX-512
# machine, float32, 16x64x64 volumes: 37-150 GFLOP/s against about 470 for 2D); splitting the depth taps off as
# below runs 1.4-7x faster there, except with many channels on planes of a few pixels (the bottom of LivePortrait's
# hourglass: 512 -> 1024 channels on 4x4 planes, 1.3x slower; 1024 channels on 2x2, 100x slower).
def _native_is_faster(plane: int, channels_in: int, channels_out: int) -> bool:
    return plane < 64 and channels_in * channels_out >= 256 * 256


def conv3d_same(x, kernel, lowering: str = "auto"):
    """A stride-1 'SAME' 3D convolution of x [B, D, H, W, C] with kernel [kd, kh, kw, C, O] (odd sizes).

    lowering: "native" (XLA's 3D convolution), "depth_split" (one 2D convolution over (H, W) whose output stacks
    the kd depth taps, then a shifted sum along depth: the same result up to float rounding) or "auto"
    (depth_split on CPU unless `_native_is_faster`, native elsewhere).
    """
    b, d, h, w, c = x.shape
    kd, kh, kw, _, features = kernel.shape
    kernel = kernel.astype(x.dtype)
    if lowering == "auto":
        use_split = jax.default_backend() == "cpu" and not _native_is_faster(h * w, c, features)
        lowering = "depth_split" if use_split else "native"
    if lowering == "native":
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    if lowering != "depth_split":
        raise ValueError(f"unknown conv3d lowering {lowering!r}; expected 'auto', 'native' or 'depth_split'")
    stacked = kernel.transpose(1, 2, 3, 0, 4).reshape(kh, kw, c, kd * features)
    y = jax.lax.conv_general_dilated(
        x.reshape(b * d, h, w, c), stacked, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(b, d, h, w, kd, features)
    pad = kd // 2
    y = jnp.pad(y, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0), (0, 0)))
    return sum(y[:, tap : tap + d, :, :, tap] for tap in range(kd))


class Conv3D(nn.Module):
    """A stride-1 'SAME' 3D convolution with nn.Conv's parameters (kernel [kd, kh, kw, in, out], bias), computed
    by `conv3d_same` (fast on CPU; one module on every backend, so checkpoints move between them)."""

    features: int
    kernel: int
    lowering: str = "auto"

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        k = self.kernel
        kernel = self.param("kernel", conv_kernel_init(3), (k, k, k, c, self.features))
        bias = self.param("bias", bias_init(), (self.features,))
        out = conv3d_same(x, kernel, self.lowering)
        return out + bias.astype(out.dtype)


def Conv(features: int, kernel: int, ndim: int, stride: int = 1, use_bias: bool = True, name: str | None = None):
    """A 'SAME'-padded 2D or 3D convolution with logically partitioned parameters."""
    if ndim == 3 and stride == 1 and use_bias:
        return Conv3D(features, kernel, name=name)
    return nn.Conv(
        features,
        kernel_size=(kernel,) * ndim,
        strides=(stride,) * ndim,
        padding="SAME",
        use_bias=use_bias,
        kernel_init=conv_kernel_init(ndim),
        bias_init=bias_init(),
        name=name,
    )


def Dense(features: int, name: str | None = None, zero_init: bool = False):
    """A dense layer with logically partitioned parameters; `zero_init` starts it at exactly zero output."""
    kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", "mlp")),
        bias_init=dense_bias_init(),
        name=name,
    )


def num_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= max_groups that divides `channels` (GroupNorm needs an exact split)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def GroupNorm(channels: int, name: str | None = None, max_groups: int = 32):
    return nn.GroupNorm(
        num_groups=num_groups(channels, max_groups),
        scale_init=norm_init(nn.initializers.ones_init()),
        bias_init=norm_init(nn.initializers.zeros_init()),
        name=name,
    )


class ResBlock(nn.Module):
    """Pre-activation residual block (GN-ReLU-conv x2) that keeps the channel count; `ndim` is 2 or 3."""

    ndim: int
    kernel: int = 3

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        h = nn.relu(GroupNorm(channels)(x))
        h = Conv(channels, self.kernel, self.ndim)(h)
        h = nn.relu(GroupNorm(channels)(h))
        h = Conv(channels, self.kernel, self.ndim)(h)
        return batch_sharded(x + h)


def pool(x, factors: Sequence[int]):
    """Average pooling over the spatial axes by integer `factors` (one per spatial axis)."""
    window = tuple(factors)
    return nn.avg_pool(x, window_shape=window, strides=window)


def upsample(x, factors: Sequence[int]):
    """Nearest-neighbour upsampling of the spatial axes by integer `factors`."""
    for axis, factor in enumerate(factors, start=1):
        if factor != 1:
            x = jnp.repeat(x, factor, axis=axis)
    return x


class DownBlock(nn.Module):
    """conv-GN-ReLU then average pooling by `factors` (default 2 on every spatial axis)."""

    features: int
    ndim: int
    factors: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x):
        factors = self.factors or (2,) * self.ndim
        x = Conv(self.features, 3, self.ndim)(x)
        x = nn.relu(GroupNorm(self.features)(x))
        return batch_sharded(pool(x, factors))


class UpBlock(nn.Module):
    """Nearest upsampling by `factors`, then conv-GN-ReLU."""

    features: int
    ndim: int
    factors: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x):
        factors = self.factors or (2,) * self.ndim
        x = upsample(x, factors)
        x = Conv(self.features, 3, self.ndim)(x)
        return batch_sharded(nn.relu(GroupNorm(self.features)(x)))


class Hourglass(nn.Module):
    """U-Net style encoder-decoder (3D or 2D) with skip concatenations; returns the full-resolution features
    concatenated with the input, as in face-vid2vid's dense motion network.

    `factors` are the per-level pooling factors per spatial axis, e.g. (1, 2, 2) for volumes whose depth is small.
    """

    ndim: int
    base_channels: int
    max_channels: int
    num_levels: int
    factors: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x):
        factors = tuple(self.factors or (2,) * self.ndim)
        x = batch_sharded(x)
        skips = [x]
        h = x
        for level in range(self.num_levels):
            channels = min(self.max_channels, self.base_channels * 2 ** (level + 1))
            h = DownBlock(channels, self.ndim, factors)(h)
            skips.append(h)
        h = skips.pop()
        for level in reversed(range(self.num_levels)):
            channels = min(self.max_channels, self.base_channels * 2**level)
            h = UpBlock(channels, self.ndim, factors)(h)
            h = jnp.concatenate([h, skips.pop()], axis=-1)
        return h


def soft_argmax_3d(heatmap_logits, temperature: float):
    """Keypoints as the expectation of (x, y, z) under a softmax over each channel's volume.

    heatmap_logits: [B, D, H, W, K] -> keypoints [B, K, 3] in [-1, 1], ordered (x, y, z) like the warp grids.
    """
    b, d, h, w, k = heatmap_logits.shape
    logits = heatmap_logits.reshape(b, d * h * w, k).astype(jnp.float32) / temperature
    probs = jax.nn.softmax(logits, axis=1).reshape(b, d, h, w, k)
    zs = jnp.linspace(-1.0, 1.0, d)
    ys = jnp.linspace(-1.0, 1.0, h)
    xs = jnp.linspace(-1.0, 1.0, w)
    x = jnp.einsum("bdhwk,w->bk", probs, xs)
    y = jnp.einsum("bdhwk,h->bk", probs, ys)
    z = jnp.einsum("bdhwk,d->bk", probs, zs)
    return jnp.stack([x, y, z], axis=-1)
