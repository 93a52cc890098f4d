"""The pixel judge: a small CNN that reads a face frame's mouth opening, eye openness, gaze and head pose.

It is the evaluation's eyes, independent of stage 1 (its own weights, trained only on true rendered frames with their
known labels; see `vasa_jax.judge`), so a score it gives to a generated video says what the pixels show, not what
the model's latents claim.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

# What the judge reads, and the scales that bring each to about unit spread for training (openings are in [0, 1];
# angles in degrees).
OUTPUTS = ("mouth_open", "eye_open", "gaze_theta", "gaze_phi", "yaw", "pitch", "roll")
OUTPUT_SCALES = (1.0, 1.0, 1 / 20, 1 / 15, 1 / 30, 1 / 15, 1 / 10)


class FrameJudge(nn.Module):
    """[B, S, S, 3] frames in [0, 1] -> [B, len(OUTPUTS)] readings in scaled units (divide by OUTPUT_SCALES)."""

    channels: Sequence[int] = (16, 32, 64, 64)
    hidden: int = 128

    @nn.compact
    def __call__(self, images):
        def conv(x, channels, stride=1):
            # GroupNorm: without it the mouth took about 4x as many steps to learn (r = 0.41 against 0.86 after 500).
            x = nn.Conv(channels, (3, 3), strides=(stride, stride))(x)
            return nn.relu(nn.GroupNorm(num_groups=min(8, channels))(x))

        x = images.astype(jnp.float32) * 2.0 - 1.0
        x = conv(x, self.channels[0])  # full resolution first: an eye is a few pixels tall at 64 x 64
        for channels in self.channels:
            x = conv(conv(x, channels, stride=2), channels)
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(len(OUTPUTS))(x)
