"""The stage-2 training task: the motion diffusion transformer on a motion dataset (`vasa_jax.data.motion`).

Same interface as the stage-1 task (see `vasa_jax.train.stage1`), so the generic loop shards, checkpoints and
resumes it the same way. One step: draw t ~ U{0..T-1} and Gaussian noise, noise the clean window, drop the
conditions at random (each with its probability; the previous-window context with 0.5, and always where the
window has no full context), cut a random audio tail, predict x0 and take the L2 loss (VASA eq. 1).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from vasa_jax.checkpoints import stage2_model_config
from vasa_jax.data import motion as motion_data
from vasa_jax.models import diffusion
from vasa_jax.models.stage2 import CONDITIONS, MotionDiT, example_inputs
from vasa_jax.ops import precision
from vasa_jax.train.loop import fixed_batch, training_iterator
from vasa_jax.train.stage1 import make_optimizer

CONDITION_KEYS = ("audio", "audio_valid", "previous_motion", "previous_audio", "gaze", "distance", "emotion")


def drop_conditions(rng, batch, cfg_drop, window: int):
    """`keep` masks for one training batch, and the audio validity with a random tail cut off."""
    b = batch["motion"].shape[0]
    keys = jax.random.split(rng, len(CONDITIONS) + 2)
    keep = {
        name: jax.random.uniform(key, (b,)) >= getattr(cfg_drop, name) for name, key in zip(CONDITIONS, keys)
    }
    keep["previous"] = jnp.logical_and(keep["previous"], batch["previous_valid"])
    cut = jax.random.uniform(keys[-2], (b,)) < cfg_drop.audio_tail
    tail = jax.random.randint(keys[-1], (b,), 1, max(2, int(window * cfg_drop.audio_tail_max_fraction) + 1))
    valid_frames = jnp.where(cut, window - tail, window)
    audio_valid = jnp.logical_and(batch["audio_valid"], jnp.arange(window)[None] < valid_frames[:, None])
    return keep, audio_valid


class Stage2Task:
    def __init__(self, config):
        self.config = config
        self.model_cfg = stage2_model_config(config)
        self.model = MotionDiT(self.model_cfg)
        self.abar = diffusion.alphas_cumprod(self.model_cfg.num_train_steps, self.model_cfg.schedule)
        opt = config.optimizer
        self.tx = make_optimizer(opt.learning_rate, opt.end_learning_rate, opt.warmup_steps, config.train.num_steps, opt)
        self.compute_dtype = precision.compute_dtype(config.train.compute_dtype)

    # ------------------------------------------------------------------------------------------------ state
    def init_boxed(self, rng):
        params = self.model.init(rng, *example_inputs(self.model_cfg))["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": {"dit": params}, "opt_state": {"dit": self.tx.init(params)}}

    def load_frozen(self):
        return {}

    # ------------------------------------------------------------------------------------------------- step
    def loss(self, params, batch, rng):
        """(L2 x0 loss, predicted x0) for one batch."""
        x0 = batch["motion"]
        b = x0.shape[0]
        t_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
        t = jax.random.randint(t_rng, (b,), 0, len(self.abar))
        x_t = diffusion.add_noise(x0, jax.random.normal(noise_rng, x0.shape), t, self.abar)
        keep, audio_valid = drop_conditions(drop_rng, batch, self.config.condition_dropout, self.model_cfg.window)
        conditions = {k: batch[k] for k in CONDITION_KEYS}
        conditions["audio_valid"] = audio_valid
        prediction = precision.mixed_apply(self.model, {"params": params}, self.compute_dtype, x_t, t, conditions, keep)
        return jnp.mean((prediction - x0) ** 2), prediction

    def train_step(self, state, batch, frozen):
        del frozen
        rng = jax.random.fold_in(jax.random.key(self.config.seed), state["step"])
        params = state["params"]["dit"]
        (loss, _), grads = jax.value_and_grad(self.loss, has_aux=True)(params, batch, rng)
        updates, opt_state = self.tx.update(grads, state["opt_state"]["dit"], params)
        new_state = {
            "step": state["step"] + 1,
            "params": {"dit": optax.apply_updates(params, updates)},
            "opt_state": {"dit": opt_state},
        }
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    # ------------------------------------------------------------------------------------------------- data
    def source(self, split: str):
        c = self.model_cfg
        return motion_data.MotionWindowSource(self.config.data.root, split, c.window, c.context, self.config.data.stride)

    def train_iterator(self, process_index: int, process_count: int):
        return training_iterator(self.source("train"), self.config.data, process_index, process_count, _training_fields)

    @functools.cached_property
    def eval_batch(self):
        """Held-out windows (test identities; `data.eval_split`), as one numpy batch."""
        return fixed_batch(self.source(self.config.data.eval_split), self.config.data.eval_windows,
                           self.config.data.seed)

    # ------------------------------------------------------------------------------------------- evaluation
    @functools.cached_property
    def _eval_loss_jit(self):
        def eval_loss(params, batch, t, audio_kept):
            x0 = batch["motion"]
            noise = jax.random.normal(jax.random.key(0), x0.shape)
            x_t = diffusion.add_noise(x0, noise, t, self.abar)
            conditions = {k: batch[k] for k in CONDITION_KEYS}
            keep = diffusion.all_kept(x0.shape[0], CONDITIONS)
            keep["previous"] = batch["previous_valid"]
            keep["audio"] = jnp.logical_and(keep["audio"], audio_kept)
            prediction = self.model.apply({"params": params}, x_t, t, conditions, keep)
            return jnp.mean((prediction - x0) ** 2)

        return jax.jit(eval_loss)

    def evaluate(self, state) -> dict:
        """Held-out x0 error at fixed noise levels (a quarter, half and three quarters of the schedule), and at
        each the same with the audio condition nulled: the baseline that says how much the speech explains."""
        batch = _training_fields(self.eval_batch)
        params = state["params"]["dit"]
        n = len(batch["motion"])
        result = {}
        for fraction in (0.25, 0.5, 0.75):
            step = int(fraction * (len(self.abar) - 1))
            t = jnp.full((n,), step, jnp.int32)
            name = f"x0_mse_t{int(fraction * 100)}"
            result[name] = float(self._eval_loss_jit(params, batch, t, True))
            result[name + "_no_audio"] = float(self._eval_loss_jit(params, batch, t, False))
        return result

    def sample_grid(self, state):
        """Stage 2 has no image samples; generation (vasa_jax.generate) renders motion through stage 1."""
        return None


def _training_fields(item):
    """Drop the per-frame labels that only evaluation probes use."""
    return {k: v for k, v in item.items() if k != "mouth_open"}
