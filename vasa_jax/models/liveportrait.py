"""LivePortrait's renderer in Flax, and an importer for its published PyTorch checkpoints.

LivePortrait (Guo et al., 2024) is an implicit-keypoint renderer of the face-vid2vid family, the same family as our
own stage 1 (`vasa_jax.models.stage1`), with public weights that work on photos, paintings and statues. Its five
networks, written here from the architecture that the published checkpoint layout and the paper define:

* F, the appearance feature extractor: a 256x256 photo -> a 3D feature volume [B, 16, 64, 64, 32].
* M, the motion extractor: a ConvNeXt-V2-tiny over the photo -> 21 canonical keypoints, head pose (66-bin
  classifications of pitch, yaw and roll), translation, an expression deformation of each keypoint and a scale.
* W, the warping module: a dense-motion hourglass turns source and driving keypoints into a 3D deformation and an
  occlusion map; the warped volume is flattened to a 2D feature map.
* G, the SPADE decoder: the warped features -> a 512x512 image (pixel shuffle at the end).
* S and R, three MLPs: stitching (keeps the shoulders and the paste-back region still) and the eye and lip
  retargeting.

The parameter tree mirrors the checkpoints' names (a torch `down_blocks.0` is Flax's `down_blocks_0`, the name
Flax gives the i-th member of a submodule list), so that the importer is `torch_import.import_mirrored_state_dict`:
one mapping rule plus a check that every tensor lands somewhere and every parameter is filled. Arrays are channels-last; images are RGB in [0, 1].

Keypoint conventions are LivePortrait's, not our stage 1's: a pose vector is (pitch, yaw, roll in degrees, tx, ty,
tz, scale) and the driving keypoints are x = scale * (x_c @ R + exp) + (tx, ty, 0), with R the transpose of
R_z(roll) R_y(yaw) R_x(pitch) and the angle of a 66-bin head-pose classification 3 E[bin] - 97.5.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax import ops
from vasa_jax.models.layers import (config_from_mapping, conv2d_by_taps, conv2d_same, conv3d_same,
                                    conv_of_upsampled, depthwise_conv2d)
from vasa_jax.models.torch_import import import_mirrored_state_dict, load_torch_state_dict

NUM_POSE_BINS = 66


@dataclasses.dataclass(frozen=True)
class LivePortraitConfig:
    """Sizes of the five networks. The defaults are the published model's (LivePortrait's models.yaml); tests use
    narrower ones. F, W and G share block_expansion, max_features, num_down_blocks and the volume's shape, as the
    published configuration does."""

    image_size: int = 256  # the photo F and M read (the published weights: 256); the output is upscale times it
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    volume_channels: int = 32  # F's 2D features [.., max_features] are reshaped to [.., depth, volume_channels]
    volume_depth: int = 16
    num_resblocks: int = 6
    num_keypoints: int = 21
    convnext_depths: tuple[int, ...] = (3, 3, 9, 3)
    convnext_dims: tuple[int, ...] = (96, 192, 384, 768)
    dense_block_expansion: int = 32
    dense_max_features: int = 1024
    dense_num_blocks: int = 5
    dense_compress: int = 4
    dense_keypoint_variance: float = 0.01
    estimate_occlusion: bool = True
    decoder_upscale: int = 2  # 256 -> 512
    decoder_out_channels: int = 64
    spade_hidden: int = 128
    stitching_hidden: tuple[int, ...] = (128, 128, 64)
    lip_hidden: tuple[int, ...] = (128, 128, 64)
    eye_hidden: tuple[int, ...] = (256, 256, 128, 128, 64)

    def __post_init__(self):
        if self.volume_channels * self.volume_depth != self.max_features:
            raise ValueError(
                f"volume_channels * volume_depth ({self.volume_channels} * {self.volume_depth}) must equal "
                f"max_features ({self.max_features}): F reshapes its 2D features into the volume"
            )

    @property
    def output_size(self) -> int:
        return self.image_size * max(self.decoder_upscale, 1)

    @property
    def dynamics_dim(self) -> int:
        """What drives a render beside the pose: the expression deformation of every keypoint."""
        return 3 * self.num_keypoints

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LivePortraitConfig":
        """From a config section (lists become tuples: the config is a Flax module attribute, so hashable)."""
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in dict(config).items()}
        return config_from_mapping(cls, values, "LivePortrait model")


# ---------------------------------------------------------------------------------------------------------------
# Building blocks (torch semantics: BatchNorm eps 1e-5, LeakyReLU 0.01 unless given, nearest upsampling)
# ---------------------------------------------------------------------------------------------------------------

class Conv3d(nn.Module):
    """A stride-1 3D convolution padded by kernel // 2 (torch's padding of LivePortrait's 3D convolutions, 'SAME'
    for odd kernels) with nn.Conv's parameters, computed by `conv3d_same`: several times faster on CPU. With
    `upsample`, of x nearest-upsampled by that factor along H and W."""

    features: int
    kernel: int
    upsample: int = 1

    @nn.compact
    def __call__(self, x):
        shape = (self.kernel,) * 3 + (x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        out = conv3d_same(x, kernel, upsample=self.upsample)
        return out + bias.astype(out.dtype)


def _conv(features, kernel, ndim, name, *, padding=None, stride=1, use_bias=True):
    pad = kernel // 2 if padding is None else padding
    if ndim == 3 and kernel % 2 and pad == kernel // 2 and stride == 1 and use_bias:
        return Conv3d(features, kernel, name=name)
    return nn.Conv(features, (kernel,) * ndim, strides=(stride,) * ndim, padding=[(pad, pad)] * ndim,
                   use_bias=use_bias, name=name)


class ConvParams(nn.Module):
    """The parameters of an nn.Conv (kernel [k, k, in, out], bias or None), for a convolution computed by other
    means."""

    features: int
    kernel: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, channels_in: int):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel, self.kernel, channels_in, self.features))
        if not self.use_bias:
            return kernel, None
        return kernel, self.param("bias", nn.initializers.zeros, (self.features,))


def _batch_norm(name):
    # torch's momentum 0.1 is Flax's 0.9. Flax keeps the biased batch variance as the running one where torch
    # keeps the unbiased: the two differ only while fine-tuning, by a factor n / (n - 1).
    return nn.BatchNorm(momentum=0.9, epsilon=1e-5, name=name)


def _repeat_hw(x, factor):
    """Nearest upsampling of the two axes before channels by an integer factor (torch `interpolate`)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=-3), factor, axis=-2)


