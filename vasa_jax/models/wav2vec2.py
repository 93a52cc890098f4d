"""Wav2Vec2 (Baevski et al. 2020) in Flax, numerically matching Hugging Face `transformers.Wav2Vec2Model`.

VASA conditions its motion generator on Wav2Vec2 features. This is an inference-only port (no masking, no
dropout, no attention mask: one clip per row, unpadded) that loads Hugging Face checkpoints without PyTorch. Both
published layouts are covered:

* base style (`feat_extract_norm="group"`, `do_stable_layer_norm=False`, e.g. wav2vec2-base-960h): the first conv
  has a per-channel GroupNorm, the encoder is post-LN and applies its LayerNorm *before* the first layer;
* large-lv60 style (`feat_extract_norm="layer"`, `do_stable_layer_norm=True`): every conv has a LayerNorm over
  channels, the encoder is pre-LN and applies its LayerNorm *after* the last layer.

Architecture (input [B, N] at 16 kHz, already normalised if the checkpoint expects it):

    feature_extractor: Conv1d(k_i, stride s_i, VALID) [-> norm] -> GELU, for each of conv_dim   -> [B, L, C]
    feature_projection: LayerNorm(C) -> Dense(C -> H)                                          -> [B, L, H]
    encoder: x + GELU(weight-normed grouped Conv1d(H, H, K, 'same', drop last if K even)(x))
             base: LayerNorm -> L x post-LN blocks     stable: L x pre-LN blocks -> LayerNorm

`hidden_states` follow Hugging Face's `output_hidden_states` numbering: index 0 is the input of the first
transformer block (for base models that is after the encoder LayerNorm, for stable models it is not normalised),
index i is the output of block i. For stable models the last entry has the final LayerNorm applied, i.e. it equals
`last_hidden_state`, as in transformers 4.x. (transformers 5.x reports the last block's output before that norm in
`hidden_states[-1]`; `last_hidden_state` is unchanged, and that is what the last entry here matches.)

Params layout (`{"params": ...}`), names mirroring the Hugging Face modules::

    feature_extractor: {conv_layers_{i}: {conv: {kernel [k, in, out], bias?}, layer_norm?: {scale, bias}}}
    feature_projection: {layer_norm: {scale, bias}, projection: {kernel [C, H], bias}}
    encoder: {pos_conv_embed: {conv: {kernel [K, H / groups, H], bias}}, layer_norm: {scale, bias},
              layers_{j}: {attention: {q_proj, k_proj, v_proj, out_proj}, layer_norm,
                           feed_forward: {intermediate_dense, output_dense}, final_layer_norm}}

The positional conv is stored as its effective weight `g * v / ||v||` (norm over all axes but the kernel axis,
PyTorch's `weight_norm(dim=2)`), computed once at import: inference never needs g and v separately.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax import storage
from vasa_jax.audio import SAMPLE_RATE, VIDEO_FPS, num_video_frames
from vasa_jax.models.layers import conv_kernel_init
from vasa_jax.models.torch_import import (
    ParamSpec,
    convert_state_dict,
    linear_kernel_from_torch,
    load_torch_state_dict,
)

__all__ = [
    "Wav2Vec2Config",
    "Wav2Vec2",
    "RESAMPLE_MODES",
    "load_wav2vec2_config",
    "import_hf_wav2vec2",
    "load_wav2vec2",
    "init_wav2vec2_params",
    "wav2vec2_hidden_states",
    "interpolate_frames",
    "wav2vec2_video_features",
]

RESAMPLE_MODES = ("output", "conv_features")

# Both Hugging Face conv-norm variants use PyTorch's default epsilon, not config.layer_norm_eps.
_CONV_NORM_EPS = 1e-5
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The Flax parameter tree as "path/to/leaf" keys, as `vasa_jax.export` copies an encoder into a model folder.
EXPORTED_WEIGHTS = "flax_model.safetensors"


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """The architecture fields of a Hugging Face `Wav2Vec2Config` (defaults: wav2vec2-base).

    Frozen and made of tuples, so it is hashable and can key compiled functions.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0):
            raise ValueError(
                "Wav2Vec2Config: conv_dim, conv_kernel and conv_stride must be non-empty and of equal length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"Wav2Vec2Config: feat_extract_norm must be 'group' or 'layer', got "
                             f"{self.feat_extract_norm!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"Wav2Vec2Config: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"Wav2Vec2Config: hidden_size {self.hidden_size} is not divisible by "
                             f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}")

    @property
    def total_stride(self) -> int:
        """Samples per output frame (320 for the released models: 50 Hz at 16 kHz)."""
        return int(np.prod(self.conv_stride))

    @property
    def receptive_field(self) -> int:
        """Samples one output frame sees (400 for the released models); shorter input gives no frames."""
        field, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride):
            field += (k - 1) * jump
            jump *= s
        return field

    def num_conv_frames(self, num_samples: int) -> int:
        """Frames the conv feature extractor produces for `num_samples` samples (0 if too short)."""
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            if n < k:
                return 0
            n = (n - k) // s + 1
        return n

    @classmethod
    def from_hf_dict(cls, cfg: Mapping[str, Any], source: str = "config") -> "Wav2Vec2Config":
        """Build from a Hugging Face `config.json` dict, refusing options this port does not implement."""
        model_type = cfg.get("model_type", "wav2vec2")
        if model_type != "wav2vec2":
            raise ValueError(f"{source}: model_type is {model_type!r}; only 'wav2vec2' checkpoints are supported")
        for key in ("hidden_act", "feat_extract_activation"):
            if cfg.get(key, "gelu") != "gelu":
                raise ValueError(f"{source}: {key} is {cfg[key]!r}; only 'gelu' is supported")
        if cfg.get("add_adapter", False):
            raise ValueError(f"{source}: add_adapter=True (adapter layers) is not supported")
        if cfg.get("adapter_attn_dim") is not None:
            raise ValueError(f"{source}: adapter_attn_dim is set (attention adapters) but is not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: cfg[k] for k in fields if k in cfg}
        conf = cls(**kwargs)
        n_layers = cfg.get("num_feat_extract_layers", len(conf.conv_dim))
        if n_layers != len(conf.conv_dim):
            raise ValueError(f"{source}: num_feat_extract_layers={n_layers} but conv_dim has {len(conf.conv_dim)} "
                             "entries")
        return conf


def load_wav2vec2_config(path: str | os.PathLike) -> Wav2Vec2Config:
    """Read a Hugging Face `config.json` (or a checkpoint folder holding one)."""
    path = storage.location(os.fspath(path))
    if storage.isdir(path):
        path = storage.join(path, "config.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"Wav2Vec2 config not found: {path!r} (expected a Hugging Face config.json)")
    try:
        cfg = json.loads(storage.read_text(path))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return Wav2Vec2Config.from_hf_dict(cfg, source=path)


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------

def _gelu(x):
    return nn.gelu(x, approximate=False)  # Hugging Face's "gelu" is the exact erf form


def _dense(features: int, axes: tuple[str, str], name: str, dtype, precision) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        dtype=dtype,
        precision=precision,
        name=name,
    )


def _layer_norm(eps: float, name: str, dtype) -> nn.LayerNorm:
    # Two-pass variance: the fast E[x^2] - E[x]^2 form loses digits on raw conv activations.
    return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


def interpolate_frames(x: jax.Array, num_out: int) -> jax.Array:
    """Linear resampling along axis 1 of [B, L, C] to `num_out` frames, with the end points aligned.

    Same as `torch.nn.functional.interpolate(mode="linear", align_corners=True)` on the time axis (JoyVASA's
    choice): output frame j samples input position j * (L - 1) / (num_out - 1); a single output frame takes the first
    input frame. With L = 2 * num_out - 1, as for Wav2Vec2 at 50 Hz against 25 fps, output frame j is input frame 2j.
    Positions are computed in float64; PyTorch rounds them to float32, a difference of rounding error only.
    """
    length = x.shape[1]
    if num_out == length:
        return x
    if num_out == 0 or length == 0:
        if num_out:
            raise ValueError("interpolate_frames: cannot interpolate from zero input frames")
        return x[:, :0]
    scale = (length - 1) / (num_out - 1) if num_out > 1 else 0.0
    pos = np.arange(num_out, dtype=np.float64) * scale
    lo = np.clip(np.floor(pos).astype(np.int64), 0, length - 1)
    hi = np.minimum(lo + 1, length - 1)
    frac = jnp.asarray((pos - lo)[None, :, None], x.dtype)
    return x[:, lo] * (1 - frac) + x[:, hi] * frac


class ConvLayer(nn.Module):
    """One feature-extractor step: strided VALID conv, optional norm, GELU."""

    features: int
    kernel: int
    stride: int
    use_bias: bool
    norm: str | None  # None, "group" (per-channel over time) or "layer" (over channels)
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(
            self.features, (self.kernel,), strides=(self.stride,), padding="VALID", use_bias=self.use_bias,
            dtype=self.dtype, precision=self.precision, kernel_init=conv_kernel_init(1),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)), name="conv",
        )(x)
        if self.norm == "group":
            # One channel per group: each channel is normalised over time (HF's GroupNorm(C, C)).
            x = nn.GroupNorm(num_groups=self.features, epsilon=_CONV_NORM_EPS, dtype=self.dtype,
                             use_fast_variance=False, name="layer_norm")(x)
        elif self.norm == "layer":
            x = _layer_norm(_CONV_NORM_EPS, "layer_norm", self.dtype)(x)
        return _gelu(x)


