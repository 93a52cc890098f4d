"""Diffusion on motion windows: noise schedule, forward noising, classifier-free guidance and DDIM sampling.

The network predicts the clean signal x0 (VASA-1 eq. 1). DDIM (Song et al. 2020) with eta = 0 then needs only
x0: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) and x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps.
All functions are pure; `model_fn(x_t, t, conditions, keep) -> x0` is any network with MotionDiT's signature.
"""

from typing import Callable, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def alphas_cumprod(num_steps: int, kind: str = "cosine") -> np.ndarray:
    """abar_t for t = 0 .. T-1 (float64 numpy). 'cosine' is Nichol & Dhariwal's schedule, 'linear' DDPM's
    betas from 1e-4 to 0.02 (scaled to T)."""
    if num_steps < 2:
        raise ValueError(f"a noise schedule needs at least 2 steps, got {num_steps}")
    if kind == "cosine":
        s = 0.008
        f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
        u = np.arange(num_steps + 1) / num_steps
        betas = np.clip(1.0 - f(u[1:]) / f(u[:-1]), 0.0, 0.999)
    elif kind == "linear":
        scale = 1000.0 / num_steps
        betas = np.linspace(scale * 1e-4, scale * 0.02, num_steps)
    else:
        raise ValueError(f"unknown noise schedule {kind!r}; expected 'cosine' or 'linear'")
    return np.cumprod(1.0 - betas)


def add_noise(x0, noise, t, abar):
    """Sample q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with t [B] integer steps."""
    a = jnp.asarray(abar, jnp.float32)[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def ddim_timesteps(num_train_steps: int, num_sample_steps: int) -> np.ndarray:
    """Descending, evenly spaced steps from T-1 down to 0 (num_sample_steps of them)."""
    if not 1 <= num_sample_steps <= num_train_steps:
        raise ValueError(f"sampling steps must be in [1, {num_train_steps}], got {num_sample_steps}")
    return np.unique(np.linspace(0, num_train_steps - 1, num_sample_steps).round().astype(np.int32))[::-1].copy()


def ddim_step(x_t, x0, abar_t, abar_next):
    """One deterministic DDIM step from x_t (at abar_t) to the next, less noisy step (at abar_next)."""
    eps = (x_t - jnp.sqrt(abar_t) * x0) / jnp.sqrt(1.0 - abar_t)
    return jnp.sqrt(abar_next) * x0 + jnp.sqrt(1.0 - abar_next) * eps


def guided_x0(model_fn: Callable, x_t, t, conditions: Mapping, keep: Mapping, scales: Mapping[str, float]):
    """Classifier-free guidance, VASA-1 eq. 2: x0 = (1 + sum_c l_c) H(C) - sum_c l_c H(C | c = null).

    The conditional pass and one pass per guided condition (scale != 0) run as ONE batched network call:
    the batch is tiled 1 + n times and each extra copy nulls its condition through `keep`."""
    guided = [name for name, scale in scales.items() if scale != 0.0]
    if not guided:
        return model_fn(x_t, t, conditions, keep)
    unknown = sorted(set(guided) - set(keep))
    if unknown:
        raise ValueError(f"guidance for unknown conditions {unknown}; conditions: {sorted(keep)}")
    copies = 1 + len(guided)
    tile = lambda x: jnp.concatenate([x] * copies)
    tiled_keep = {}
    for name, mask in keep.items():
        parts = [mask] + [jnp.zeros_like(mask) if name == g else mask for g in guided]
        tiled_keep[name] = jnp.concatenate(parts)
    out = model_fn(tile(x_t), tile(t), jax.tree.map(tile, dict(conditions)), tiled_keep)
    out = out.reshape((copies, x_t.shape[0]) + x_t.shape[1:])
    total = sum(scales[g] for g in guided)
    return (1.0 + total) * out[0] - sum(scales[g] * out[1 + i] for i, g in enumerate(guided))


def ddim_sample(
    model_fn: Callable,
    rng,
    shape,
    conditions: Mapping,
    keep: Mapping,
    abar: np.ndarray,
    num_steps: int,
    scales: Mapping[str, float] | None = None,
):
    """Generate x0 of `shape` by DDIM with `num_steps` steps and classifier-free guidance `scales`
    ({condition: l_c}); deterministic given `rng`. Traceable: wrap it in jax.jit with static num_steps."""
    steps = ddim_timesteps(len(abar), num_steps)
    abar = np.asarray(abar)
    abar_t = jnp.asarray(abar[steps], jnp.float32)
    abar_next = jnp.asarray(np.append(abar[steps[1:]], 1.0), jnp.float32)  # the last step lands on x0
    steps = jnp.asarray(steps)
    x = jax.random.normal(rng, shape, jnp.float32)
    batch = shape[0]

    def body(i, x):
        t = jnp.full((batch,), steps[i], jnp.int32)
        x0 = guided_x0(model_fn, x, t, conditions, keep, scales or {})
        return ddim_step(x, x0, abar_t[i], abar_next[i])

    return jax.lax.fori_loop(0, len(abar_t), body, x)


def all_kept(batch: int, names) -> Dict[str, jnp.ndarray]:
    """`keep` masks with every condition present."""
    return {name: jnp.ones((batch,), bool) for name in names}
