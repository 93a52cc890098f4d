"""ArcFace ``iresnet`` face-identity backbone (insightface arcface_torch) in Flax.

Inference-only reimplementation of the iresnet18/34/50/100/200 backbones used
for identity losses / metrics.  Architecture (input 112x112 RGB):

    stem:  conv3x3(3->64) -> BN -> PReLU
    layer1..4 (64, 128, 256, 512 channels, first block stride 2):
        IBasicBlock: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride s) -> BN
                     + identity (or conv1x1(stride s) -> BN on the first block)
    head:  BN2d -> flatten -> (dropout) -> fc(512*7*7 -> 512) -> BN1d

BatchNorms use their running statistics and are stored as frozen params.
All BatchNorm eps default to 1e-5 as in arcface_torch (``IResNet.eps``).

Params layout (``{"params": ...}``, ready for ``IResNet(...).apply``)::

    conv1:   {kernel [3,3,3,64]}
    bn1:     {scale, bias, mean, var}            # every BN has these four [C]
    prelu:   {alpha [64]}
    layer{s}_{j}: {bn1, conv1, bn2, prelu, conv2, bn3,
                   [downsample_conv {kernel [1,1,in,out]}, downsample_bn]}
    bn2:     {...}  (512)
    fc:      {kernel [7*7*512, 512] (rows in H,W,C order), bias [512]}
    features:{scale, bias, mean, var} (512)

The torch fc weight consumes a C,H,W-ordered flatten; the importer permutes its
columns to H,W,C so the channels-last activations are flattened directly.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.models.torch_import import (
    ParamSpec,
    conv_kernel_from_torch,
    convert_state_dict,
    load_torch_state_dict,
)

__all__ = [
    "IRESNET_LAYERS",
    "STAGE_CHANNELS",
    "INPUT_SIZE",
    "FrozenBatchNorm",
    "PReLU",
    "IBasicBlock",
    "IResNet",
    "iresnet",
    "import_arcface_iresnet",
    "load_arcface_params",
    "init_arcface_params",
    "iresnet_layers_from_params",
    "arcface_embed",
]

# Blocks per stage for each supported depth.
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
STAGE_CHANNELS: tuple[int, int, int, int] = (64, 128, 256, 512)
INPUT_SIZE = 112
_FINAL_HW = INPUT_SIZE // 16  # four stride-2 stages -> 7


def _layers_for_depth(depth: int) -> tuple[int, ...]:
    if depth not in IRESNET_LAYERS:
        raise ValueError(f"unsupported iresnet depth {depth}; choose one of {sorted(IRESNET_LAYERS)}")
    return IRESNET_LAYERS[depth]


class FrozenBatchNorm(nn.Module):
    """BatchNorm in inference mode: a fixed affine from running statistics."""

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
        mul = scale * jax.lax.rsqrt(var + self.eps)
        add = bias - mean * mul
        return x * mul.astype(self.dtype) + add.astype(self.dtype)


class PReLU(nn.Module):
    """Per-channel PReLU (torch ``nn.PReLU(C)``), slope initialised to 0.25."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
        return jnp.where(x > 0, x, x * alpha.astype(self.dtype))


class IBasicBlock(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    eps: float = 1e-5
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 param_dtype=jnp.float32, precision=self.precision)
        bn = functools.partial(FrozenBatchNorm, eps=self.eps, dtype=self.dtype)
        out = bn(name="bn1")(x)
        out = conv(self.planes, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(out)
        out = bn(name="bn2")(out)
        out = PReLU(dtype=self.dtype, name="prelu")(out)
        out = conv(self.planes, (3, 3), strides=(self.stride, self.stride),
                   padding=((1, 1), (1, 1)), name="conv2")(out)
        out = bn(name="bn3")(out)
        identity = x
        if self.downsample:
            identity = conv(self.planes, (1, 1), strides=(self.stride, self.stride),
                            padding="VALID", name="downsample_conv")(x)
            identity = bn(name="downsample_bn")(identity)
        return out + identity


class IResNet(nn.Module):
    """ArcFace iresnet backbone: [B, 112, 112, 3] in [0, 1] -> [B, num_features].

    The output is the (un-normalised) ``features`` BatchNorm1d output, exactly
    like arcface_torch's ``forward``; see :func:`arcface_embed` for the
    L2-normalised convenience wrapper.
    """

    layers: Sequence[int] = IRESNET_LAYERS[50]
    num_features: int = 512
    eps: float = 1e-5
    normalize: bool = True  # map [0, 1] inputs to [-1, 1]
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(
                f"IResNet expects [B, {INPUT_SIZE}, {INPUT_SIZE}, 3] images, got shape {x.shape} "
                "(use arcface_embed to resize arbitrary sizes)"
            )
        if len(self.layers) != 4:
            raise ValueError(f"IResNet.layers must have 4 entries, got {self.layers}")
        x = x.astype(self.dtype)
        if self.normalize:
            x = (x - 0.5) / 0.5
        bn = functools.partial(FrozenBatchNorm, eps=self.eps, dtype=self.dtype)
        x = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                    param_dtype=jnp.float32, precision=self.precision, name="conv1")(x)
        x = bn(name="bn1")(x)
        x = PReLU(dtype=self.dtype, name="prelu")(x)
        for s, (n_blocks, planes) in enumerate(zip(self.layers, STAGE_CHANNELS), 1):
            for j in range(n_blocks):
                first = j == 0
                x = IBasicBlock(
                    planes,
                    stride=2 if first else 1,
                    downsample=first,  # stride 2 always needs the projection
                    eps=self.eps,
                    dtype=self.dtype,
                    precision=self.precision,
                    name=f"layer{s}_{j}",
                )(x)
        x = bn(name="bn2")(x)
        x = x.reshape(x.shape[0], -1)  # H, W, C order; the importer permutes fc to match
        x = nn.Dense(self.num_features, dtype=self.dtype, param_dtype=jnp.float32,
                     precision=self.precision, name="fc")(x)
        x = bn(name="features")(x)
        return x