class FeatureEncoder(nn.Module):
    """The strided conv stack turning the waveform [B, N] into 50 Hz features [B, L, conv_dim[-1]].

    Base models normalise only the first conv (GroupNorm); stable-LN models put a LayerNorm after every conv.
    """

    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, waveform):
        cfg = self.config
        x = waveform[..., None].astype(self.dtype)
        for i, (ch, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            if cfg.feat_extract_norm == "layer":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            x = ConvLayer(ch, k, s, cfg.conv_bias, norm, self.dtype, self.precision, name=f"conv_layers_{i}")(x)
        return x


class PositionalConvEmbedding(nn.Module):
    """Relative position information: GELU of a wide grouped conv over time, 'same' length output."""

    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        k = cfg.num_conv_pos_embeddings
        y = nn.Conv(
            cfg.hidden_size, (k,), padding=[(k // 2, k // 2)], feature_group_count=cfg.num_conv_pos_embedding_groups,
            dtype=self.dtype, precision=self.precision, kernel_init=conv_kernel_init(1),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)), name="conv",
        )(x)
        if k % 2 == 0:  # symmetric padding of an even kernel yields one extra frame; drop the last as HF does
            y = y[:, :-1]
        return _gelu(y)


class Attention(nn.Module):
    """Multi-head self-attention over all frames (no mask), softmax in float32."""

    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        b, t, h = x.shape
        heads = cfg.num_attention_heads
        head_dim = h // heads

        def proj(name):
            return _dense(h, ("embed", "mlp"), name, self.dtype, self.precision)(x).reshape(b, t, heads, head_dim)

        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k, precision=self.precision).astype(jnp.float32)
        probs = jax.nn.softmax(logits * head_dim**-0.5, axis=-1).astype(self.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v, precision=self.precision).reshape(b, t, h)
        return _dense(h, ("mlp", "embed"), "out_proj", self.dtype, self.precision)(out)


