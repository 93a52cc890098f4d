"""The CAPP training task (`vasa_jax.models.capp`): VASA-1's contrastive audio-pose model on a prepared real-video
dataset (or the synthetic speakers), with the interface of the other tasks so the generic loop shards, checkpoints and resumes it.

One step: a batch of 3 s windows (pose and audio of the same window are the positive pairs, every other window of
the batch a negative), CLIP's symmetric cross-entropy with a learned temperature. Evaluation on held-out windows
(`data.eval_split`, the training split when that one has no speech): the mean CAPP score of true pairs, of the
same pairs with the audio shifted by 1 s and with the audio of another window, and the batch retrieval accuracy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vasa_jax import audio, video_metrics
from vasa_jax.checkpoints import capp_model_config
from vasa_jax.data import capp as capp_data
from vasa_jax.models.capp import CAPP, POSE_SCALE_DEGREES, clip_loss, example_inputs
from vasa_jax.train.loop import training_iterator
from vasa_jax.train.stage1 import make_optimizer

ONE_SECOND = int(round(audio.VIDEO_FPS))  # frames


class CappTask:
    def __init__(self, config):
        if config.data.source not in ("prepared", "synthetic"):
            raise ValueError(f"data.source must be 'prepared' or 'synthetic', got {config.data.source!r}")
        if config.data.source == "prepared" and not config.data.root:
            raise ValueError("CAPP trains on a prepared real-video dataset: set --config.data.root to the --output "
                             "folder of python -m vasa_jax.data.prepare")
        self.config = config
        self.audio_encoder = audio.make_audio_encoder(**dict(config.audio))
        self.model_cfg = capp_model_config(config, self.audio_encoder.feature_dim)
        self.model = CAPP(self.model_cfg)
        opt = config.optimizer
        self.tx = make_optimizer(opt.learning_rate, opt.end_learning_rate, opt.warmup_steps, config.train.num_steps, opt)

    # ------------------------------------------------------------------------------------------------ state
    def init_boxed(self, rng):
        params = self.model.init(rng, *example_inputs(self.model_cfg))["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": {"capp": params}, "opt_state": {"capp": self.tx.init(params)}}

    def load_frozen(self):
        return {}

    # ------------------------------------------------------------------------------------------------- step
    def loss(self, params, batch):
        # [B, G, W, D] groups of windows -> one contrastive batch of B * G windows
        pose, sound = (batch[k].reshape((-1,) + batch[k].shape[2:]) for k in ("pose", "audio"))
        pose_embedding, audio_embedding, logit_scale = self.model.apply({"params": params}, pose, sound)
        return clip_loss(pose_embedding, audio_embedding, logit_scale), logit_scale

    def train_step(self, state, batch, frozen):
        del frozen
        params = state["params"]["capp"]
        (loss, logit_scale), grads = jax.value_and_grad(self.loss, has_aux=True)(params, batch)
        updates, opt_state = self.tx.update(grads, state["opt_state"]["capp"], params)
        params = optax.apply_updates(params, updates)
        # CLIP clips the temperature so the logits stay at most 100
        params["log_logit_scale"] = jnp.minimum(params["log_logit_scale"], jnp.log(100.0))
        new_state = {"step": state["step"] + 1, "params": {"capp": params}, "opt_state": {"capp": opt_state}}
        return new_state, {"loss": loss, "logit_scale": logit_scale, "grad_norm": optax.global_norm(grads)}

    # ------------------------------------------------------------------------------------------------- data
    def clips(self, split: str):
        return capp_data.clips_for_config(self.config.data, split, self.audio_encoder)

    def train_iterator(self, process_index: int, process_count: int):
        data = self.config.data
        source = capp_data.CappWindowSource(self.clips("train"), self.model_cfg.window, data.stride,
                                            data.group, data.group_spacing)
        jitter = data.pose_jitter_degrees / POSE_SCALE_DEGREES

        def add_jitter(item, rng):
            # The pose an evaluation reads from frames jitters from frame to frame (MediaPipe's estimate); a CAPP
            # trained on smoother pose than it will read is brittle to it.
            return {**item, "pose": (item["pose"] + rng.normal(0.0, jitter, item["pose"].shape)).astype(np.float32)}

        return training_iterator(source, data, process_index, process_count,
                                 random_transform=add_jitter if jitter > 0 else None)

    @functools.cached_property
    def eval_clips(self):
        """(clips, held out?): the held-out split's clips with at least a window plus 1 s of speech (what the
        shifted pairs need); the training split's when the held-out one has none (1.0 / 0.0 in the metrics)."""
        needed = self.model_cfg.window + ONE_SECOND
        for split, held_out in ((self.config.data.eval_split, 1.0), ("train", 0.0)):
            clips = [clip for clip in self.clips(split) if len(clip["angles"]) >= needed]
            if clips:
                return clips, held_out
        raise ValueError(f"no clip with at least {needed} frames of speech to evaluate CAPP on")

    # ------------------------------------------------------------------------------------------- evaluation
    @functools.cached_property
    def _score_jit(self):
        return jax.jit(lambda params, pose, sound: self.model.apply({"params": params}, pose, sound, method="score"))

    @functools.cached_property
    def _embed_jit(self):
        return jax.jit(lambda params, pose, sound: self.model.apply({"params": params}, pose, sound))

    def evaluate(self, state) -> dict:
        clips, held_out = self.eval_clips
        params = state["params"]["capp"]
        score = lambda pose, sound: np.asarray(self._score_jit(params, pose, sound))  # noqa: E731
        window = self.model_cfg.window
        table = video_metrics.capp_shift_table(score, clips, window, (0, ONE_SECOND))
        result = {"capp_true": table[0], "capp_audio_shifted_1s": table[ONE_SECOND], "eval_is_held_out": held_out}
        source = capp_data.CappWindowSource(clips, window, max(1, window // 3))
        items = [source[i] for i in range(min(len(source), self.config.data.eval_windows))]
        pose = np.concatenate([item["pose"] for item in items])
        sound = np.concatenate([item["audio"] for item in items])
        pose_embedding, audio_embedding, _ = (np.asarray(v) for v in self._embed_jit(params, pose, sound))
        similarity = pose_embedding @ audio_embedding.T
        # another window's audio: half the list away (a window of another clip, or far along the same one)
        result["capp_other_window"] = float(np.mean(np.diag(np.roll(similarity, len(items) // 2, axis=1))))
        result["retrieval_accuracy"] = float(np.mean(np.argmax(similarity, axis=1) == np.arange(len(pose))))
        result["eval_windows"] = float(len(items))
        return result

    def sample_grid(self, state):
        """CAPP has no image samples."""
        return None
