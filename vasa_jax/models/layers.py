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
import numpy as np


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


def conv_kernel_init(ndim: int, zero: bool = False):
    """He-style (or, with `zero`, all-zero) init for a conv kernel of `ndim` spatial dims, with logical axes
    (spatial..., conv_in, conv_out)."""
    axes = (None,) * ndim + ("conv_in", "conv_out")
    return nn.with_logical_partitioning(nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal(), axes)


def bias_init():
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",))


def dense_bias_init():
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",))


def norm_init(value):
    return nn.with_logical_partitioning(value, ("norm",))


# On CPU, XLA's native 3D convolution runs at a fraction of its 2D convolution's speed (measured on a 2-core AVX-512
# machine, float32, 16x64x64 volumes: 37-150 GFLOP/s against about 470 for 2D); splitting the depth taps off as
# below runs 1.4-7x faster there, except with many channels on planes of a few pixels (the bottom of LivePortrait's
# hourglass: 512 -> 1024 channels on 4x4 planes, 1.3x slower; 1024 channels on 2x2, 100x slower). Large planar
# kernels with many channels go through the FFT: LivePortrait's 7x7x7 mask convolution (142 -> 22 channels on
# 16x64x64, 140 GFLOP directly) takes 2.6x less time so (see `_conv2d_fft`).
def _native_is_faster(plane: int, channels_in: int, channels_out: int) -> bool:
    return plane < 64 and channels_in * channels_out >= 256 * 256


def _fft_is_faster(plane: int, kernel_shape) -> bool:
    kd, kh, kw, channels_in, channels_out = kernel_shape
    return plane >= 32 * 32 and kh * kw >= 49 and channels_in * kd * channels_out >= 128 * 128


def _dft_matrix(size: int, taps: int, bins: int):
    """[bins, taps] complex: the first `bins` frequencies of a length-`size` DFT of a signal nonzero on its first
    `taps` samples (a small kernel's transform as a matrix product, not an FFT of a mostly-zero array)."""
    return np.exp(-2j * np.pi * np.outer(np.arange(bins), np.arange(taps)) / size).astype(np.complex64)