def iresnet(depth: int, **kwargs) -> IResNet:
    """``IResNet`` for depth 18 / 34 / 50 / 100 / 200."""
    return IResNet(layers=_layers_for_depth(depth), **kwargs)


# ---------------------------------------------------------------------------
# importing
# ---------------------------------------------------------------------------

def _bn_specs(torch_prefix: str, flax_path: tuple[str, ...], c: int) -> list[ParamSpec]:
    names = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))
    return [ParamSpec(f"{torch_prefix}.{t}", flax_path + (f,), (c,)) for t, f in names]


def _conv_spec(torch_key: str, flax_path: tuple[str, ...], cout: int, cin: int, k: int) -> ParamSpec:
    return ParamSpec(torch_key, flax_path + ("kernel",), (cout, cin, k, k), conv_kernel_from_torch)


def _infer_layers(sd: Mapping[str, Any]) -> tuple[int, ...]:
    counts = []
    for s in range(1, 5):
        idx = {int(k.split(".")[1]) for k in sd
               if k.startswith(f"layer{s}.") and k.split(".")[1].isdigit()}
        if not idx:
            raise ValueError(f"cannot import ArcFace iresnet weights: no 'layer{s}.*' keys found")
        counts.append(max(idx) + 1)
    return tuple(counts)


def import_arcface_iresnet(state_dict: Mapping[str, Any], depth: int | None = None) -> dict:
    """Convert an arcface_torch iresnet state dict to ``{"params": ...}``.

    ``depth`` (18/34/50/100/200) is checked against the state dict; when
    omitted the block counts are inferred from the keys.  Raises ``ValueError``
    listing missing / unexpected / shape-mismatched keys.
    """
    sd = dict(state_dict)
    layers = _layers_for_depth(depth) if depth is not None else _infer_layers(sd)
    nf = int(np.shape(sd["fc.weight"])[0]) if "fc.weight" in sd else 512
    specs: list[ParamSpec] = [_conv_spec("conv1.weight", ("conv1",), 64, 3, 3)]
    specs += _bn_specs("bn1", ("bn1",), 64)
    specs.append(ParamSpec("prelu.weight", ("prelu", "alpha"), (64,)))
    cin = 64
    for s, (n_blocks, planes) in enumerate(zip(layers, STAGE_CHANNELS), 1):
        for j in range(n_blocks):
            tp, fp = f"layer{s}.{j}", (f"layer{s}_{j}",)
            specs += _bn_specs(f"{tp}.bn1", fp + ("bn1",), cin)
            specs.append(_conv_spec(f"{tp}.conv1.weight", fp + ("conv1",), planes, cin, 3))
            specs += _bn_specs(f"{tp}.bn2", fp + ("bn2",), planes)
            specs.append(ParamSpec(f"{tp}.prelu.weight", fp + ("prelu", "alpha"), (planes,)))
            specs.append(_conv_spec(f"{tp}.conv2.weight", fp + ("conv2",), planes, planes, 3))
            specs += _bn_specs(f"{tp}.bn3", fp + ("bn3",), planes)
            if j == 0:
                specs.append(_conv_spec(f"{tp}.downsample.0.weight", fp + ("downsample_conv",),
                                        planes, cin, 1))
                specs += _bn_specs(f"{tp}.downsample.1", fp + ("downsample_bn",), planes)
            cin = planes
    specs += _bn_specs("bn2", ("bn2",), cin)
    hw = _FINAL_HW

    def fc_kernel(w: np.ndarray) -> np.ndarray:
        # torch columns are (C, H, W)-ordered; ours are (H, W, C).
        return w.reshape(nf, cin, hw, hw).transpose(2, 3, 1, 0).reshape(hw * hw * cin, nf)

    specs.append(ParamSpec("fc.weight", ("fc", "kernel"), (nf, cin * hw * hw), fc_kernel))
    specs.append(ParamSpec("fc.bias", ("fc", "bias"), (nf,)))
    specs += _bn_specs("features", ("features",), nf)
    params = convert_state_dict(sd, specs, model_name=f"ArcFace iresnet (layers={layers})",
                                ignore=lambda k: k.endswith(".num_batches_tracked"))
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def load_arcface_params(path: str | os.PathLike, depth: int | None = None) -> dict:
    """Load arcface_torch iresnet weights (.pth / .safetensors / .npz) as ``{"params": ...}``."""
    sd = load_torch_state_dict(
        path, what="an insightface arcface_torch iresnet backbone state dict, e.g. backbone.pth"
    )
    return import_arcface_iresnet(sd, depth)