class FeedForward(nn.Module):
    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        y = _dense(cfg.intermediate_size, ("embed", "mlp"), "intermediate_dense", self.dtype, self.precision)(x)
        return _dense(cfg.hidden_size, ("mlp", "embed"), "output_dense", self.dtype, self.precision)(_gelu(y))


class EncoderLayer(nn.Module):
    """One transformer block: post-LN (base) or pre-LN (`do_stable_layer_norm`)."""

    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        attention = Attention(cfg, self.dtype, self.precision, name="attention")
        feed_forward = FeedForward(cfg, self.dtype, self.precision, name="feed_forward")
        norm1 = _layer_norm(cfg.layer_norm_eps, "layer_norm", self.dtype)
        norm2 = _layer_norm(cfg.layer_norm_eps, "final_layer_norm", self.dtype)
        if cfg.do_stable_layer_norm:
            x = x + attention(norm1(x))
            return x + feed_forward(norm2(x))
        x = norm1(x + attention(x))
        return norm2(x + feed_forward(x))


class FeatureProjection(nn.Module):
    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = _layer_norm(cfg.layer_norm_eps, "layer_norm", self.dtype)(x)
        return _dense(cfg.hidden_size, ("embed", "mlp"), "projection", self.dtype, self.precision)(x)


class Encoder(nn.Module):
    """Positional conv embedding plus the transformer blocks; returns hidden states 0..`layers`."""

    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, layers: int):
        cfg = self.config
        x = x + PositionalConvEmbedding(cfg, self.dtype, self.precision, name="pos_conv_embed")(x)
        final_norm = _layer_norm(cfg.layer_norm_eps, "layer_norm", self.dtype)
        if not cfg.do_stable_layer_norm:
            x = final_norm(x)
        states = [x]
        for j in range(layers):
            x = EncoderLayer(cfg, self.dtype, self.precision, name=f"layers_{j}")(x)
            states.append(x)
        if cfg.do_stable_layer_norm and layers == cfg.num_hidden_layers:
            states[-1] = final_norm(x)
        return tuple(states)


