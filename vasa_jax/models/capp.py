"""CAPP, VASA-1's Contrastive Audio and Pose Pretraining model: the score of how well a head-pose sequence goes
with a speech clip (VASA-1 section 4.2; its tables report it for every method, the real videos scoring 0.56-0.59).

Two encoders map a 3 s window (75 frames at 25 fps) to unit vectors, trained CLIP-style so that the pose and the
audio of the same window are closer than those of other windows of the batch:
* pose: a 6-layer transformer (VASA-1: "a randomly initialised 6-layer transformer") over the head's yaw, pitch and
  roll per frame (degrees, from the frames' face landmarks: `vasa_jax.data.face.head_pose`);
* audio: a transformer over the project's per-frame audio features (`vasa_jax.audio.frame_features`: log-mel, or
  Wav2Vec2's hidden states, which is what VASA-1 starts from; the Wav2Vec2 network itself stays frozen here).
The CAPP score of a window is the cosine of its two embeddings; of a video, the mean over its windows.

Inputs are made relative to their window (`pose_input`, `audio_input`), so the score reads how the pose moves with
the speech, not where the head sits or how loud the recording is.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vasa_jax.models.layers import Dense, config_from_mapping

POSE_SCALE_DEGREES = 10.0  # pose angles are fed in units of 10 degrees (real talking heads move within +-20)


@dataclasses.dataclass(frozen=True)
class CappConfig:
    window: int = 75  # frames: 3 s at 25 fps, as VASA-1's CAPP
    pose_dim: int = 3  # yaw, pitch, roll
    audio_dim: int = 160  # the audio features' width (the default log-mel encoder's)
    width: int = 256
    pose_layers: int = 6
    audio_layers: int = 2
    num_heads: int = 4
    embed_dim: int = 256

    @classmethod
    def from_config(cls, config) -> "CappConfig":
        return config_from_mapping(cls, config, "CAPP model")


def pose_input(angles: np.ndarray) -> np.ndarray:
    """Head angles [..., W, 3] in degrees -> the pose encoder's input: relative to the window's mean, in units of
    POSE_SCALE_DEGREES (the amplitude of the motion is kept: CAPP should tell a still head from a nodding one)."""
    angles = np.asarray(angles, np.float32)
    return (angles - angles.mean(axis=-2, keepdims=True)) / POSE_SCALE_DEGREES


def audio_input(features: np.ndarray) -> np.ndarray:
    """Audio features [..., W, A] -> the audio encoder's input: each feature relative to its window mean, all
    divided by the window's RMS (one number), so the input does not depend on the recording's level."""
    features = np.asarray(features, np.float32)
    centred = features - features.mean(axis=-2, keepdims=True)
    rms = np.sqrt(np.mean(centred**2, axis=(-2, -1), keepdims=True))
    return centred / (rms + 1e-3)


class _Block(nn.Module):
    """A pre-LayerNorm transformer block (self-attention over the window's frames, then a 4x MLP)."""

    width: int
    num_heads: int

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="norm_attention")(x)
        x = x + nn.MultiHeadDotProductAttention(self.num_heads, name="attention")(h, h)
        h = nn.LayerNorm(name="norm_mlp")(x)
        h = Dense(self.width, name="mlp_out")(nn.gelu(Dense(4 * self.width, name="mlp_in")(h)))
        return x + h


class SequenceEncoder(nn.Module):
    """[B, W, D] -> unit vectors [B, embed_dim]: input projection, learned positions, transformer blocks, a
    projection of all the frames."""

    window: int
    width: int
    num_layers: int
    num_heads: int
    embed_dim: int

    @nn.compact
    def __call__(self, x):
        if x.shape[-2] != self.window:
            raise ValueError(f"CAPP reads windows of {self.window} frames, got {x.shape[-2]}")
        x = Dense(self.width, name="input")(x)
        x = x + self.param("positions", nn.initializers.normal(0.02), (self.window, self.width))
        for index in range(self.num_layers):
            x = _Block(self.width, self.num_heads, name=f"block_{index}")(x)
        # The readout sees every frame at its place (flattened, not averaged): the embedding must say WHEN the
        # head moved or the voice rose within the window, which a mean over the frames washes out.
        x = nn.LayerNorm(name="norm_out")(x)
        x = Dense(self.embed_dim, name="output")(x.reshape(x.shape[:-2] + (-1,)))
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


class CAPP(nn.Module):
    """`apply(variables, pose, audio)` -> (pose embeddings, audio embeddings, logit scale); the inputs as
    `pose_input` and `audio_input` make them."""

    config: CappConfig

    def setup(self):
        c = self.config
        self.pose_encoder = SequenceEncoder(c.window, c.width, c.pose_layers, c.num_heads, c.embed_dim)
        self.audio_encoder = SequenceEncoder(c.window, c.width, c.audio_layers, c.num_heads, c.embed_dim)
        # CLIP's learned temperature, starting at 1 / 0.07
        self.log_logit_scale = self.param("log_logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

    def __call__(self, pose, audio):
        return self.pose_encoder(pose), self.audio_encoder(audio), jnp.exp(self.log_logit_scale)

    def score(self, pose, audio):
        """CAPP scores [B]: the cosine of each window's pose and audio embeddings."""
        pose_embedding, audio_embedding, _ = self(pose, audio)
        return jnp.sum(pose_embedding * audio_embedding, axis=-1)


def example_inputs(config: CappConfig, batch: int = 2):
    return (jnp.zeros((batch, config.window, config.pose_dim), jnp.float32),
            jnp.zeros((batch, config.window, config.audio_dim), jnp.float32))


def clip_loss(pose_embedding, audio_embedding, logit_scale):
    """CLIP's symmetric cross-entropy: window i's pose should pick window i's audio among the batch's, and back."""
    import optax

    logits = logit_scale * pose_embedding @ audio_embedding.T
    labels = jnp.arange(logits.shape[0])
    return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
