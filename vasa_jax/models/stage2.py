"""Stage 2: the motion diffusion transformer H(X_t, t, C) of VASA-1 (paper section 3.2).

It predicts the clean motion window X_0 [B, W, M] (M = 7 pose values + z_dyn, the 3K keypoint deformations and
the expression code; normalised) from the noisy window X_t, the diffusion step t and the conditions
  audio     [B, W, A]  per-frame audio features of the window (with a per-frame validity mask, so the tail of
                        the audio can be cut: shorter audio, and the random tail truncation of training)
  previous  [B, K, M] + [B, K, A]  the last K frames of the previous window's motion and audio
  gaze      [B, 2]     main gaze direction (theta, phi)
  distance  [B, 1]     normalised head distance
  emotion   [B, E]     emotion offset
Every condition has a learned null embedding; a boolean `keep` per condition and example chooses between the
real and the null one. Training drops conditions at random through `keep`; classifier-free guidance runs the
network once with all conditions and once per guided condition with that one nulled (`diffusion.guided_x0`).

Layout (VASA gives only the depth, width and heads; the rest is the project's choice): one token per global
condition (time, gaze, distance, emotion), then K context tokens, then W window tokens; learned positions; a
pre-LayerNorm transformer encoder; a zero-initialised linear head F on the window tokens.

The x0 prediction is preconditioned (Karras et al. 2022, EDM, for a variance-preserving process with unit data
variance) around an anchor b, the last context frame times a learned per-frame, per-channel gate in (0, 1)
(zero without context):
    x0 = b + sqrt(abar_t) (x_t - sqrt(abar_t) b) + sqrt(1 - abar_t) F.
The network thus learns only what the noisy input and the context do not already say: at low noise x0 is mostly
x_t, and at high noise the first frames start where the previous window ended. Without it a small network
neither reproduces x_t at low noise nor continues the context (each window then starts with a jump of about
2.5 times the frame-to-frame change inside windows; with it, about 1x). The loss stays VASA's L2 on x0.
"""

import dataclasses
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models import diffusion
from vasa_jax.models.layers import Dense, config_from_mapping

CONDITIONS = ("audio", "previous", "gaze", "distance", "emotion")


@dataclasses.dataclass(frozen=True)
class Stage2ModelConfig:
    """Every size of the motion diffusion transformer; built from the `model` section of configs/stage2.py."""

    motion_dim: int = 7 + 3 * 15
    audio_dim: int = 768
    emotion_dim: int = 8
    window: int = 50  # W, frames generated per window
    context: int = 10  # K, frames of the previous window given as context
    width: int = 512
    num_layers: int = 8
    num_heads: int = 8
    mlp_ratio: int = 4
    num_train_steps: int = 1000  # T of the noise schedule (the `diffusion` section of the config)
    schedule: str = "cosine"

    @classmethod
    def from_config(cls, config: Any) -> "Stage2ModelConfig":
        return config_from_mapping(cls, config, "stage-2 model")


def example_inputs(cfg: Stage2ModelConfig, batch: int = 1):
    """Zero inputs of the right shapes (noisy motion, t, conditions, keep) for `MotionDiT.init`."""
    w, k = cfg.window, cfg.context
    conditions = {
        "audio": jnp.zeros((batch, w, cfg.audio_dim)),
        "audio_valid": jnp.ones((batch, w), bool),
        "previous_motion": jnp.zeros((batch, k, cfg.motion_dim)),
        "previous_audio": jnp.zeros((batch, k, cfg.audio_dim)),
        "gaze": jnp.zeros((batch, 2)),
        "distance": jnp.zeros((batch, 1)),
        "emotion": jnp.zeros((batch, cfg.emotion_dim)),
    }
    noisy_motion, t = jnp.zeros((batch, w, cfg.motion_dim)), jnp.zeros((batch,), jnp.int32)
    return noisy_motion, t, conditions, diffusion.all_kept(batch, CONDITIONS)


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
    """Sinusoidal embedding [B, dim] of (possibly fractional) diffusion steps t [B]."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention and MLP, both residual."""

    width: int
    num_heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x):
        b, n, _ = x.shape
        head_dim = self.width // self.num_heads
        h = nn.LayerNorm(name="attention_norm")(x)
        qkv = Dense(3 * self.width, name="qkv")(h).reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        attention = jax.nn.dot_product_attention(q, k, v)
        x = x + Dense(self.width, name="attention_out")(attention.reshape(b, n, self.width))
        h = nn.LayerNorm(name="mlp_norm")(x)
        h = nn.gelu(Dense(self.mlp_ratio * self.width, name="mlp_in")(h))
        return x + Dense(self.width, name="mlp_out")(h)