def _resize_nearest_hw(x, height, width):
    """torch `interpolate(mode="nearest")` of [B, H, W, C] to (height, width): source index floor(i * in / out)."""
    rows = (np.arange(height) * x.shape[1]) // height
    cols = (np.arange(width) * x.shape[2]) // width
    return x[:, rows][:, :, cols]


def _instance_norm(x, eps=1e-5):
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def _volume_to_map(volume):
    """[B, D, H, W, C] -> [B, H, W, C * D] in torch's `view(b, c * d, h, w)` channel order (c major)."""
    b, d, h, w, c = volume.shape
    return volume.transpose(0, 2, 3, 4, 1).reshape(b, h, w, c * d)


class SameBlock2d(nn.Module):
    features: int
    leaky: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv(self.features, 3, 2, "conv")(x)
        x = _batch_norm("norm")(x, use_running_average=not train)
        return nn.leaky_relu(x, 0.01) if self.leaky else nn.relu(x)


class DownBlock(nn.Module):
    """conv, BatchNorm, ReLU, 2x average pooling of H and W (2D, or 3D keeping the depth)."""

    features: int
    ndim: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv(self.features, 3, self.ndim, "conv")(x)
        x = nn.relu(_batch_norm("norm")(x, use_running_average=not train))
        window = (2, 2) if self.ndim == 2 else (1, 2, 2)
        return nn.avg_pool(x, window, strides=window)