class Wav2Vec2(nn.Module):
    """Wav2Vec2Model forward pass returning Hugging Face-numbered hidden states.

    `__call__(waveform [B, N], max_layer=None, num_conv_frames=None) -> tuple of [B, L, H]`:

    * `max_layer` (static int, 0..num_hidden_layers): stop after that many blocks and return hidden states
      0..max_layer, so early layers are cheap. For stable-LN models the final LayerNorm is applied only when the
      last block is reached (it belongs to the encoder output, not to intermediate states).
    * `num_conv_frames` (static int): linearly resample the conv features to this many frames before the
      feature projection (JoyVASA's way of running the transformer at the video rate). None keeps 50 Hz.

    Attributes:
      config: the architecture.
      dtype: computation dtype (params stay float32; softmax and norm statistics run in float32).
      precision: matmul / conv precision.
    """

    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, waveform: jax.Array, max_layer: int | None = None,
                 num_conv_frames: int | None = None) -> tuple[jax.Array, ...]:
        cfg = self.config
        if waveform.ndim != 2:
            raise ValueError(f"Wav2Vec2 expects a waveform batch [B, N], got shape {waveform.shape}")
        if waveform.shape[1] < cfg.receptive_field:
            raise ValueError(f"Wav2Vec2: input of {waveform.shape[1]} samples is shorter than the receptive field "
                             f"({cfg.receptive_field} samples); pad it first")
        layers = cfg.num_hidden_layers if max_layer is None else int(max_layer)
        if not 0 <= layers <= cfg.num_hidden_layers:
            raise ValueError(f"Wav2Vec2: max_layer must be in 0..{cfg.num_hidden_layers}, got {max_layer}")

        x = FeatureEncoder(cfg, self.dtype, self.precision, name="feature_extractor")(waveform)
        if num_conv_frames is not None:
            x = interpolate_frames(x, int(num_conv_frames))
        x = FeatureProjection(cfg, self.dtype, self.precision, name="feature_projection")(x)
        return Encoder(cfg, self.dtype, self.precision, name="encoder")(x, layers)


# ---------------------------------------------------------------------------
# Hugging Face import
# ---------------------------------------------------------------------------

def _conv1d_kernel_from_torch(w: np.ndarray) -> np.ndarray:
    """Torch Conv1d weight [out, in / groups, k] -> Flax kernel [k, in / groups, out]."""
    return np.transpose(w, (2, 1, 0))