def init_arcface_params(rng: jax.Array, depth: int = 50) -> dict:
    """Randomly initialised iresnet params (BN stats mean 0 / var 1) as ``{"params": ...}``."""
    module = iresnet(depth)
    variables = jax.jit(module.init)(rng, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
    return {"params": variables["params"]}


def iresnet_layers_from_params(params: Mapping[str, Any]) -> tuple[int, ...]:
    """Blocks per stage, read from a params tree (``{"params": ...}`` or the inner dict)."""
    inner = params["params"] if "params" in params else params
    counts = []
    for s in range(1, 5):
        n = sum(1 for k in inner if k.startswith(f"layer{s}_"))
        if n == 0:
            raise ValueError(f"not an iresnet params tree: no 'layer{s}_*' entries")
        counts.append(n)
    return tuple(counts)


@functools.lru_cache(maxsize=None)
def _module(layers: tuple[int, ...], num_features: int, dtype, precision) -> IResNet:
    return IResNet(layers=layers, num_features=num_features, dtype=dtype, precision=precision)


def crop_square(images: jax.Array, box) -> jax.Array:
    """The square `box` = (centre x, centre y, side), in fractions of the image side, cut out of square images
    [B, S, S, 3] (whole pixels; e.g. `vasa_jax.data.face.ARCFACE_BOX_IN_CROP`, ArcFace's aligned face in the
    training crop)."""
    size = images.shape[1]
    cx, cy, side = (float(v) * size for v in box)
    half = max(1, int(round(side / 2)))
    x0, y0 = int(round(cx)) - half, int(round(cy)) - half
    if x0 < 0 or y0 < 0 or x0 + 2 * half > images.shape[2] or y0 + 2 * half > size:
        raise ValueError(f"box {box} reaches outside the {images.shape[2]}x{size} image")
    return images[:, y0 : y0 + 2 * half, x0 : x0 + 2 * half]


def arcface_embed(
    params: Mapping[str, Any],
    images: jax.Array,
    depth: int | None = None,
    *,
    antialias: bool = True,
    dtype: Any = jnp.float32,
    precision: Any = None,
) -> jax.Array:
    """L2-normalised ArcFace embeddings [B, 512] of [B, H, W, 3] RGB images in [0, 1].

    Images of any size are resized to 112x112 (bilinear).  ``depth`` is
    optional: when omitted it is read from the params tree.  Pure function; jit
    it (with ``depth`` static) if called outside a jitted step.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"arcface_embed expects [B, H, W, 3] images, got shape {images.shape}")
    layers = _layers_for_depth(depth) if depth is not None else iresnet_layers_from_params(params)
    variables = params if "params" in params else {"params": params}
    num_features = int(variables["params"]["fc"]["bias"].shape[-1])
    b = images.shape[0]
    if images.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        images = jax.image.resize(images.astype(jnp.float32), (b, INPUT_SIZE, INPUT_SIZE, 3),
                                  method="bilinear", antialias=antialias)
    emb = _module(tuple(layers), num_features, dtype, precision).apply(variables, images)
    emb = emb.astype(jnp.float32)
    return emb * jax.lax.rsqrt(jnp.maximum(jnp.sum(emb * emb, axis=-1, keepdims=True), 1e-12))