class UpBlock3d(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        # The convolution of the 2x upsampled input, computed at the input's resolution (4/9 of the work).
        x = Conv3d(self.features, 3, upsample=2, name="conv")(x)
        return nn.relu(_batch_norm("norm")(x, use_running_average=not train))


class ResBlock3d(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = x.shape[-1]
        y = nn.relu(_batch_norm("norm1")(x, use_running_average=not train))
        y = _conv(channels, 3, 3, "conv1")(y)
        y = nn.relu(_batch_norm("norm2")(y, use_running_average=not train))
        return x + _conv(channels, 3, 3, "conv2")(y)


class ResBlocks3d(nn.Module):
    """F's residual blocks; the checkpoint names them `3dr0`, `3dr1`, ..."""

    num_blocks: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.num_blocks):
            x = ResBlock3d(name=f"3dr{i}")(x, train)
        return x


# ---------------------------------------------------------------------------------------------------------------
# F: appearance feature extractor
# ---------------------------------------------------------------------------------------------------------------

class AppearanceFeatureExtractor(nn.Module):
    cfg: LivePortraitConfig

    @nn.compact
    def __call__(self, image, train: bool = False):
        """image [B, S, S, 3] in [0, 1] -> volume [B, depth, S / 4, S / 4, volume_channels] (S = 256: 64x64)."""
        cfg = self.cfg
        x = SameBlock2d(cfg.block_expansion, name="first")(image, train)
        for i in range(cfg.num_down_blocks):
            x = DownBlock(min(cfg.max_features, cfg.block_expansion * 2 ** (i + 1)), 2, name=f"down_blocks_{i}")(
                x, train)
        x = _conv(cfg.max_features, 1, 2, "second")(x)
        b, h, w, _ = x.shape
        # torch's view(b, channels, depth, h, w): channel index c * depth + d.
        volume = x.reshape(b, h, w, cfg.volume_channels, cfg.volume_depth).transpose(0, 4, 1, 2, 3)
        return ResBlocks3d(cfg.num_resblocks, name="resblocks_3d")(volume, train)


# ---------------------------------------------------------------------------------------------------------------
# M: motion extractor (ConvNeXt-V2)
# ---------------------------------------------------------------------------------------------------------------

def _layer_norm(name):
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name=name)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN: each channel scaled by its spatial L2 norm over the channels' mean norm."""

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.zeros, (1, 1, 1, dim))
        beta = self.param("beta", nn.initializers.zeros, (1, 1, 1, dim))
        norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True))
        normalised = norm / (jnp.mean(norm, axis=-1, keepdims=True) + 1e-6)
        return gamma * (x * normalised) + beta + x