_POS_CONV = "encoder.pos_conv_embed.conv."
# (g, v) key pairs of PyTorch's weight norm: the legacy hook and the parametrization API.
_WEIGHT_NORM_KEYS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def _fold_weight_norm(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace the positional conv's weight-norm pair (g, v) by its effective weight g * v / ||v||.

    The checkpoint used `weight_norm(conv, dim=2)`: g has shape [1, 1, K] and the norm of v runs over the output and
    input-channel axes for each kernel tap. Computed in float64 so the folded weight is exact to float32.
    """
    sd = dict(sd)
    for g_key, v_key in _WEIGHT_NORM_KEYS:
        g_name, v_name = _POS_CONV + g_key, _POS_CONV + v_key
        if g_name not in sd and v_name not in sd:
            continue
        if g_name not in sd or v_name not in sd:
            raise ValueError(f"cannot import Wav2Vec2 weights: weight-norm pair incomplete, have only "
                             f"{g_name if g_name in sd else v_name!r}")
        if _POS_CONV + "weight" in sd:
            raise ValueError(f"cannot import Wav2Vec2 weights: both {_POS_CONV}weight and its weight-norm pair "
                             f"{g_name!r} / {v_name!r} are present")
        g = np.asarray(sd.pop(g_name), np.float64)
        v = np.asarray(sd.pop(v_name), np.float64)
        if v.ndim != 3 or g.shape != (1, 1, v.shape[2]):
            raise ValueError(f"cannot import Wav2Vec2 weights: positional conv weight norm must be over dim=2 "
                             f"(g [1, 1, K] for v [out, in, K]); got g {g.shape}, v {v.shape}")
        norm = np.sqrt(np.sum(v * v, axis=(0, 1), keepdims=True))
        sd[_POS_CONV + "weight"] = (g * v / norm).astype(np.float32)
    return sd


def _hf_specs(cfg: Wav2Vec2Config) -> list[ParamSpec]:
    specs: list[ParamSpec] = []

    def norm(torch_prefix: str, path: tuple[str, ...], size: int):
        specs.append(ParamSpec(f"{torch_prefix}.weight", path + ("scale",), (size,)))
        specs.append(ParamSpec(f"{torch_prefix}.bias", path + ("bias",), (size,)))

    def dense(torch_prefix: str, path: tuple[str, ...], n_in: int, n_out: int):
        specs.append(ParamSpec(f"{torch_prefix}.weight", path + ("kernel",), (n_out, n_in), linear_kernel_from_torch))
        specs.append(ParamSpec(f"{torch_prefix}.bias", path + ("bias",), (n_out,)))

    cin = 1
    for i, (ch, k) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel)):
        tp, fp = f"feature_extractor.conv_layers.{i}", ("feature_extractor", f"conv_layers_{i}")
        specs.append(ParamSpec(f"{tp}.conv.weight", fp + ("conv", "kernel"), (ch, cin, k), _conv1d_kernel_from_torch))
        if cfg.conv_bias:
            specs.append(ParamSpec(f"{tp}.conv.bias", fp + ("conv", "bias"), (ch,)))
        if cfg.feat_extract_norm == "layer" or i == 0:
            norm(f"{tp}.layer_norm", fp + ("layer_norm",), ch)
        cin = ch

    h, c = cfg.hidden_size, cfg.conv_dim[-1]
    norm("feature_projection.layer_norm", ("feature_projection", "layer_norm"), c)
    dense("feature_projection.projection", ("feature_projection", "projection"), c, h)

    pos = ("encoder", "pos_conv_embed", "conv")
    specs.append(ParamSpec(_POS_CONV + "weight", pos + ("kernel",),
                           (h, h // cfg.num_conv_pos_embedding_groups, cfg.num_conv_pos_embeddings),
                           _conv1d_kernel_from_torch))
    specs.append(ParamSpec(_POS_CONV + "bias", pos + ("bias",), (h,)))
    norm("encoder.layer_norm", ("encoder", "layer_norm"), h)

    for j in range(cfg.num_hidden_layers):
        tp, fp = f"encoder.layers.{j}", ("encoder", f"layers_{j}")
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            dense(f"{tp}.attention.{name}", fp + ("attention", name), h, h)
        norm(f"{tp}.layer_norm", fp + ("layer_norm",), h)
        dense(f"{tp}.feed_forward.intermediate_dense", fp + ("feed_forward", "intermediate_dense"),
              h, cfg.intermediate_size)
        dense(f"{tp}.feed_forward.output_dense", fp + ("feed_forward", "output_dense"), cfg.intermediate_size, h)
        norm(f"{tp}.final_layer_norm", fp + ("final_layer_norm",), h)
    return specs


def import_hf_wav2vec2(state_dict: Mapping[str, Any], config: Wav2Vec2Config) -> dict:
    """Convert a Hugging Face Wav2Vec2 state dict to `{"params": ...}` for `Wav2Vec2(config)`.

    Accepts `Wav2Vec2Model` keys (bare) or keys under `wav2vec2.` as saved by `Wav2Vec2ForCTC` /
    `Wav2Vec2ForPreTraining`, whose heads (`lm_head.*`, `quantizer.*`, ...) are then ignored. The positional conv
    may be stored as `weight_g`/`weight_v` (older PyTorch) or `parametrizations.weight.original0/1` (newer). The
    training-only `masked_spec_embed` is ignored. Anything else missing, unexpected or of the wrong shape raises
    one `ValueError` listing it all.
    """
    sd = dict(state_dict)
    if any(k.startswith("wav2vec2.") for k in sd):
        sd = {k[len("wav2vec2."):]: v for k, v in sd.items() if k.startswith("wav2vec2.")}
    sd = _fold_weight_norm(sd)
    params = convert_state_dict(sd, _hf_specs(config), model_name="Hugging Face Wav2Vec2",
                                ignore=lambda k: k == "masked_spec_embed")
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def _weight_files(checkpoint_dir: str) -> list[str]:
    index = os.path.join(checkpoint_dir, "model.safetensors.index.json")
    if os.path.isfile(index):  # sharded safetensors checkpoint
        with open(index, encoding="utf-8") as fh:
            shards = sorted(set(json.load(fh).get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{index}: empty weight_map")
        paths = [os.path.join(checkpoint_dir, s) for s in shards]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"Wav2Vec2 checkpoint {checkpoint_dir!r}: shard(s) listed in {index} are "
                                    f"missing: {missing}")
        return paths
    for name in _WEIGHT_FILES:
        path = os.path.join(checkpoint_dir, name)
        if os.path.isfile(path):
            return [path]
    raise FileNotFoundError(f"Wav2Vec2 checkpoint {checkpoint_dir!r} has no weights file (expected one of "
                            f"{', '.join(_WEIGHT_FILES)})")


def load_wav2vec2(checkpoint_dir: str | os.PathLike) -> tuple[Wav2Vec2Config, dict]:
    """Load a Hugging Face Wav2Vec2 checkpoint folder as `(config, {"params": ...})`, without PyTorch.

    The folder needs `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`) or
    `pytorch_model.bin`, as written by `save_pretrained` or downloaded from the Hub (e.g. facebook/wav2vec2-base-960h),
    or `EXPORTED_WEIGHTS`, as an exported model carries it (that layout may also be at an object store's URL, as
    an exported model folder may: `vasa_jax.storage`).
    """
    checkpoint_dir = storage.location(os.fspath(checkpoint_dir))
    if not storage.isdir(checkpoint_dir):
        raise FileNotFoundError(f"Wav2Vec2 checkpoint folder not found: {checkpoint_dir!r} (expected a Hugging "
                                "Face folder with config.json and model.safetensors or pytorch_model.bin)")
    config_path = storage.join(checkpoint_dir, "config.json")
    if not storage.exists(config_path):
        raise FileNotFoundError(f"Wav2Vec2 checkpoint {checkpoint_dir!r} has no config.json")
    config = load_wav2vec2_config(config_path)
    exported = storage.join(checkpoint_dir, EXPORTED_WEIGHTS)
    if storage.exists(exported):  # our own layout (an exported model's copy): the Flax tree, no conversion
        from safetensors.numpy import load

        from vasa_jax.checkpoints import params_from_flat

        abstract = jax.eval_shape(lambda: init_wav2vec2_params(config, jax.random.key(0)))
        return config, params_from_flat(load(storage.read_bytes(exported)), abstract, exported)
    if storage.is_remote(checkpoint_dir):
        raise FileNotFoundError(f"{checkpoint_dir}: a Hugging Face Wav2Vec2 folder is read from a local path only "
                                f"(at a URL, only an exported model's {EXPORTED_WEIGHTS})")
    state_dict: dict[str, np.ndarray] = {}
    for path in _weight_files(checkpoint_dir):
        state_dict.update(load_torch_state_dict(path, what="Hugging Face Wav2Vec2 weights"))
    return config, import_hf_wav2vec2(state_dict, config)


def init_wav2vec2_params(config: Wav2Vec2Config, rng: jax.Array) -> dict:
    """Randomly initialised params (plain arrays, logical-axis boxes removed) as `{"params": ...}`."""
    module = Wav2Vec2(config)
    dummy = jnp.zeros((1, config.receptive_field + config.total_stride), jnp.float32)
    variables = jax.jit(module.init)(rng, dummy)
    return {"params": nn.unbox(variables["params"])}


# ---------------------------------------------------------------------------
# inference helpers
# ---------------------------------------------------------------------------

def _as_variables(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return params if "params" in params else {"params": params}


@functools.lru_cache(maxsize=64)
def _compiled_forward(config: Wav2Vec2Config, dtype: str, precision: Any, max_layer: int | None,
                      num_conv_frames: int | None, select: int | None, out_frames: int | None):
    """A jitted forward for one static setting; jit adds one compilation per input shape on top."""
    model = Wav2Vec2(config, dtype=jnp.dtype(dtype), precision=precision)

    def forward(variables, waveform):
        states = model.apply(variables, waveform, max_layer=max_layer, num_conv_frames=num_conv_frames)
        if select is None:
            return states
        out = states[select]
        return out if out_frames is None else interpolate_frames(out, out_frames)

    return jax.jit(forward)


def wav2vec2_hidden_states(
    config: Wav2Vec2Config,
    params: Mapping[str, Any],
    waveform: Any,
    *,
    max_layer: int | None = None,
    num_conv_frames: int | None = None,
    dtype: Any = jnp.float32,
    precision: Any = None,
) -> list[jax.Array]:
    """Hidden states [B, L, H] of a waveform batch [B, N], numbered like Hugging Face's `hidden_states`.

    Index 0 is the input of the first block (after the positional embedding, and after the encoder LayerNorm for
    base models); index i the output of block i; the last index of a stable-LN model includes the final LayerNorm
    (= `last_hidden_state`). `max_layer` stops early and returns indices 0..max_layer. The waveform must already be
    normalised the way the checkpoint expects (see `vasa_jax.audio.normalize_waveform`) and be at least
    `config.receptive_field` samples long.
    """
    x = jnp.asarray(waveform, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"wav2vec2_hidden_states expects a waveform batch [B, N], got shape {x.shape}")
    fn = _compiled_forward(config, jnp.dtype(dtype).name, precision, max_layer, num_conv_frames, None, None)
    return list(fn(_as_variables(params), x))


def wav2vec2_video_features(
    config: Wav2Vec2Config,
    params: Mapping[str, Any],
    waveform: Any,
    *,
    layer: int = -1,
    fps: float = VIDEO_FPS,
    resample_at: str = "output",
    dtype: Any = jnp.float32,
    precision: Any = None,
) -> jax.Array:
    """One hidden layer's features at the video frame rate: [N] -> [T, H] or [B, N] -> [B, T, H].

    T = `num_video_frames(N)` at 16 kHz, exactly. The 50 Hz model frames are resampled linearly with the end points
    aligned (`interpolate_frames`, as JoyVASA does), so the first and last video frames take the first and last
    model frames and the alignment error elsewhere is below one 20 ms model frame.

    `layer` indexes Hugging Face's hidden states (0..num_hidden_layers, negative from the end). `resample_at`:

    * "output": run the transformer at its native 50 Hz and resample the chosen layer (default; the pretrained
      attention sees the frame rate it was trained on);
    * "conv_features": resample the conv features to T frames before the feature projection, so the transformer
      runs at the video rate (JoyVASA's method; half the attention cost, but off the pretraining distribution).

    Waveforms shorter than the receptive field (25 ms) are zero-padded to it; T == 0 gives an empty [.., 0, H].
    As for `wav2vec2_hidden_states`, normalise the waveform first if the checkpoint expects it.
    """
    if resample_at not in RESAMPLE_MODES:
        raise ValueError(f"wav2vec2_video_features: resample_at must be one of {RESAMPLE_MODES}, got {resample_at!r}")
    num_states = config.num_hidden_layers + 1
    if not -num_states <= layer < num_states:
        raise ValueError(f"wav2vec2_video_features: layer {layer} out of range for {num_states} hidden states")
    layer = int(layer) % num_states
    x = jnp.asarray(waveform, jnp.float32)
    single = x.ndim == 1
    if single:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"wav2vec2_video_features expects a waveform [N] or batch [B, N], got shape {x.shape}")
    frames = num_video_frames(x.shape[1], SAMPLE_RATE, fps)
    if frames == 0:
        out = jnp.zeros((x.shape[0], 0, config.hidden_size), jnp.dtype(dtype))
    else:
        if x.shape[1] < config.receptive_field:
            x = jnp.pad(x, ((0, 0), (0, config.receptive_field - x.shape[1])))
        if resample_at == "output":
            fn = _compiled_forward(config, jnp.dtype(dtype).name, precision, layer, None, layer, frames)
        else:
            fn = _compiled_forward(config, jnp.dtype(dtype).name, precision, layer, frames, layer, None)
        out = fn(_as_variables(params), x)
    return out[0] if single else out
