"""Multi-scale patch discriminator (face-vid2vid / MegaPortraits style) with spectral normalisation.

Each scale sees the image resized by its factor and returns its intermediate feature maps (for the feature
matching loss) and a map of patch logits (for the hinge loss). Spectral normalisation keeps its power-iteration
vectors in the `batch_stats` collection; the trainer updates them during the discriminator step.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models.layers import GroupNorm, bias_init, conv_kernel_init


class SpectralConv2D(nn.Module):
    """A 'SAME' 2D convolution whose kernel is divided by its largest singular value, estimated by one power
    iteration per call from a vector kept in `batch_stats` (updated only when `update_stats` is true)."""

    features: int
    kernel: int = 4
    eps: float = 1e-12

    @nn.compact
    def __call__(self, x, update_stats: bool):
        kernel = self.param("kernel", conv_kernel_init(2), (self.kernel, self.kernel, x.shape[-1], self.features))
        bias = self.param("bias", bias_init(), (self.features,))
        matrix = kernel.reshape(-1, self.features)
        u_var = self.variable(
            "batch_stats", "u", lambda: jax.random.normal(jax.random.key(0), (1, self.features), jnp.float32)
        )
        u = jax.lax.stop_gradient(u_var.value)
        v = _l2_normalize(u @ matrix.T, self.eps)
        u_new = jax.lax.stop_gradient(_l2_normalize(v @ matrix, self.eps))
        sigma = jnp.sum((jax.lax.stop_gradient(v) @ matrix) * u_new)
        if update_stats and not self.is_initializing():
            u_var.value = u_new
        y = jax.lax.conv_general_dilated(
            x, (kernel / sigma).astype(x.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + bias.astype(y.dtype)


def _l2_normalize(x, eps):
    return x / (jnp.linalg.norm(x) + eps)


class PatchDiscriminator(nn.Module):
    """conv4x4 (spectral norm) - GroupNorm (not on the first block) - LeakyReLU(0.2) - avg-pool, per block; then a
    conv4x4 to one logit channel."""

    channels: Sequence[int] = (64, 128, 256, 512)

    @nn.compact
    def __call__(self, image, update_stats: bool):
        features = []
        x = image
        for index, channels in enumerate(self.channels):
            x = SpectralConv2D(channels)(x, update_stats)
            if index > 0:
                x = GroupNorm(channels)(x)
            x = nn.leaky_relu(x, 0.2)
            if index < len(self.channels) - 1:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            features.append(x)
        logits = SpectralConv2D(1)(x, update_stats)
        return features, logits.astype(jnp.float32)


class MultiScaleDiscriminator(nn.Module):
    """One PatchDiscriminator per scale factor; returns a list of (features, logits) pairs, one per scale."""

    scales: Sequence[float] = (1.0,)
    channels: Sequence[int] = (64, 128, 256, 512)

    @nn.compact
    def __call__(self, image, update_stats: bool = False):
        outputs = []
        for index, scale in enumerate(self.scales):
            x = image
            if scale != 1.0:
                size = (image.shape[0], int(image.shape[1] * scale), int(image.shape[2] * scale), image.shape[3])
                x = jax.image.resize(image, size, "linear", antialias=True)
            outputs.append(PatchDiscriminator(tuple(self.channels), name=f"scale_{index}")(x, update_stats))
        return outputs