class ConvNeXtBlock(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        kernel, bias = ConvParams(self.dim, 7, name="dwconv")(1)  # depthwise: [7, 7, 1, dim]
        y = depthwise_conv2d(x, kernel) + bias.astype(x.dtype)
        y = _layer_norm("norm")(y)
        y = nn.gelu(nn.Dense(4 * self.dim, name="pwconv1")(y), approximate=False)
        y = GlobalResponseNorm(name="grn")(y)
        return x + nn.Dense(self.dim, name="pwconv2")(y)


class MotionOutputs(NamedTuple):
    """M's raw outputs: canonical keypoints [B, 3K], pose bin logits [B, 66] each, translation [B, 3],
    expression deformation [B, 3K], scale [B, 1]."""

    kp: Any
    pitch: Any
    yaw: Any
    roll: Any
    t: Any
    exp: Any
    scale: Any


class ConvNeXtV2(nn.Module):
    cfg: LivePortraitConfig

    @nn.compact
    def __call__(self, image):
        cfg = self.cfg
        dims, depths = cfg.convnext_dims, cfg.convnext_depths
        x = _conv(dims[0], 4, 2, "downsample_layers_0_0", padding=0, stride=4)(image)
        x = _layer_norm("downsample_layers_0_1")(x)
        for i in range(len(dims)):
            if i > 0:
                x = _layer_norm(f"downsample_layers_{i}_0")(x)
                x = _conv(dims[i], 2, 2, f"downsample_layers_{i}_1", padding=0, stride=2)(x)
            for j in range(depths[i]):
                x = ConvNeXtBlock(dims[i], name=f"stages_{i}_{j}")(x)
        x = _layer_norm("norm")(jnp.mean(x, axis=(1, 2)))
        k3 = 3 * cfg.num_keypoints
        return MotionOutputs(
            kp=nn.Dense(k3, name="fc_kp")(x),
            pitch=nn.Dense(NUM_POSE_BINS, name="fc_pitch")(x),
            yaw=nn.Dense(NUM_POSE_BINS, name="fc_yaw")(x),
            roll=nn.Dense(NUM_POSE_BINS, name="fc_roll")(x),
            t=nn.Dense(3, name="fc_t")(x),
            exp=nn.Dense(k3, name="fc_exp")(x),
            scale=nn.Dense(1, name="fc_scale")(x),
        )


class MotionExtractor(nn.Module):
    cfg: LivePortraitConfig

    @nn.compact
    def __call__(self, image) -> MotionOutputs:
        """image [B, S, S, 3] in [0, 1] -> MotionOutputs."""
        return ConvNeXtV2(self.cfg, name="detector")(image)


# ---------------------------------------------------------------------------------------------------------------
# W: warping module (dense motion hourglass + flattening of the warped volume)
# ---------------------------------------------------------------------------------------------------------------

class HourglassEncoder(nn.Module):
    block_expansion: int
    num_blocks: int
    max_features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        outs = [x]
        for i in range(self.num_blocks):
            features = min(self.max_features, self.block_expansion * 2 ** (i + 1))
            outs.append(DownBlock(features, 3, name=f"down_blocks_{i}")(outs[-1], train))
        return outs


class HourglassDecoder(nn.Module):
    block_expansion: int
    num_blocks: int
    max_features: int

    @nn.compact
    def __call__(self, skips, train: bool = False):
        skips = list(skips)
        out = skips.pop()
        for n, i in enumerate(reversed(range(self.num_blocks))):
            out = UpBlock3d(min(self.max_features, self.block_expansion * 2 ** i), name=f"up_blocks_{n}")(out, train)
            out = jnp.concatenate([out, skips.pop()], axis=-1)
        out = _conv(out.shape[-1], 3, 3, "conv")(out)
        return nn.relu(_batch_norm("norm")(out, use_running_average=not train))


class Hourglass(nn.Module):
    block_expansion: int
    num_blocks: int
    max_features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        sizes = (self.block_expansion, self.num_blocks, self.max_features)
        return HourglassDecoder(*sizes, name="decoder")(HourglassEncoder(*sizes, name="encoder")(x, train), train)


class DenseMotion(NamedTuple):
    deformation: Any  # [B, D, H, W, 3] sampling grid into the source volume
    occlusion: Any  # [B, H, W, 1] or None
    mask: Any  # [B, D, H, W, K + 1] softmax weights of the background and each keypoint's motion


class DenseMotionNetwork(nn.Module):
    cfg: LivePortraitConfig

    @nn.compact
    def __call__(self, volume, kp_driving, kp_source, train: bool = False) -> DenseMotion:
        cfg = self.cfg
        feature = _conv(cfg.dense_compress, 1, 3, "compress")(volume)
        feature = nn.relu(_batch_norm("norm")(feature, use_running_average=not train))
        b, d, h, w, c = feature.shape
        k = kp_driving.shape[1]
        identity = ops.make_coordinate_grid_3d(d, h, w, dtype=jnp.float32)
        # Each keypoint's motion is a translation taking the driving keypoint to the source one; the background's
        # is the identity.
        shifted = (identity[None, None] - kp_driving[:, :, None, None, None, :]
                   + kp_source[:, :, None, None, None, :])
        sparse = jnp.concatenate([jnp.broadcast_to(identity, (b, 1, d, h, w, 3)), shifted], axis=1)
        # Sampling the one volume at K + 1 grids stacked along depth avoids copying it K + 1 times.
        deformed = ops.grid_sample_3d(feature, sparse.reshape(b, (k + 1) * d, h, w, 3))
        deformed = deformed.reshape(b, k + 1, d, h, w, c).transpose(0, 2, 3, 4, 1, 5)  # [B, D, H, W, K+1, C]
        heatmap = (ops.keypoints_to_gaussian_volume(kp_driving, (d, h, w), cfg.dense_keypoint_variance)
                   - ops.keypoints_to_gaussian_volume(kp_source, (d, h, w), cfg.dense_keypoint_variance))
        heatmap = jnp.concatenate([jnp.zeros_like(heatmap[..., :1]), heatmap], axis=-1)
        # torch concatenates [heatmap, features] per keypoint, then flattens (keypoint major).
        inputs = jnp.concatenate([heatmap[..., None].astype(deformed.dtype), deformed], axis=-1)
        inputs = inputs.reshape(b, d, h, w, (k + 1) * (c + 1))
        prediction = Hourglass(cfg.dense_block_expansion, cfg.dense_num_blocks, cfg.dense_max_features,
                               name="hourglass")(inputs, train)
        mask = jax.nn.softmax(_conv(k + 1, 7, 3, "mask")(prediction).astype(jnp.float32), axis=-1)
        deformation = jnp.einsum("bdhwk,bkdhwi->bdhwi", mask, sparse)
        occlusion = None
        if cfg.estimate_occlusion:
            # One output channel from 2272 through a 7x7 kernel: computed tap by tap (`conv2d_by_taps`).
            kernel, bias = ConvParams(1, 7, name="occlusion")(prediction.shape[-1] * prediction.shape[1])
            occlusion = conv2d_by_taps(_volume_to_map(prediction), kernel)
            occlusion = jax.nn.sigmoid(occlusion + bias.astype(occlusion.dtype))
        return DenseMotion(deformation, occlusion, mask)


class WarpOutputs(NamedTuple):
    features: Any  # [B, 64, 64, block_expansion * 2**num_down_blocks], what G decodes
    deformation: Any
    occlusion: Any


class WarpingNetwork(nn.Module):
    cfg: LivePortraitConfig

    @nn.compact
    def __call__(self, volume, kp_driving, kp_source, train: bool = False) -> WarpOutputs:
        cfg = self.cfg
        motion = DenseMotionNetwork(cfg, name="dense_motion_network")(volume, kp_driving, kp_source, train)
        warped = _volume_to_map(ops.grid_sample_3d(volume, motion.deformation))
        features = cfg.block_expansion * 2 ** cfg.num_down_blocks
        out = SameBlock2d(features, leaky=True, name="third")(warped, train)
        out = _conv(features, 1, 2, "fourth")(out)
        if motion.occlusion is not None:
            out = out * motion.occlusion
        return WarpOutputs(out, motion.deformation, motion.occlusion)


# ---------------------------------------------------------------------------------------------------------------
# G: SPADE decoder
# ---------------------------------------------------------------------------------------------------------------

def _conv_of_resized(x, kernel, size):
    """nn.Conv's 'SAME' 2D convolution (without bias) of x resized (nearest) to `size`, computed by
    `conv_of_upsampled` at x's resolution when `size` is an integer multiple of it."""
    (height, width), (h, w) = size, x.shape[1:3]
    if height % h == 0 and width % w == 0 and height // h == width // w:
        return conv_of_upsampled(x, kernel, height // h)
    return conv2d_same(_resize_nearest_hw(x, height, width), kernel)


class SPADE(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x, segmap, projection=None):
        """IN(x) * (1 + gamma) + beta, gamma and beta 3x3 convolutions of the segmentation map's features. With
        `projection` [C, O], that result times the projection (a 1x1 convolution after the normalisation), beta's
        convolution composed with it: beta then has O output channels instead of C (the learned shortcuts of G's
        up blocks: 512 -> 256 and 256 -> 64 channels, 4x fewer multiply-adds for beta in the last)."""
        # The segmentation map (G's 64x64 input) is read at x's resolution, up to 256: nearest upsampling then
        # a 3x3 convolution, computed at 64x64 per output phase (a quarter of the work at 256).
        kernel, bias = ConvParams(self.hidden, 3, name="mlp_shared_0")(segmap.shape[-1])
        actv = _conv_of_resized(segmap, kernel, x.shape[1:3])
        actv = nn.relu(actv + bias.astype(actv.dtype))
        gamma = _conv(x.shape[-1], 3, 2, "mlp_gamma")(actv)
        beta_kernel, beta_bias = ConvParams(x.shape[-1], 3, name="mlp_beta")(self.hidden)
        scaled = _instance_norm(x) * (1 + gamma)
        if projection is not None:
            projection = projection.astype(x.dtype)
            scaled = scaled @ projection
            beta_kernel, beta_bias = beta_kernel @ projection, beta_bias @ projection
        return scaled + conv2d_same(actv, beta_kernel) + beta_bias.astype(x.dtype)


class SPADEResnetBlock(nn.Module):
    """The checkpoint's convolutions carry spectral normalisation; the importer folds it into the weights."""

    features: int
    hidden: int

    @nn.compact
    def __call__(self, x, segmap):
        middle = min(x.shape[-1], self.features)
        if x.shape[-1] != self.features:
            # The learned shortcut's 1x1 convolution (no bias) is applied inside SPADE, composed with beta.
            projection, _ = ConvParams(self.features, 1, use_bias=False, name="conv_s")(x.shape[-1])
            shortcut = SPADE(self.hidden, name="norm_s")(x, segmap, projection=projection[0, 0])
        else:
            shortcut = x
        dx = _conv(middle, 3, 2, "conv_0")(nn.leaky_relu(SPADE(self.hidden, name="norm_0")(x, segmap), 0.2))
        dx = _conv(self.features, 3, 2, "conv_1")(nn.leaky_relu(SPADE(self.hidden, name="norm_1")(dx, segmap), 0.2))
        return shortcut + dx


def _pixel_shuffle(x, factor):
    """torch PixelShuffle for channels-last: channel c * r * r + i * r + j goes to row offset i, column j."""
    b, h, w, channels = x.shape
    c = channels // (factor * factor)
    x = x.reshape(b, h, w, c, factor, factor).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * factor, w * factor, c)


class SPADEDecoder(nn.Module):
    cfg: LivePortraitConfig

    @nn.compact
    def __call__(self, features):
        """features [B, 64, 64, C] from W -> image [B, 64 * 4 * upscale, ..., 3] in [0, 1]."""
        cfg = self.cfg
        width = min(cfg.max_features, cfg.block_expansion * 2 ** cfg.num_down_blocks)
        segmap = features
        x = _conv(2 * width, 3, 2, "fc")(features)
        for i in range(6):
            x = SPADEResnetBlock(2 * width, cfg.spade_hidden, name=f"G_middle_{i}")(x, segmap)
        x = SPADEResnetBlock(width, cfg.spade_hidden, name="up_0")(_repeat_hw(x, 2), segmap)
        x = SPADEResnetBlock(cfg.decoder_out_channels, cfg.spade_hidden, name="up_1")(_repeat_hw(x, 2), segmap)
        x = nn.leaky_relu(x, 0.2)
        if cfg.decoder_upscale > 1:
            r = cfg.decoder_upscale
            x = _pixel_shuffle(_conv(3 * r * r, 3, 2, "conv_img_0")(x), r)
        else:
            x = _conv(3, 3, 2, "conv_img")(x)
        return jax.nn.sigmoid(x)


# ---------------------------------------------------------------------------------------------------------------
# S and R: stitching and retargeting MLPs
# ---------------------------------------------------------------------------------------------------------------

class MLP(nn.Module):
    hidden: tuple[int, ...]
    out_features: int

    @nn.compact
    def __call__(self, x):
        # torch's Sequential interleaves ReLUs, so the Linear layers sit at the even indices.
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"mlp_{2 * i}")(x))
        return nn.Dense(self.out_features, name=f"mlp_{2 * len(self.hidden)}")(x)