class MotionDiT(nn.Module):
    """H(X_t, t, C) -> predicted X_0 [B, W, M]. See the module docstring for the conditions."""

    cfg: Stage2ModelConfig

    @nn.compact
    def __call__(self, noisy_motion, t, conditions: Dict[str, jnp.ndarray], keep: Dict[str, jnp.ndarray]):
        cfg = self.cfg
        b, w, m = noisy_motion.shape
        if (w, m) != (cfg.window, cfg.motion_dim):
            raise ValueError(f"expected noisy motion [B, {cfg.window}, {cfg.motion_dim}], got {noisy_motion.shape}")
        null = lambda name, shape: self.param(
            f"null_{name}",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None,) * (len(shape) - 1) + ("embed",)),
            shape,
        )
        choose = lambda keep_mask, real, fake: jnp.where(keep_mask, real, fake.astype(real.dtype))

        time = timestep_embedding(t, cfg.width)
        time = Dense(cfg.width, name="time_out")(nn.silu(Dense(cfg.width, name="time_in")(time)))
        gaze = choose(keep["gaze"][:, None], Dense(cfg.width, name="gaze")(conditions["gaze"]), null("gaze", (cfg.width,)))
        distance = choose(
            keep["distance"][:, None], Dense(cfg.width, name="distance")(conditions["distance"]),
            null("distance", (cfg.width,)),
        )
        if cfg.emotion_dim:
            emotion = choose(
                keep["emotion"][:, None], Dense(cfg.width, name="emotion")(conditions["emotion"]),
                null("emotion", (cfg.width,)),
            )
        else:  # trained on data without emotion labels: the token is the learned "no emotion" one
            emotion = jnp.broadcast_to(null("emotion", (cfg.width,)), (b, cfg.width)).astype(time.dtype)
        global_tokens = jnp.stack([time, gaze, distance, emotion], axis=1)  # [B, 4, width]

        # Context and window frames share the motion and audio projections, so that the network sees the context
        # as earlier frames of the same sequence (what makes consecutive windows join without a seam); a learned
        # type embedding tells the clean context from the noisy window.
        motion_in = Dense(cfg.width, name="motion_in")
        audio_in = Dense(cfg.width, name="audio")
        context_type = self.param(
            "context_type", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)), (cfg.width,)
        )
        previous = motion_in(conditions["previous_motion"]) + audio_in(conditions["previous_audio"]) + context_type
        previous = choose(keep["previous"][:, None, None], previous, null("previous", (cfg.context, cfg.width)))

        audio_on = jnp.logical_and(keep["audio"][:, None], conditions["audio_valid"])[..., None]  # [B, W, 1]
        audio = choose(audio_on, audio_in(conditions["audio"]), null("audio", (cfg.width,)))
        window = motion_in(noisy_motion) + audio

        tokens = jnp.concatenate([global_tokens, previous, window], axis=1)
        positions = self.param(
            "positions",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (tokens.shape[1], cfg.width),
        )
        x = tokens + positions[None]
        for i in range(cfg.num_layers):
            x = TransformerBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio, name=f"block_{i}")(x)
        x = nn.LayerNorm(name="out_norm")(x[:, -w:])
        residual = Dense(m, name="out", zero_init=True)(x)

        abar = jnp.asarray(diffusion.alphas_cumprod(cfg.num_train_steps, cfg.schedule), jnp.float32)
        abar = abar[t].reshape(b, 1, 1)
        gate = jax.nn.sigmoid(self.param("anchor_gate", nn.initializers.zeros, (w, m)))
        last_context = conditions["previous_motion"][:, -1:]
        anchor = jnp.where(keep["previous"][:, None, None], gate[None] * last_context, 0.0)
        return anchor + jnp.sqrt(abar) * (noisy_motion - jnp.sqrt(abar) * anchor) + jnp.sqrt(1.0 - abar) * residual