def _conv2d_fft(x, kernel, tile: int = 32):
    """conv3d_same's 'fft' lowering of its planar part: the 'SAME' correlation of x [N, H, W, C] with kernel
    [kh, kw, C, O] through 2D Fourier transforms, in float32 (complex64) whatever x's dtype. The planes are cut
    into tiles of `tile` pixels (when it divides them), each transformed at tile + kernel - 1 and the tiles' full
    convolutions added where they overlap (overlap-add): the kernel's spectrum, which every frequency's product
    reads, is then small (at 64x64 with 32-pixel tiles: 2.4x faster than untiled, 2.6x faster than directly)."""
    n, h, w, c = x.shape
    kh, kw, _, features = kernel.shape
    tile_h, tile_w = (tile if h % tile == 0 else h), (tile if w % tile == 0 else w)
    size = (tile_h + kh - 1, tile_w + kw - 1)
    # A correlation is a convolution with the flipped kernel; the 'SAME' window starts kernel // 2 into it.
    flipped = kernel[::-1, ::-1].astype(jnp.complex64)
    kernel_f = jnp.einsum("ut,tvco->uvco", _dft_matrix(size[0], kh, size[0]),
                          jnp.einsum("vs,tsco->tvco", _dft_matrix(size[1], kw, size[1] // 2 + 1), flipped))
    rows, cols = h // tile_h, w // tile_w
    tiles = x.astype(jnp.float32).reshape(n, rows, tile_h, cols, tile_w, c).transpose(0, 1, 3, 2, 4, 5)
    tiles_f = jnp.fft.rfft2(tiles, s=size, axes=(3, 4))  # [N, rows, cols, u, v, C]
    out = jnp.fft.irfft2(jnp.einsum("nijuvc,uvco->nijuvo", tiles_f, kernel_f), s=size, axes=(3, 4))
    # Tile (i, j)'s full convolution covers rows i * tile_h .. + size[0]: its first tile_h rows land on tile row i,
    # the next tile_h on tile row i + 1, and so on (columns alike).
    spill_h, spill_w = -(-size[0] // tile_h), -(-size[1] // tile_w)
    full = 0
    for below in range(spill_h):
        for right in range(spill_w):
            part = out[:, :, :, tile_h * below:tile_h * (below + 1), tile_w * right:tile_w * (right + 1)]
            full = full + jnp.pad(part, ((0, 0), (below, spill_h - 1 - below), (right, spill_w - 1 - right),
                                         (0, tile_h - part.shape[3]), (0, tile_w - part.shape[4]), (0, 0)))
    full = full.transpose(0, 1, 3, 2, 4, 5).reshape(
        n, (rows + spill_h - 1) * tile_h, (cols + spill_w - 1) * tile_w, features)
    return full[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w].astype(x.dtype)


def conv3d_same(x, kernel, lowering: str = "auto", upsample: int = 1):
    """A stride-1 'SAME' 3D convolution of x [B, D, H, W, C] with kernel [kd, kh, kw, C, O] (odd sizes).

    lowering: "native" (XLA's 3D convolution), "depth_split" (one 2D convolution over (H, W) whose output stacks
    the kd depth taps, then a shifted sum along depth: the same result up to float rounding), "fft" (as
    depth_split, its 2D convolution through the Fourier transform) or "auto" (on CPU: fft where `_fft_is_faster`,
    native where `_native_is_faster`, depth_split otherwise; native elsewhere).
    upsample: convolve x nearest-upsampled by this factor along H and W (an hourglass's up block). depth_split
    computes it at x's resolution (`conv_of_upsampled`: 4/9 of the multiply-adds at factor 2); the other
    lowerings upsample first.
    """
    b, d, h, w, c = x.shape
    kd, kh, kw, _, features = kernel.shape
    if lowering == "auto":
        lowering = "native"
        if jax.default_backend() == "cpu":
            if _fft_is_faster(h * w * upsample**2, kernel.shape):
                lowering = "fft"
            elif not _native_is_faster(h * w * upsample**2, c, features):
                lowering = "depth_split"
    if lowering not in ("native", "depth_split", "fft"):
        raise ValueError(f"unknown conv3d lowering {lowering!r}; expected 'auto', 'native', 'depth_split' or 'fft'")
    if upsample > 1 and (lowering != "depth_split" or kh != kw):
        x = jnp.repeat(jnp.repeat(x, upsample, axis=2), upsample, axis=3)
        h, w = h * upsample, w * upsample
        upsample = 1
    if lowering == "native":
        return jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    stacked = kernel.transpose(1, 2, 3, 0, 4).reshape(kh, kw, c, kd * features)
    planes = x.reshape(b * d, h, w, c)
    if lowering == "fft":
        y = _conv2d_fft(planes, stacked)
    else:
        y = conv_of_upsampled(planes, stacked, upsample)
    y = y.reshape(b, d, h * upsample, w * upsample, kd, features)
    pad = kd // 2
    y = jnp.pad(y, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0), (0, 0)))
    return sum(y[:, tap : tap + d, :, :, tap] for tap in range(kd))


def conv2d_same(x, kernel):
    """XLA's stride-1 'SAME' 2D convolution of x [B, H, W, C] with kernel [kh, kw, C, O], in x's dtype."""
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _phase_taps(factor: int, kernel: int):
    """For a 'SAME' convolution (odd `kernel`, padding kernel // 2) of an input upsampled by `factor` (nearest),
    output phase a (output index i * factor + a) reads the input pixels of coarse offsets lo..hi from i:
    returns, per phase, (lo, matrix [hi - lo + 1, kernel]) whose entry [o, t] is 1 where tap t lands on offset
    lo + o."""
    pad = kernel // 2
    phases = []
    for a in range(factor):
        offsets = [(a + t - pad) // factor for t in range(kernel)]
        lo, hi = min(offsets), max(offsets)
        matrix = np.zeros((hi - lo + 1, kernel), np.float32)
        matrix[np.array(offsets) - lo, np.arange(kernel)] = 1.0
        phases.append((lo, matrix))
    return phases


def conv_of_upsampled(x, kernel, factor: int):
    """conv(nearest_upsample(x, factor), kernel) ('SAME', stride 1, odd square kernel [k, k, C, O]) computed at
    x's resolution: each output phase (row and column offset modulo `factor`) is a small convolution of x with the
    kernel's taps summed where they fall on the same input pixel. For a 3x3 kernel that is 4/9 of the multiply-adds
    at factor 2 and 1/4 at factor 4 (LivePortrait's SPADE layers read their 64x64 segmentation map at 128 and 256);
    the same result up to float rounding. x [B, h, w, C] -> [B, h * factor, w * factor, O]."""
    if factor == 1:
        return conv2d_same(x, kernel)
    b, h, w, _ = x.shape
    k, features = kernel.shape[0], kernel.shape[-1]
    phases = _phase_taps(factor, k)
    # Phases with the same offset range share one convolution, their kernels stacked along the output channels.
    groups = {}
    for a, (lo, matrix) in enumerate(phases):
        groups.setdefault((lo, matrix.shape[0]), []).append((a, matrix))
    rows = {}  # (row phase, column phase) -> [B, h, w, O]
    for (row_lo, row_taps), row_members in groups.items():
        for (col_lo, col_taps), col_members in groups.items():
            kernels = [jnp.einsum("at,bu,tuij->abij", jnp.asarray(rm), jnp.asarray(cm), kernel)
                       for _, rm in row_members for _, cm in col_members]
            stacked = jnp.concatenate(kernels, axis=-1).astype(x.dtype)
            out = jax.lax.conv_general_dilated(
                x, stacked, (1, 1),
                [(-row_lo, row_lo + row_taps - 1), (-col_lo, col_lo + col_taps - 1)],
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            for n, ((a, _), (c, _)) in enumerate((r, c) for r in row_members for c in col_members):
                rows[a, c] = out[..., n * features:(n + 1) * features]
    y = jnp.stack([jnp.stack([rows[a, c] for c in range(factor)], axis=3) for a in range(factor)], axis=2)
    return y.reshape(b, h * factor, w * factor, features)  # [B, h, a, w, c, O] -> rows i * factor + a


def conv2d_by_taps(x, kernel):
    """A stride-1 'SAME' 2D convolution (odd kernel [kh, kw, C, O]) as one matrix product of every pixel with
    every tap's weights ([C, kh * kw * O]), then a shifted sum over the taps. The same result up to float rounding;
    for few output channels and a wide kernel (LivePortrait's 7x7 occlusion map, 2272 -> 1 channels) XLA:CPU's
    convolution is a memory-bound matrix-vector product: 113 ms against 10 ms this way at 64x64."""
    b, h, w, c = x.shape
    kh, kw, _, features = kernel.shape
    per_tap = (x.reshape(b * h * w, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * features).astype(x.dtype))
    per_tap = per_tap.reshape(b, h, w, kh, kw, features)
    ph, pw = kh // 2, kw // 2
    per_tap = jnp.pad(per_tap, ((0, 0), (ph, ph), (pw, pw), (0, 0), (0, 0), (0, 0)))
    # Output pixel (i, j) takes tap (r, s) from input pixel (i + r - ph, j + s - pw), padded row i + r.
    return sum(per_tap[:, r : r + h, s : s + w, r, s] for r in range(kh) for s in range(kw))


def depthwise_conv2d(x, kernel):
    """A stride-1 'SAME' depthwise 2D convolution of x [B, H, W, C] with an odd kernel [kh, kw, 1, C] (nn.Conv's
    layout with feature_group_count=C), as the sum of the kh * kw shifted inputs scaled per channel: one fused
    elementwise loop. XLA:CPU's grouped convolution took 30x as long at ConvNeXt's 7x7 shapes (64x64x96: 78 ms
    against 2.4 ms). The same result up to float rounding."""
    h, w = x.shape[1:3]
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    kernel = kernel.astype(x.dtype)
    return sum(padded[:, r : r + h, s : s + w] * kernel[r, s, 0] for r in range(kh) for s in range(kw))


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


def Conv(features: int, kernel: int, ndim: int, stride: int = 1, use_bias: bool = True, name: str | None = None,
         zero_init: bool = False):
    """A 'SAME'-padded 2D or 3D convolution with logically partitioned parameters; `zero_init` starts it at exactly
    zero output."""
    if ndim == 3 and stride == 1 and use_bias and not zero_init:
        return Conv3D(features, kernel, name=name)
    return nn.Conv(
        features,
        kernel_size=(kernel,) * ndim,
        strides=(stride,) * ndim,
        padding="SAME",
        use_bias=use_bias,
        kernel_init=conv_kernel_init(ndim, zero_init),
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