class StitchingRetargeting(nn.Module):
    """The three MLPs under the names of the published checkpoint's entries."""

    cfg: LivePortraitConfig

    def setup(self):
        k3 = 3 * self.cfg.num_keypoints
        self.retarget_shoulder = MLP(self.cfg.stitching_hidden, k3 + 2)
        self.retarget_mouth = MLP(self.cfg.lip_hidden, k3)
        self.retarget_eye = MLP(self.cfg.eye_hidden, k3)

    def stitch(self, kp_source, kp_driving):
        """Keypoints [B, K, 3] -> the driving keypoints moved so that the region outside the face matches the
        source (the deformation's first 3K entries, then tx, ty)."""
        b, k, _ = kp_source.shape
        delta = self.retarget_shoulder(jnp.concatenate([kp_source.reshape(b, -1), kp_driving.reshape(b, -1)], -1))
        moved = kp_driving + delta[:, : 3 * k].reshape(b, k, 3)
        return moved.at[..., :2].add(delta[:, None, 3 * k: 3 * k + 2])

    def retarget_lip(self, kp_source, lip_close_ratio):
        """[B, K, 3], [B, 2] -> a keypoint deformation [B, K, 3] that sets the lip opening."""
        b, k, _ = kp_source.shape
        return self.retarget_mouth(jnp.concatenate([kp_source.reshape(b, -1), lip_close_ratio], -1)).reshape(b, k, 3)

    def retarget_eyes(self, kp_source, eye_close_ratio):
        """[B, K, 3], [B, 3] -> a keypoint deformation [B, K, 3] that sets the eye opening."""
        b, k, _ = kp_source.shape
        return self.retarget_eye(jnp.concatenate([kp_source.reshape(b, -1), eye_close_ratio], -1)).reshape(b, k, 3)

    def __call__(self, kp_source, kp_driving):
        b = kp_source.shape[0]
        return (self.stitch(kp_source, kp_driving), self.retarget_lip(kp_source, jnp.zeros((b, 2))),
                self.retarget_eyes(kp_source, jnp.zeros((b, 3))))


