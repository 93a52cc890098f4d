"""Stage-2 motion diffusion transformer and the diffusion math: condition nulling, guidance, DDIM."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vasa_jax.models import diffusion
from vasa_jax.models.stage2 import CONDITIONS, MotionDiT, Stage2ModelConfig

TINY = dict(motion_dim=6, audio_dim=5, emotion_dim=3, window=8, context=3, width=32, num_layers=2, num_heads=4,
            num_train_steps=100)


def _inputs(cfg, batch, seed=0):
    keys = jax.random.split(jax.random.key(seed), 8)
    conditions = {
        "audio": jax.random.normal(keys[0], (batch, cfg.window, cfg.audio_dim)),
        "audio_valid": jnp.ones((batch, cfg.window), bool),
        "previous_motion": jax.random.normal(keys[1], (batch, cfg.context, cfg.motion_dim)),
        "previous_audio": jax.random.normal(keys[2], (batch, cfg.context, cfg.audio_dim)),
        "gaze": jax.random.normal(keys[3], (batch, 2)),
        "distance": jax.random.normal(keys[4], (batch, 1)),
        "emotion": jax.random.normal(keys[5], (batch, cfg.emotion_dim)),
    }
    x_t = jax.random.normal(keys[6], (batch, cfg.window, cfg.motion_dim))
    t = jax.random.randint(keys[7], (batch,), 0, 100)
    return x_t, t, conditions


@pytest.fixture(scope="module")
def dit():
    cfg = Stage2ModelConfig(**TINY)
    model = MotionDiT(cfg)
    x_t, t, conditions = _inputs(cfg, 2)
    params = nn.unbox(model.init(jax.random.key(1), x_t, t, conditions, diffusion.all_kept(2, CONDITIONS)))
    # The output head starts at zero; perturb every parameter so that each condition visibly reaches the output.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return cfg, model, params


def test_initial_prediction_is_the_preconditioning_skip_term():
    """The head F starts at zero, so the initial x0 is the skip term alone: with context, the anchor b (half the
    last context frame: the gate starts at sigmoid(0)) plus sqrt(abar_t) (x_t - sqrt(abar_t) b); without,
    sqrt(abar_t) x_t."""
    cfg = Stage2ModelConfig(**TINY)
    model = MotionDiT(cfg)
    x_t, t, conditions = _inputs(cfg, 2)
    keep = {**diffusion.all_kept(2, CONDITIONS), "previous": jnp.array([True, False])}
    params = nn.unbox(model.init(jax.random.key(1), x_t, t, conditions, keep))
    out = np.asarray(model.apply(params, x_t, t, conditions, keep))
    assert out.shape == (2, cfg.window, cfg.motion_dim)
    root_abar = np.sqrt(diffusion.alphas_cumprod(cfg.num_train_steps, cfg.schedule)[np.asarray(t)])[:, None, None]
    anchor = 0.5 * np.asarray(conditions["previous_motion"])[:, -1:] * np.array([1.0, 0.0])[:, None, None]
    expected = anchor + root_abar * (np.asarray(x_t) - root_abar * anchor)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected noisy motion"):
        model.apply(params, x_t[:, :-1], t, conditions, keep)


@pytest.mark.parametrize("name", CONDITIONS)
def test_a_dropped_condition_ignores_its_values(dit, name):
    """With keep[name] False the output no longer depends on that condition's values (it is replaced by the
    learned null), while with keep True it does; the other examples of the batch are untouched."""
    cfg, model, params = dit
    x_t, t, conditions = _inputs(cfg, 2)
    fields = {"audio": ["audio"], "previous": ["previous_motion", "previous_audio"], "gaze": ["gaze"],
              "distance": ["distance"], "emotion": ["emotion"]}[name]
    changed = dict(conditions)
    for field in fields:
        changed[field] = conditions[field] + 3.0
    keep = diffusion.all_kept(2, CONDITIONS)
    dropped = {**keep, name: jnp.array([False, True])}
    run = lambda c, k: np.asarray(model.apply(params, x_t, t, c, k))
    np.testing.assert_allclose(run(conditions, dropped)[0], run(changed, dropped)[0], atol=1e-6)
    assert np.abs(run(conditions, dropped)[1] - run(changed, dropped)[1]).max() > 1e-3
    assert np.abs(run(conditions, keep)[0] - run(conditions, dropped)[0]).max() > 1e-3


def test_a_model_without_emotion_labels_uses_the_null_emotion_token(dit):
    """Prepared data labelled without an emotion model has emotion_dim 0: the network builds (no zero-input Dense)
    and its emotion token is the learned null, the same one a dropped emotion gives in a labelled model."""
    cfg = Stage2ModelConfig(**{**TINY, "emotion_dim": 0})
    model = MotionDiT(cfg)
    x_t, t, conditions = _inputs(cfg, 2)
    keep = diffusion.all_kept(2, CONDITIONS)
    params = nn.unbox(model.init(jax.random.key(1), x_t, t, conditions, keep))
    assert "emotion" not in params["params"] and params["params"]["null_emotion"].shape == (cfg.width,)
    labelled_cfg, labelled, labelled_params = dit
    shared = {k: v for k, v in labelled_params["params"].items() if k != "emotion"}
    dropped = {**keep, "emotion": jnp.array([False, False])}
    out = model.apply({"params": shared}, x_t, t, conditions, keep)
    reference = labelled.apply(labelled_params, x_t, t, {**conditions, "emotion": jnp.zeros((2, 3))}, dropped)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=1e-6)


def test_invalid_audio_frames_are_ignored(dit):
    """The audio tail marked invalid (shorter audio, tail truncation) does not reach the output."""
    cfg, model, params = dit
    x_t, t, conditions = _inputs(cfg, 2)
    valid = jnp.arange(cfg.window)[None] < jnp.array([[5], [8]])
    conditions = {**conditions, "audio_valid": valid}
    noisy_tail = {**conditions, "audio": jnp.where(valid[..., None], conditions["audio"], 100.0)}
    keep = diffusion.all_kept(2, CONDITIONS)
    np.testing.assert_allclose(
        np.asarray(model.apply(params, x_t, t, conditions, keep)),
        np.asarray(model.apply(params, x_t, t, noisy_tail, keep)),
        atol=1e-6,
    )


def test_guidance_is_one_batched_call_equal_to_the_formula(dit):
    cfg, model, params = dit
    x_t, t, conditions = _inputs(cfg, 3)
    keep = diffusion.all_kept(3, CONDITIONS)
    calls = []

    def model_fn(x, tt, c, k):
        calls.append(x.shape[0])
        return model.apply(params, x, tt, c, k)

    scales = {"audio": 0.5, "gaze": 1.0, "emotion": 0.0}
    guided = diffusion.guided_x0(model_fn, x_t, t, conditions, keep, scales)
    assert calls == [9]  # 3 examples x (1 conditional + 2 guided nulls), one call
    full = model.apply(params, x_t, t, conditions, keep)
    no_audio = model.apply(params, x_t, t, conditions, {**keep, "audio": jnp.zeros(3, bool)})
    no_gaze = model.apply(params, x_t, t, conditions, {**keep, "gaze": jnp.zeros(3, bool)})
    expected = (1 + 1.5) * full - 0.5 * no_audio - 1.0 * no_gaze
    np.testing.assert_allclose(np.asarray(guided), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_noise_schedules():
    for kind in ("cosine", "linear"):
        abar = diffusion.alphas_cumprod(1000, kind)
        assert abar.shape == (1000,) and np.all(np.diff(abar) < 0)
        assert 0.99 < abar[0] < 1.0 and 0.0 <= abar[-1] < 0.01
    with pytest.raises(ValueError, match="unknown noise schedule"):
        diffusion.alphas_cumprod(100, "sigmoid")


@pytest.mark.parametrize("num_steps", [50, 10])
def test_ddim_with_an_exact_x0_predictor_returns_the_target(num_steps):
    """If the network always predicts the true x0, deterministic DDIM must land exactly on it."""
    abar = diffusion.alphas_cumprod(1000)
    target = jax.random.normal(jax.random.key(3), (2, 8, 6))
    steps = diffusion.ddim_timesteps(1000, num_steps)
    assert len(steps) == num_steps and steps[0] == 999 and steps[-1] == 0 and np.all(np.diff(steps) < 0)
    model_fn = lambda x, t, c, k: jnp.broadcast_to(target, x.shape[:1] + target.shape[1:]) * jnp.ones_like(x)
    out = diffusion.ddim_sample(model_fn, jax.random.key(4), target.shape, {}, {}, abar, num_steps)
    np.testing.assert_allclose(np.asarray(out), np.asarray(target), atol=1e-5)


def test_ddim_is_reproducible_per_seed(dit):
    cfg, model, params = dit
    _, _, conditions = _inputs(cfg, 2)
    keep = diffusion.all_kept(2, CONDITIONS)
    abar = diffusion.alphas_cumprod(100)
    fn = lambda x, t, c, k: model.apply(params, x, t, c, k)
    sample = jax.jit(
        lambda rng: diffusion.ddim_sample(fn, rng, (2, cfg.window, cfg.motion_dim), conditions, keep, abar, 10,
                                          {"audio": 0.5, "gaze": 1.0})
    )
    a, b, c = sample(jax.random.key(5)), sample(jax.random.key(5)), sample(jax.random.key(6))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
