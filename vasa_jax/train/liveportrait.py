"""Fine-tuning (or training) LivePortrait's renderer with the stage-1 trainer: `configs/stage1.py:liveportrait`.

The task is the stage-1 task (`vasa_jax.train.stage1`) with LivePortrait's networks as the generator: the same data
(source, driving and cross frames of a clip), discriminator, optimiser, checkpoints, evaluation against copying
the source and sample grid. It starts from the published checkpoints imported from `config.liveportrait_dir`
(`vasa_jax.models.liveportrait.load_liveportrait`), or from random weights when that is empty.

What differs from our own stage 1:
* The frames come at data.resolution, the renderer's output size; the networks read them downsampled by the
  decoder's upscale factor (2x2 means: 512 -> 256 for the published model).
* The image terms only (reconstruction L1, L1 in the mouth and the eyes, perceptual, adversarial over the image
  and over the mouth and the eyes, feature matching, identity on a cross-identity re-enactment). The keypoint,
  pose and expression terms read our stage 1's latents; LivePortrait's are already trained, and the config
  refuses those weights.
* BatchNorm statistics stay the imported ones (running averages, as at inference): a few images per step would
  make poor batch statistics. They live in the state beside the parameters, so a workdir is a whole model.
"""

import functools

import jax
import jax.numpy as jnp

from vasa_jax.models.liveportrait import LivePortrait, LivePortraitConfig, load_liveportrait
from vasa_jax import ops
from vasa_jax.train.stage1 import Stage1Task

# Loss weights of the stage-1 config that need our own model's latents or intermediates.
UNSUPPORTED_LOSSES = ("generated_l1", "blend_choice", "layout", "equivariance", "keypoint_prior", "head_pose",
                      "head_pose_bins", "deformation_prior", "pairwise_transfer", "expression_labels",
                      "adversarial_detach_motion", "rendered_expression", "iris_warp")


class LivePortraitTask(Stage1Task):
    def _build_model(self, config):
        model_cfg = LivePortraitConfig.from_config(config.model)
        if config.data.resolution != model_cfg.output_size:
            raise ValueError(
                f"data.resolution ({config.data.resolution}) must equal LivePortrait's output size "
                f"(model.image_size {model_cfg.image_size} x model.decoder_upscale {model_cfg.decoder_upscale})")
        switched_on = [name for name in UNSUPPORTED_LOSSES if config.losses[name] > 0]
        if switched_on:
            raise ValueError(
                f"losses {switched_on} read our stage-1 model's latents; the LivePortrait task trains with "
                "reconstruction_l1, region_l1, perceptual, adversarial, region_adversarial, feature_matching and "
                "identity: set them to 0")
        return model_cfg, LivePortrait(model_cfg)

    def model_input(self, images):
        """Frames at the output size [B, R, R, 3] -> what F and M read [B, R / u, R / u, 3], by averaging u x u
        blocks (u = the decoder's upscale)."""
        factor = max(self.model_cfg.decoder_upscale, 1)
        b, h, w, c = images.shape
        return images.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))

    def init_boxed(self, rng):
        size = self.model_cfg.image_size
        image = jnp.zeros((1, size, size, 3), jnp.float32)
        gen_rng, disc_rng = jax.random.split(rng)
        generator = self.model.init(gen_rng, image, image)
        disc_vars = self.discriminator.init(disc_rng, self._discriminator_init_input(self.model_cfg.output_size))
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": {"generator": generator["params"], "discriminator": disc_vars["params"]},
            "batch_stats": {"discriminator": disc_vars["batch_stats"], "generator": generator["batch_stats"]},
            "opt_state": {
                "generator": self.generator_tx.init(generator["params"]),
                "discriminator": self.discriminator_tx.init(disc_vars["params"]),
            },
        }

    def pretrained_state(self, state, shardings):
        """The fresh state with the generator's parameters and BatchNorm statistics imported from
        config.liveportrait_dir (unchanged when that is empty: training from random weights)."""
        folder = self.config.liveportrait_dir
        if not folder:
            if jax.process_index() == 0:
                print("config.liveportrait_dir is empty: LivePortrait starts from random weights", flush=True)
            return state
        variables = load_liveportrait(folder, self.model_cfg)
        state = dict(state)
        state["params"] = {**state["params"], "generator": variables["params"]}
        state["batch_stats"] = {**state["batch_stats"], "generator": variables["batch_stats"]}
        if jax.process_index() == 0:
            print(f"LivePortrait imported from {folder}", flush=True)
        return jax.device_put(state, shardings)

    def _generator_constants(self, state):
        return {"batch_stats": state["batch_stats"]["generator"]}

    def _render(self, variables, source, motion_frames, network=None):
        """The source [B, R, R, 3] re-enacted with the motion of each frame batch in `motion_frames` (each [B, R,
        R, 3]), in one decoder call (the batches joined example by example, `ops.join_frames`) -> one
        [B, R, R, 3] render per motion batch. `network(module, variables, *args, method=...)` makes the network
        calls (a training step's `_network`; default: plain float32 `apply`)."""
        network = network or (lambda module, *args, **kwargs: module.apply(*args, **kwargs))
        apply = lambda method, *args: network(self.model, variables, *args, method=method)
        n = len(motion_frames)
        tile = lambda x: ops.join_frames([x] * n)
        volume, kp, pose_s, exp_s = apply(LivePortrait.encode, self.model_input(source))
        poses, exps = apply(LivePortrait.encode_motion, self.model_input(ops.join_frames(motion_frames)))
        renders = apply(LivePortrait.decode, tile(volume), tile(kp), tile(pose_s), tile(exp_s), poses, exps)
        return ops.split_frames(renders, n)

    def _generator_losses(self, gen_params, constants, disc_vars, frozen, images, batch, rng):
        del rng  # (no random terms)
        cfg = self.config.losses
        source, driving, cross = images["source"], images["driving"], images["cross"]
        renders = self._render({"params": gen_params, **constants}, source,
                               [driving] + ([cross] if cfg.identity > 0 else []), self._network)
        reconstruction = renders[0]
        terms = self._image_terms(frozen, disc_vars, batch, source, driving, reconstruction)
        if cfg.identity > 0:
            terms["identity"] = self._identity_term(frozen, source, renders[1])
        total = sum(getattr(cfg, name) * value for name, value in terms.items())
        return total, (terms, reconstruction)

    @functools.lru_cache(maxsize=2)
    def _reconstruct_jit(self, mesh):
        def reconstruct(variables, source, driving, cross):
            reconstruction, reenacted = self._render(variables, source, [driving, cross])
            # No pose in our convention, image-skip blend or expression readout to report.
            return reconstruction, reenacted, None, None, None

        return jax.jit(reconstruct, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