# ---------------------------------------------------------------------------------------------------------------
# Keypoint geometry (LivePortrait's conventions)
# ---------------------------------------------------------------------------------------------------------------

def headpose_degrees(logits):
    """66-bin logits -> degrees, 3 E[bin] - 97.5 (LivePortrait centres its bins half a bin above Hopenet's -99)."""
    return ops.headpose_bins_to_degrees(logits) + 1.5


def rotation_matrix(pitch, yaw, roll):
    """LivePortrait's rotation (R_z(roll) R_y(yaw) R_x(pitch))^T, degrees -> [B, 3, 3]. Transposing the product
    negates each angle and reverses the order, which is `ops.rotation_matrix` (R_x R_y R_z) of the negated
    angles."""
    return ops.rotation_matrix(-jnp.asarray(yaw), -jnp.asarray(pitch), -jnp.asarray(roll))


def pose_from_motion(motion: MotionOutputs):
    """MotionOutputs -> (canonical keypoints [B, K, 3], pose [B, 7] = pitch, yaw, roll, tx, ty, tz, scale,
    expression [B, 3K])."""
    b = motion.kp.shape[0]
    pose = jnp.concatenate([
        headpose_degrees(motion.pitch)[:, None], headpose_degrees(motion.yaw)[:, None],
        headpose_degrees(motion.roll)[:, None], motion.t, motion.scale,
    ], axis=-1)
    return motion.kp.reshape(b, -1, 3), pose, motion.exp


