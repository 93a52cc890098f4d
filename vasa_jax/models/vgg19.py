"""VGG19 feature extractor (torchvision ``vgg19().features``) in Flax.

Used for perceptual losses.  The network is the convolutional trunk of VGG19:
3x3 convs (padding 1) + ReLU, with 2x2/stride-2 max pools between the five
blocks (channel plan 64,64 | 128,128 | 256x4 | 512x4 | 512x4).  The module
returns the activations at the requested ReLU layers (``relu{block}_{index}``)
and stops after the deepest requested one, so asking only for the early layers
is cheap.

Params layout (``{"params": ...}``, ready for ``VGG19Features().apply``)::

    {"params": {"conv1_1": {"kernel": [3,3,3,64], "bias": [64]},
                "conv1_2": {...}, "conv2_1": ..., ..., "conv5_4": {...}}}

Kernels are ``[kh, kw, in, out]``.  ``import_torchvision_vgg19`` maps the
torchvision keys ``features.{i}.weight/bias`` onto this layout.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models.torch_import import (
    ParamSpec,
    conv_kernel_from_torch,
    convert_state_dict,
    load_torch_state_dict,
)

__all__ = [
    "VGG19Features",
    "VGG19_PLAN",
    "VGG19_LAYER_NAMES",
    "DEFAULT_LAYERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "import_torchvision_vgg19",
    "load_vgg19_params",
    "init_vgg19_params",
]

# Output channels of each conv, grouped by block (a max pool precedes blocks 2-5).
VGG19_PLAN: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
)

# All ReLU output names in network order: relu1_1, relu1_2, relu2_1, ...
VGG19_LAYER_NAMES: tuple[str, ...] = tuple(
    f"relu{b}_{i}" for b, block in enumerate(VGG19_PLAN, 1) for i in range(1, len(block) + 1)
)

DEFAULT_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision_conv_indices() -> dict[str, int]:
    """conv name -> index in torchvision's ``features`` Sequential."""
    out, idx = {}, 0
    for b, block in enumerate(VGG19_PLAN, 1):
        for i in range(1, len(block) + 1):
            out[f"conv{b}_{i}"] = idx
            idx += 2  # conv, relu
        idx += 1  # max pool
    return out


_TV_INDEX = _torchvision_conv_indices()  # conv1_1 -> 0, ..., conv5_4 -> 34


class VGG19Features(nn.Module):
    """VGG19 conv trunk returning ``{layer_name: activation}`` (channels-last).

    Attributes:
      layers: ReLU layer names to return (any of ``VGG19_LAYER_NAMES``); the
        forward pass stops after the deepest one.
      normalize: apply ImageNet mean/std normalisation to inputs in [0, 1].
      dtype: computation dtype (params stay float32).
      precision: conv precision passed to ``lax.conv_general_dilated``.
    """

    layers: Sequence[str] = DEFAULT_LAYERS
    normalize: bool = True
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        wanted = tuple(self.layers)
        if not wanted:
            raise ValueError("VGG19Features: `layers` must name at least one layer")
        unknown = [n for n in wanted if n not in VGG19_LAYER_NAMES]
        if unknown:
            raise ValueError(
                f"VGG19Features: unknown layer(s) {unknown}; valid names are {list(VGG19_LAYER_NAMES)}"
            )
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"VGG19Features expects [B, H, W, 3] images, got shape {x.shape}")

        x = x.astype(self.dtype)
        if self.normalize:
            mean = jnp.asarray(IMAGENET_MEAN, self.dtype)
            std = jnp.asarray(IMAGENET_STD, self.dtype)
            x = (x - mean) / std

        deepest = max(VGG19_LAYER_NAMES.index(n) for n in wanted)
        feats: dict[str, jax.Array] = {}
        k = 0
        for b, block in enumerate(VGG19_PLAN, 1):
            if b > 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for i, ch in enumerate(block, 1):
                x = nn.Conv(
                    ch,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    precision=self.precision,
                    name=f"conv{b}_{i}",
                )(x)
                x = nn.relu(x)
                name = f"relu{b}_{i}"
                if name in wanted:
                    feats[name] = x
                if k == deepest:
                    return {n: feats[n] for n in wanted}
                k += 1
        raise AssertionError("unreachable")  # pragma: no cover


def import_torchvision_vgg19(state_dict: Mapping[str, Any]) -> dict:
    """Convert a torchvision ``vgg19`` state dict to ``{"params": ...}``.

    Accepts full-model keys (``features.{i}.weight``; ``classifier.*`` is
    ignored) or a bare ``features`` state dict (``{i}.weight``).  Raises
    ``ValueError`` listing missing / unexpected / shape-mismatched keys.
    """
    sd = dict(state_dict)
    if sd and not any(k.startswith("features.") for k in sd) and all(k.split(".")[0].isdigit() for k in sd):
        sd = {f"features.{k}": v for k, v in sd.items()}
    specs = []
    cin = 3
    for b, block in enumerate(VGG19_PLAN, 1):
        for i, cout in enumerate(block, 1):
            name = f"conv{b}_{i}"
            idx = _TV_INDEX[name]
            specs.append(ParamSpec(f"features.{idx}.weight", (name, "kernel"), (cout, cin, 3, 3),
                                   conv_kernel_from_torch))
            specs.append(ParamSpec(f"features.{idx}.bias", (name, "bias"), (cout,)))
            cin = cout
    params = convert_state_dict(sd, specs, model_name="torchvision VGG19",
                                ignore=lambda k: k.startswith("classifier."))
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def load_vgg19_params(path: str | os.PathLike) -> dict:
    """Load torchvision VGG19 weights (.pth / .safetensors / .npz) as ``{"params": ...}``."""
    sd = load_torch_state_dict(
        path, what="torchvision VGG19 ImageNet weights, e.g. vgg19-dcbb9e9d.pth"
    )
    return import_torchvision_vgg19(sd)


def init_vgg19_params(rng: jax.Array) -> dict:
    """Randomly initialised params for all 16 convs, as ``{"params": ...}``."""
    module = VGG19Features(layers=(VGG19_LAYER_NAMES[-1],))
    variables = jax.jit(module.init)(rng, jnp.zeros((1, 16, 16, 3), jnp.float32))
    return {"params": variables["params"]}