def transform_keypoints(kp_canonical, pose, expression):
    """x = scale * (x_c @ R + exp) + (tx, ty, 0): [B, K, 3], [B, 7], [B, 3K] -> [B, K, 3], in float32 whatever the
    inputs' dtype (keypoint positions are warp coordinates)."""
    kp_canonical, pose, expression = (jnp.asarray(x, jnp.float32) for x in (kp_canonical, pose, expression))
    b, k, _ = kp_canonical.shape
    rotation = rotation_matrix(pose[:, 0], pose[:, 1], pose[:, 2])
    kp = jnp.einsum("bki,bij->bkj", kp_canonical, rotation) + expression.reshape(b, k, 3)
    kp = kp * pose[:, 6, None, None]
    return kp.at[..., :2].add(pose[:, None, 3:5])


# ---------------------------------------------------------------------------------------------------------------
# The whole renderer, with the stage-1 interface
# ---------------------------------------------------------------------------------------------------------------

class LivePortrait(nn.Module):
    """F, M, W, G and the stitching MLPs under the names of the published files. Use through
    `model.apply(variables, ..., method=...)` with `encode`, `encode_motion` or `decode`, as `FaceLatentModel`:
    encode gives (volume, canonical keypoints, pose, expression), decode renders the source's volume and
    keypoints with a driving pose and expression. `__call__` re-enacts a source with a driving frame and creates
    every parameter at init."""

    cfg: LivePortraitConfig = LivePortraitConfig()

    def setup(self):
        self.appearance_feature_extractor = AppearanceFeatureExtractor(self.cfg)
        self.motion_extractor = MotionExtractor(self.cfg)
        self.warping_module = WarpingNetwork(self.cfg)
        self.spade_generator = SPADEDecoder(self.cfg)
        self.stitching_retargeting_module = StitchingRetargeting(self.cfg)

    def encode(self, image, train: bool = False):
        """image [B, S, S, 3] in [0, 1] (S = cfg.image_size) -> (volume, canonical keypoints [B, K, 3], pose [B, 7],
        expression [B, 3K])."""
        self._check_image(image)
        kp, pose, expression = pose_from_motion(self.motion_extractor(image))
        return self.appearance_feature_extractor(image, train), kp, pose, expression

    def encode_motion(self, image):
        """image -> (pose [B, 7], expression [B, 3K]): what drives a render."""
        self._check_image(image)
        _, pose, expression = pose_from_motion(self.motion_extractor(image))
        return pose, expression

    def decode(self, volume, kp_canonical, pose_source, exp_source, pose_driving, exp_driving, source_image=None,
               *, stitch: bool = False, train: bool = False):
        """The source's volume and keypoints rendered with the driving pose and expression -> [B, S, S, 3] with
        S = cfg.output_size. `stitch` applies the stitching MLP to the driving keypoints (for pasting back).
        `source_image` is accepted for the stage-1 interface (`FaceLatentModel.decode`'s image-skip path) and not
        read: LivePortrait renders from the volume alone."""
        del source_image
        kp_source = transform_keypoints(kp_canonical, pose_source, exp_source)
        kp_driving = transform_keypoints(kp_canonical, pose_driving, exp_driving)
        if stitch:
            kp_driving = self.stitching_retargeting_module.stitch(kp_source, kp_driving)
        return self.render_keypoints(volume, kp_source, kp_driving, train=train)

    def render_keypoints(self, volume, kp_source, kp_driving, *, train: bool = False):
        """W then G on posed keypoints [B, K, 3]."""
        warped = self.warping_module(volume, kp_driving, kp_source, train)
        return self.spade_generator(warped.features)

    def __call__(self, source, driving, train: bool = False):
        volume, kp, pose_s, exp_s = self.encode(source, train)
        pose_d, exp_d = self.encode_motion(driving)
        if self.is_initializing():  # create the retargeting MLPs too, which a re-enactment does not use
            kp_source = transform_keypoints(kp, pose_s, exp_s)
            self.stitching_retargeting_module(kp_source, kp_source)
        return self.decode(volume, kp, pose_s, exp_s, pose_d, exp_d, stitch=True, train=train)

    def _check_image(self, image):
        size = self.cfg.image_size
        if image.ndim != 4 or tuple(image.shape[1:]) != (size, size, 3):
            raise ValueError(f"this LivePortrait reads images of shape [B, {size}, {size}, 3] in [0, 1], "
                             f"got {tuple(image.shape)}")


# ---------------------------------------------------------------------------------------------------------------
# Importer for the published checkpoints
# ---------------------------------------------------------------------------------------------------------------

# network (its name in the parameter tree) -> the published file's stem; `.pth` or `.safetensors` is read.
CHECKPOINT_FILES = {
    "appearance_feature_extractor": "appearance_feature_extractor",
    "motion_extractor": "motion_extractor",
    "warping_module": "warping_module",
    "spade_generator": "spade_generator",
    "stitching_retargeting_module": "stitching_retargeting_module",
}

def checkpoint_file(folder: str, network: str) -> str:
    """The published file of a network in `folder` (.pth, else .safetensors); a missing one is one clear line."""
    stem = os.path.join(os.fspath(folder), CHECKPOINT_FILES[network])
    for suffix in (".pth", ".safetensors"):
        if os.path.isfile(stem + suffix):
            return stem + suffix
    raise FileNotFoundError(
        f"{folder}: no {CHECKPOINT_FILES[network]}.pth (or .safetensors): a LivePortrait folder holds "
        + ", ".join(f"{name}.pth" for name in CHECKPOINT_FILES.values())
    )


def is_checkpoint_folder(folder: str) -> bool:
    """Whether `folder` holds LivePortrait's published files (any of them: `load_liveportrait` names a missing
    one)."""
    return any(os.path.isfile(os.path.join(os.fspath(folder), stem + suffix))
               for stem in CHECKPOINT_FILES.values() for suffix in (".pth", ".safetensors"))


def load_liveportrait(folder: str, cfg: LivePortraitConfig = LivePortraitConfig()) -> dict:
    """The published checkpoint files in `folder` -> variables {"params", "batch_stats"} for `LivePortrait(cfg)`.
    Read without torch and without running any pickled code (`torch_import`); nothing is downloaded."""
    files = {network: checkpoint_file(folder, network) for network in CHECKPOINT_FILES}
    image = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    expected = jax.eval_shape(LivePortrait(cfg).init, jax.random.PRNGKey(0), image, image)
    variables: dict = {"params": {}, "batch_stats": {}}
    for network, path in files.items():
        subtree = {c: expected[c][network] for c in ("params", "batch_stats") if network in expected.get(c, {})}
        imported = import_mirrored_state_dict(
            load_torch_state_dict(path, what=f"LivePortrait's {network}"), subtree, f"LivePortrait's {network}")
        for collection, tree in imported.items():
            variables[collection][network] = tree
    return variables
