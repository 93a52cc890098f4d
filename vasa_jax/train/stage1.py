"""The stage-1 training task: face latent model + multi-scale discriminator, their losses and one jitted step that
updates both, the data iterator, held-out evaluation and the sample grid.

A task gives the generic loop (`vasa_jax.train.loop`) everything model-specific:
  init_boxed(rng)                    -> state pytree with logical-axis boxes (shardings are derived from it)
  load_frozen()                      -> frozen pretrained params (VGG19, ArcFace) passed to every step
  train_step(state, batch, frozen)   -> (state, metrics)                   pure; jitted by the loop
  train_iterator(index, count)       -> checkpointable grain iterator of per-process numpy batches
  evaluate(state)                    -> dict of held-out metrics          (every process calls it)
  sample_grid(state)                 -> uint8 image for TensorBoard/PNG   (every process calls it)
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vasa_jax import evaluate, ops
from vasa_jax.data import face, prepared, synthetic
from vasa_jax.data import regions as regions_lib
from vasa_jax.losses import stage1 as losses
from vasa_jax.models import arcface, vgg19
from vasa_jax.models.discriminator import MultiScaleDiscriminator
from vasa_jax.models.stage1 import (
    EXPRESSION_LABELS, FaceLatentModel, Stage1ModelConfig, keypoints_from_latents, split_dynamics,
)
from vasa_jax.ops import precision
from vasa_jax.train.loop import fixed_batch, training_iterator


def make_optimizer(learning_rate: float, end_learning_rate: float, warmup_steps: int, num_steps: int, opt_cfg):
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=min(warmup_steps, max(num_steps - 1, 1)),
        decay_steps=max(num_steps, warmup_steps + 1),
        end_value=end_learning_rate,
    )
    return optax.chain(
        optax.clip_by_global_norm(opt_cfg.grad_clip_norm),
        optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay),
    )


def to_float_images(batch, keys=("source", "driving", "cross", "extra_frames")):
    return {k: batch[k].astype(jnp.float32) / 255.0 for k in keys if k in batch}


def frame_labels(batch, frame: str, name: str):
    """A label of the named frames of a batch ("source", "driving" or "extra") per item: [B, 1, ...], or
    [B, N, ...] for the N extra frames of each item (the parts `ops.join_examples` joins)."""
    value = batch[f"{frame}_{name}"]
    return value if frame == "extra" else value[:, None]


def expression_labels(batch, frames):
    """The per-frame labels the expression readout is supervised with, [rows, 4] in EXPRESSION_LABELS order, for
    the named frames of a batch joined example by example (`frame_labels`, `ops.join_examples`)."""
    rows = []
    for frame in frames:
        mouth, eyes, gaze = (frame_labels(batch, frame, name) for name in ("mouth_open", "eye_open", "gaze"))
        rows.append(jnp.stack([mouth, eyes, gaze[..., 0], gaze[..., 1]], -1))
    labels = ops.join_examples(rows).astype(jnp.float32)
    assert labels.shape[-1] == len(EXPRESSION_LABELS)
    return labels


class Stage1Task:
    def __init__(self, config):
        self.config = config
        self.model_cfg, self.model = self._build_model(config)
        self.discriminator = MultiScaleDiscriminator(
            scales=tuple(config.discriminator.scales), channels=tuple(config.discriminator.channels)
        )
        opt = config.optimizer
        steps = config.train.num_steps
        self.generator_tx = make_optimizer(opt.learning_rate, opt.end_learning_rate, opt.warmup_steps, steps, opt)
        self.discriminator_tx = make_optimizer(
            opt.discriminator_learning_rate, opt.end_learning_rate, opt.warmup_steps, steps, opt
        )
        self.perceptual_net = vgg19.VGG19Features(layers=tuple(config.losses.perceptual_layers.keys()))
        self.batch_size = config.data.batch_size
        self.compute_dtype = precision.compute_dtype(config.train.compute_dtype)

    def _build_model(self, config):
        """(model config, generator module) from config.model, checked against the data and the losses."""
        model_cfg = Stage1ModelConfig.from_config(config.model)
        if config.data.resolution != model_cfg.image_size:
            raise ValueError(
                f"data.resolution ({config.data.resolution}) must equal model.image_size ({model_cfg.image_size})"
            )
        for name in ("generated_l1", "blend_choice", "iris_warp"):  # they read the image-skip path's outputs
            if config.losses[name] > 0 and not model_cfg.gen_image_skip:
                raise ValueError(f"losses.{name} needs a model with the image-space skip path (model.gen_image_skip)")
        return model_cfg, FaceLatentModel(model_cfg)

    # ----------------------------------------------------------------------------------------------- state
    def init_boxed(self, rng):
        size = self.model_cfg.image_size
        image = jnp.zeros((1, size, size, 3), jnp.float32)
        gen_rng, disc_rng = jax.random.split(rng)
        generator = self.model.init(gen_rng, image, image)["params"]
        disc_vars = self.discriminator.init(disc_rng, self._discriminator_init_input(size))
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": {"generator": generator, "discriminator": disc_vars["params"]},
            "batch_stats": {"discriminator": disc_vars["batch_stats"]},
            "opt_state": {
                "generator": self.generator_tx.init(generator),
                "discriminator": self.discriminator_tx.init(disc_vars["params"]),
            },
        }

    def load_frozen(self):
        """Frozen feature networks, loaded from their published checkpoints (or random when the config allows)."""
        cfg = self.config.feature_nets
        weights = self.config.losses
        frozen = {}
        if weights.perceptual > 0:
            frozen["vgg19"] = _load_or_init(
                cfg.vgg19_path, "feature_nets.vgg19_path", cfg.allow_random_init,
                vgg19.load_vgg19_params, lambda: vgg19.init_vgg19_params(jax.random.key(1)),
            )
        if weights.identity > 0:
            frozen["arcface"] = _load_or_init(
                cfg.arcface_path, "feature_nets.arcface_path", cfg.allow_random_init,
                lambda p: arcface.load_arcface_params(p, cfg.arcface_depth),
                lambda: arcface.init_arcface_params(jax.random.key(2), cfg.arcface_depth),
            )
        return frozen

    # ------------------------------------------------------------------------------------------------ step
    def _network(self, module, variables, *args, **kwargs):
        """`module.apply(variables, *args, **kwargs)` as a training step runs it: in train.compute_dtype (float32
        parameters cast at the call, float32 outputs: `ops.precision.mixed_apply`) and, with train.remat, with its
        activations recomputed in the backward pass instead of kept (`jax.checkpoint`: memory for compute)."""
        call = lambda variables, *args: precision.mixed_apply(module, variables, self.compute_dtype, *args, **kwargs)
        if self.config.train.remat:
            call = jax.checkpoint(call)
        return call(variables, *args)

    def _discriminator_init_input(self, size):
        """A zero input of the discriminator's shape: the image, and with discriminator.layout_condition the
        layout maps beside it."""
        channels = 3 + (len(regions_lib.LAYOUT_NAMES) if self._layout_condition else 0)
        return jnp.zeros((1, size, size, channels), jnp.float32)

    @property
    def _layout_condition(self):
        return bool(self.config.discriminator.get("layout_condition", False))

    def _discriminate(self, disc_vars, real, fake, batch, **kwargs):
        """The discriminator on the real and generated frames in one batch joined example by example
        (`ops.join_frames`: a batch-sharded step keeps each example on its device). With
        discriminator.layout_condition each image is shown beside the driving frame's layout maps (mouth interior,
        eye openings, irises), so a sharp image of the wrong expression (the warped source's open eyes where the
        frame's are shut) is told from the real frame: a conditional GAN, as pix2pix conditions on its input."""
        images = ops.join_frames([real, fake])
        if self._layout_condition:
            layout = batch["driving_layout"].astype(images.dtype)
            images = jnp.concatenate([images, ops.join_frames([layout, layout])], axis=-1)
        return self._network(self.discriminator, disc_vars, images, **kwargs)

    def _generator_constants(self, state):
        """Generator variables that training reads but never updates, beside its params: none for our model
        (LivePortrait's task keeps its pretrained BatchNorm statistics here)."""
        del state
        return {}

    def _generator_losses(self, gen_params, constants, disc_vars, frozen, images, batch, rng):
        del constants  # (none)
        cfg = self.config.losses
        model = self.model
        apply = lambda method, *args: self._network(model, {"params": gen_params}, *args, method=method)
        source, driving, cross = images["source"], images["driving"], images["cross"]
        b = source.shape[0]
        terms = {}
        # Several frames of each item go through one network call as one batch, joined example by example so that
        # a batch-sharded step keeps every example on its device (`ops.join_examples`, `ops.join_frames`).

        # One encoder pass over every frame with labels (source, driving and the extra frames: data.extra_frames per
        # item, which only the pose and expression-label losses see, so the encoders see many more faces per step
        # than the decoder renders) and, when the identity loss needs its motion, the cross frame.
        extra = images.get("extra_frames")
        labelled = ("source", "driving") + (("extra",) if extra is not None else ())
        frames = [source[:, None], driving[:, None]] + ([extra] if extra is not None else [])
        if cfg.identity > 0:
            frames.append(cross[:, None])
        sizes = [f.shape[1] for f in frames]
        poses, dyns, pose_logits = (ops.split_examples(x, sizes)
                                    for x in apply(FaceLatentModel.estimate_pose, ops.join_examples(frames)))
        pose_s, pose_d, dyn_s, dyn_d = poses[0][:, 0], poses[1][:, 0], dyns[0][:, 0], dyns[1][:, 0]
        labelled_pose, labelled_dyn, labelled_logits = (ops.join_examples(x[: len(labelled)])
                                                        for x in (poses, dyns, pose_logits))
        if cfg.pairwise_transfer > 0:
            volumes, ids = apply(FaceLatentModel.encode_appearance, ops.join_frames([source, driving]))
            (vol_s, vol_d), (id_s, id_d) = ops.split_frames(volumes, 2), ops.split_frames(ids, 2)
        else:
            vol_s, id_s = apply(FaceLatentModel.encode_appearance, source)

        # All renders of the source volume in one decoder call: reconstruction of the driving frame, driving pose
        # with the source's own dynamics (pairwise transfer), and the cross identity's motion (identity loss).
        targets = [(pose_d, dyn_d)]
        if cfg.pairwise_transfer > 0:
            targets.append((pose_d, dyn_s))
        if cfg.identity > 0:
            targets.append((poses[-1][:, 0], dyns[-1][:, 0]))  # the cross frame's
        n = len(targets)
        tile = lambda x: ops.join_frames([x] * n)
        per_target = lambda x: ops.split_frames(x, n)
        renders, intermediates = self._network(
            model, {"params": gen_params},
            tile(vol_s), tile(id_s), tile(pose_s), tile(dyn_s),
            ops.join_frames([t[0] for t in targets]), ops.join_frames([t[1] for t in targets]), tile(source),
            method=FaceLatentModel.decode,
            mutable=["intermediates"],
        )
        renders = per_target(renders)
        reconstruction = renders[0]

        judged = reconstruction
        if self._trains_discriminator and cfg.get("adversarial_detach_motion", False):
            # The discriminator's terms judge a second render of the same frame whose keypoints, poses and dynamics
            # are held constant: its gradient trains the appearance, the warp's networks and the generator, not the
            # encoders of motion, which through the warp could buy a sharper image by moving the head. Measured on
            # the tiny stage 1 with the region GAN (NOTES.md, 2026-12-04, tenth sitting): head-pose error 5.2 -> 4.8
            # degrees on one seed, and no large-pose gain back.
            keep = jax.lax.stop_gradient
            judged = apply(FaceLatentModel.decode, vol_s, keep(id_s), keep(pose_s), keep(dyn_s), keep(pose_d),
                           keep(dyn_d), source)
        terms.update(self._image_terms(frozen, disc_vars, batch, source, driving, reconstruction, judged))
        generated = None
        if self.model_cfg.gen_image_skip:
            generated = per_target(intermediates["intermediates"]["generator"]["generated"][0])[0]
        if cfg.layout > 0:
            layout_logits = per_target(intermediates["intermediates"]["generator"]["layout_logits"][0])[0]
            terms["layout"] = losses.layout_loss(layout_logits, batch["driving_layout"])
        if cfg.generated_l1 > 0:
            terms["generated_l1"] = losses.pyramid_l1(generated, driving, cfg.reconstruction_scales)
        if cfg.region_l1 > 0 and generated is not None:
            # The region L1 on the generator's own image (before the blend with the warped source) too, which is
            # what can render an opening the warped source lacks.
            terms["region_l1"] = terms["region_l1"] + losses.region_l1(generated, driving, batch["driving_regions"])
        if cfg.blend_choice > 0:
            generator_intermediates = intermediates["intermediates"]["generator"]
            terms["blend_choice"] = losses.blend_choice_loss(
                per_target(generator_intermediates["blend_logits"][0])[0],
                per_target(generator_intermediates["blend_source"][0])[0], generated, driving)
        if cfg.equivariance > 0 or cfg.keypoint_prior > 0:
            tps = ops.sample_tps_params(
                rng, b, sigma_affine=cfg.tps_sigma_affine, sigma_tps=cfg.tps_sigma_tps, points_tps=cfg.tps_points
            )
            warped = ops.tps_warp_image(tps, driving)
            # The driving frame's pose and dynamics are already estimated; only its canonical keypoints are new.
            id_driving, id_warped = ops.split_frames(
                apply(FaceLatentModel.encode_identity, ops.join_frames([driving, warped])), 2)
            pose_w, dyn_w = apply(FaceLatentModel.encode_motion, warped)
            kp_driving = keypoints_from_latents(id_driving, pose_d, dyn_d)
            kp_warped = keypoints_from_latents(id_warped, pose_w, dyn_w)
            if cfg.equivariance > 0:
                terms["equivariance"] = losses.equivariance_loss(kp_driving, kp_warped, tps)
            if cfg.keypoint_prior > 0:
                terms["keypoint_prior"] = losses.keypoint_prior_loss(
                    kp_driving, cfg.keypoint_min_distance, cfg.keypoint_mean_depth
                )
        pose_labels = ops.join_examples([frame_labels(batch, frame, "pose") for frame in labelled])
        if cfg.head_pose > 0:
            terms["head_pose"] = losses.head_pose_loss(labelled_pose, pose_labels)
        if cfg.head_pose_bins > 0:
            terms["head_pose_bins"] = losses.head_pose_bin_loss(labelled_logits, pose_labels)
        if cfg.expression_labels > 0:
            readout = apply(FaceLatentModel.read_expression, labelled_dyn)
            terms["expression_labels"] = losses.expression_label_loss(
                readout, expression_labels(batch, labelled), cfg.expression_label_scales)
        if cfg.get("rendered_expression", 0.0) > 0:
            # The encoder, its weights held, reads a render of the driving frame: the gradient asks the render to
            # show the driving frame's expression, not the reader to find it there. The render's canonical keypoints
            # and head poses are held too (one more decoder pass): read back through the reconstruction itself, the
            # term turned the head (tiny stage 1, 1000 steps: head-pose error 4.2 -> 8.0 degrees, large-pose gain
            # +1.7 -> +0.7 dB; NOTES.md, eleventh sitting).
            keep = jax.lax.stop_gradient
            render = apply(FaceLatentModel.decode, vol_s, keep(id_s), keep(pose_s), dyn_s, keep(pose_d), dyn_d, source)
            read = self._network(model, {"params": keep(gen_params)}, render,
                                 method=FaceLatentModel.read_image_expression)
            terms["rendered_expression"] = losses.expression_label_loss(
                read, expression_labels(batch, ("driving",)), cfg.expression_label_scales)
        if cfg.iris_warp > 0:
            # The source frame's iris map warped by the render's grid of the source image against the driving
            # frame's. The canonical keypoints and head poses are held, as for rendered_expression: the term moves
            # the irises inside the face, not the head.
            keep = jax.lax.stop_gradient
            grid = apply(FaceLatentModel.source_image_grid, source, keep(id_s), keep(pose_s), dyn_s, keep(pose_d),
                         dyn_d)
            iris = regions_lib.LAYOUT_NAMES.index("iris")
            terms["iris_warp"] = losses.iris_warp_loss(grid, batch["source_layout"][..., iris],
                                                       batch["driving_layout"][..., iris])
        if cfg.deformation_prior > 0:
            deformation, _ = split_dynamics(labelled_dyn, self.model_cfg.num_keypoints)
            terms["deformation_prior"] = losses.deformation_prior_loss(deformation)
        if cfg.pairwise_transfer > 0:
            dynamics_transferred = apply(FaceLatentModel.decode, vol_d, id_d, pose_d, dyn_d, pose_d, dyn_s, driving)
            terms["pairwise_transfer"] = losses.pairwise_transfer_loss(renders[1], dynamics_transferred)
        if cfg.identity > 0:
            terms["identity"] = self._identity_term(frozen, source, renders[-1])

        total = sum(getattr(cfg, name) * value for name, value in terms.items())
        return total, (terms, reconstruction)

    def _image_terms(self, frozen, disc_vars, batch, source, driving, reconstruction, judged=None):
        """The terms that compare the reconstruction of the driving frame with it (each computed only when its
        weight is on): pyramid L1, L1 inside the mouth and the eyes (where expression shows), perceptual, and the
        discriminator's adversarial (over the image, and over the mouth and the eyes) and feature-matching terms.
        `judged` is the render the discriminator's terms see (default: the reconstruction)."""
        judged = reconstruction if judged is None else judged
        cfg = self.config.losses
        terms = {}
        if cfg.reconstruction_l1 > 0:
            terms["reconstruction_l1"] = losses.pyramid_l1(reconstruction, driving, cfg.reconstruction_scales)
        if cfg.region_l1 > 0:
            terms["region_l1"] = losses.region_l1(reconstruction, driving, batch["driving_regions"])
        if cfg.perceptual > 0:
            vgg = lambda x: self._network(self.perceptual_net, frozen["vgg19"], x)
            terms["perceptual"] = losses.perceptual_loss(
                vgg, reconstruction, driving, dict(cfg.perceptual_layers), cfg.perceptual_scales
            )
        if self._trains_discriminator:
            outputs = self._discriminate(disc_vars, driving, judged, batch)
            real_features = [[ops.split_frames(f, 2)[0] for f in feats] for feats, _ in outputs]
            fake_features = [[ops.split_frames(f, 2)[1] for f in feats] for feats, _ in outputs]
            fake_logits = [ops.split_frames(lg, 2)[1] for _, lg in outputs]
            if cfg.adversarial > 0:
                terms["adversarial"] = losses.hinge_generator_loss(fake_logits)
            if cfg.region_adversarial > 0:
                terms["region_adversarial"] = losses.hinge_generator_loss(
                    fake_logits, self._region_patch_weights(batch, fake_logits))
            if cfg.feature_matching > 0:
                terms["feature_matching"] = losses.feature_matching_loss(real_features, fake_features)
        return terms

    @property
    def _trains_discriminator(self):
        cfg = self.config.losses
        return cfg.adversarial > 0 or cfg.feature_matching > 0 or cfg.region_adversarial > 0

    @staticmethod
    def _region_patch_weights(batch, logits):
        return [losses.region_patch_weights(batch["driving_regions"], lg.shape) for lg in logits]

    def _identity_term(self, frozen, source, reenacted):
        # ArcFace sees the aligned face it was trained on, cut from the known framing of the training crop.
        embed = lambda x: arcface.arcface_embed(
            frozen["arcface"], arcface.crop_square(x, face.ARCFACE_BOX_IN_CROP), self.config.feature_nets.arcface_depth,
            dtype=self.compute_dtype).astype(jnp.float32)
        return losses.identity_loss(embed, source, reenacted)

    def train_step(self, state, batch, frozen):
        """One generator update and one discriminator update (on the generator's pre-update reconstructions)."""
        cfg = self.config.losses
        rng = jax.random.fold_in(jax.random.key(self.config.seed), state["step"])
        images = to_float_images(batch)
        params = state["params"]
        disc_vars = {"params": params["discriminator"], "batch_stats": state["batch_stats"]["discriminator"]}

        grad_fn = jax.value_and_grad(self._generator_losses, has_aux=True)
        (gen_total, (terms, reconstruction)), gen_grads = grad_fn(
            params["generator"], self._generator_constants(state), disc_vars, frozen, images, batch, rng
        )
        gen_updates, gen_opt = self.generator_tx.update(
            gen_grads, state["opt_state"]["generator"], params["generator"]
        )
        new_generator = optax.apply_updates(params["generator"], gen_updates)

        new_disc_params, disc_opt, new_stats = params["discriminator"], state["opt_state"]["discriminator"], disc_vars["batch_stats"]
        metrics = {}
        if self._trains_discriminator:
            fake = jax.lax.stop_gradient(reconstruction)

            def disc_loss_fn(disc_params):
                outputs, updates = self._discriminate(
                    {"params": disc_params, "batch_stats": disc_vars["batch_stats"]}, images["driving"], fake, batch,
                    update_stats=True, mutable=["batch_stats"])
                logits = [lg for _, lg in outputs]
                real_logits, fake_logits = zip(*(ops.split_frames(lg, 2) for lg in logits))
                # The whole image's hinge for the adversarial and feature-matching terms; the mouth's and the
                # eyes' for the region term (a discriminator that judges only the regions when it is the only one).
                loss = 0.0
                if cfg.adversarial > 0 or cfg.feature_matching > 0:
                    loss = loss + losses.hinge_discriminator_loss(list(real_logits), list(fake_logits))
                if cfg.region_adversarial > 0:
                    loss = loss + losses.hinge_discriminator_loss(
                        list(real_logits), list(fake_logits), self._region_patch_weights(batch, fake_logits))
                return loss, updates["batch_stats"]

            (disc_loss, new_stats), disc_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(params["discriminator"])
            disc_updates, disc_opt = self.discriminator_tx.update(disc_grads, disc_opt, params["discriminator"])
            new_disc_params = optax.apply_updates(params["discriminator"], disc_updates)
            metrics["discriminator_loss"] = disc_loss
            metrics["discriminator_grad_norm"] = optax.global_norm(disc_grads)

        metrics.update(terms)
        metrics["generator_loss"] = gen_total
        metrics["generator_grad_norm"] = optax.global_norm(gen_grads)
        metrics["psnr"] = jnp.mean(losses.psnr(reconstruction, images["driving"]))
        new_state = {
            "step": state["step"] + 1,
            "params": {"generator": new_generator, "discriminator": new_disc_params},
            "batch_stats": {**state["batch_stats"], "discriminator": new_stats},
            "opt_state": {"generator": gen_opt, "discriminator": disc_opt},
        }
        return new_state, metrics

    # ------------------------------------------------------------------------------------------------ data
    def _source(self, split: str):
        data = self.config.data
        if data.source == "synthetic":
            config = synthetic.from_stage1_config(self.config)
            if split != "train":  # held-out evaluation renders the clips' own pairs only
                config = dataclasses.replace(config, extra_frames=0, random_expression=0.0)
            return synthetic.SyntheticStage1Source(config, split)
        if data.source == "prepared":
            if not data.root:
                raise ValueError("data.source 'prepared' needs data.root: the --output folder of "
                                 "python -m vasa_jax.data.prepare")
            return prepared.PreparedStage1Source(data.root, split, data.resolution, data.pairs_per_record, data.seed,
                                                 data.extra_frames if split == "train" else 0)
        raise ValueError(f"unknown data.source {data.source!r} for stage 1; available: 'synthetic', 'prepared'")

    def train_iterator(self, process_index: int, process_count: int):
        """Shuffled, repeated, per-process-sharded batches of this process's share of the global batch
        (augmented when the data are prepared real videos and data.augment is on)."""
        data = self.config.data
        augment = None
        if data.source == "prepared" and data.augment:
            augment = functools.partial(prepared.augment_stage1, colour=data.colour_jitter)
        return training_iterator(self._source("train"), data, process_index, process_count, random_transform=augment)

    @functools.cached_property
    def eval_batch(self):
        """A fixed set of held-out pairs (test identities), as one numpy batch."""
        return fixed_batch(self._source("test"), self.config.data.eval_pairs, self.config.data.seed)

    # ------------------------------------------------------------------------------------------- evaluation
    def _generator_variables(self, state):
        return {"params": state["params"]["generator"], **self._generator_constants(state)}

    def _reconstruct(self, variables, source, driving, cross):
        """(reconstruction of driving, source re-enacted with cross's motion, predicted driving pose, the warped
        source's blend weight [B, H, W, 1] in the reconstruction (ones without the image skip path), the expression
        readout of the driving frame [B, 4]), as numpy; None for the last three where the generator has no such
        output (LivePortrait's). The outputs are replicated so that every process of a multi-host run can read
        them."""
        mesh = jax.tree.leaves(variables)[0].sharding.mesh
        return jax.device_get(self._reconstruct_jit(mesh)(variables, source, driving, cross))

    @functools.lru_cache(maxsize=2)
    def _reconstruct_jit(self, mesh):
        def reconstruct(variables, source, driving, cross):
            apply = lambda method, *args, **kw: self.model.apply(variables, *args, method=method, **kw)
            volume, z_id, pose_s, dyn_s = apply(FaceLatentModel.encode, source)
            pose, dyn = apply(FaceLatentModel.encode_motion, jnp.concatenate([driving, cross]))
            b = source.shape[0]
            render = lambda p, d, **kw: apply(FaceLatentModel.decode, volume, z_id, pose_s, dyn_s, p, d, source, **kw)
            recon, intermediates = render(pose[:b], dyn[:b], mutable=["intermediates"])
            blend_logits = intermediates.get("intermediates", {}).get("generator", {}).get("blend_logits")
            blend = (jax.nn.sigmoid(blend_logits[0]) if blend_logits is not None
                     else jnp.ones(recon.shape[:3] + (1,), recon.dtype))
            readout = apply(FaceLatentModel.read_expression, dyn[:b])
            return recon, render(pose[b:], dyn[b:]), pose[:b], blend, readout

        return jax.jit(reconstruct, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    def evaluate(self, state) -> dict:
        """Held-out reconstruction PSNR against the copy-the-source baseline: overall, on large-pose pairs, and
        inside the mouth (eyes) on pairs whose mouth opening (eye openness) differs by more than
        train.expression_change; the warped source's blend weight over the image, the mouth and the eyes; the
        expression readout's correlation with the driving frames' labels."""
        batch = self.eval_batch
        images = {k: batch[k].astype(np.float32) / 255.0 for k in ("source", "driving", "cross")}
        variables = self._generator_variables(state)
        psnrs = {name: [] for name in ("recon", "copy", "recon_mouth", "copy_mouth", "recon_eyes", "copy_eyes")}
        pose_error, blends, readouts = [], [], []
        chunk = self.config.data.batch_size
        for start in range(0, len(images["source"]), chunk):
            part = {k: v[start : start + chunk] for k, v in images.items()}
            regions = batch["driving_regions"][start : start + chunk]
            recon, _, pose, blend, readout = self._reconstruct(
                variables, part["source"], part["driving"], part["cross"])
            for name, prediction in (("recon", recon), ("copy", part["source"])):
                psnrs[name].append(np.asarray(losses.psnr(prediction, part["driving"])))
                for index, region in enumerate(regions_lib.REGION_NAMES):
                    psnrs[f"{name}_{region}"].append(
                        np.asarray(losses.psnr(prediction, part["driving"], mask=regions[..., index])))
            # A model without our pose convention, blend or expression readout (LivePortrait) gives None for them.
            if pose is not None:
                pose_error.append(np.abs(np.asarray(pose)[:, :3] - batch["driving_pose"][start : start + chunk, :3]))
            if blend is not None:
                blends.append(np.asarray(blend)[..., 0])
            if readout is not None:
                readouts.append(np.asarray(readout))
        psnrs = {k: np.concatenate(v) for k, v in psnrs.items()}
        pose_delta = np.abs(batch["source_pose"][:, :3] - batch["driving_pose"][:, :3]).max(axis=-1)
        large = pose_delta > self.config.train.large_pose_degrees
        result = {
            "psnr": float(psnrs["recon"].mean()),
            "copy_source_psnr": float(psnrs["copy"].mean()),
            "num_pairs": int(len(psnrs["recon"])),
            "num_large_pose_pairs": int(large.sum()),
        }
        if pose_error:
            result["head_pose_mae_degrees"] = float(np.concatenate(pose_error).mean())
        if blends:
            blends = np.concatenate(blends)
            result["blend_image"] = float(blends.mean())
        if large.any():
            result["psnr_large_pose"] = float(psnrs["recon"][large].mean())
            result["copy_source_psnr_large_pose"] = float(psnrs["copy"][large].mean())
            result["gain_over_copy_large_pose_db"] = result["psnr_large_pose"] - result["copy_source_psnr_large_pose"]
        changes = {"mouth": "mouth_open", "eyes": "eye_open"}
        for index, region in enumerate(regions_lib.REGION_NAMES):
            if len(blends):
                mask = batch["driving_regions"][..., index].astype(np.float32)
                result[f"blend_{region}"] = float((blends * mask).sum() / max(mask.sum(), 1.0))
            label = changes[region]
            changed = np.abs(batch[f"source_{label}"] - batch[f"driving_{label}"]) > self.config.train.expression_change
            result[f"num_{region}_change_pairs"] = int(changed.sum())
            if changed.any():
                gain = psnrs[f"recon_{region}"][changed] - psnrs[f"copy_{region}"][changed]
                result[f"gain_over_copy_{region}_db"] = float(gain.mean())
        if readouts:
            readouts = np.concatenate(readouts)
            labels = np.asarray(expression_labels(batch, ("driving",)))
            for index, name in enumerate(EXPRESSION_LABELS):
                result[f"readout_r_{name}"] = evaluate.pearson(readouts[:, index], labels[:, index])
        return result

    def sample_grid(self, state, num_rows: int = 6) -> np.ndarray:
        """Rows of held-out examples; columns: source, driving, reconstruction, cross frame, source re-enacted with
        the cross identity's motion. uint8 [rows * H, 5 * W, 3]."""
        batch = {k: v[:num_rows] for k, v in self.eval_batch.items()}
        images = {k: batch[k].astype(np.float32) / 255.0 for k in ("source", "driving", "cross")}
        recon, reenacted = self._reconstruct(self._generator_variables(state), images["source"], images["driving"],
                                             images["cross"])[:2]
        columns = [images["source"], images["driving"], np.asarray(recon), images["cross"], np.asarray(reenacted)]
        rows = [np.concatenate([c[i] for c in columns], axis=1) for i in range(len(images["source"]))]
        return (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)


def _load_or_init(path, key, allow_random, load, init):
    if path:
        return load(path)
    if allow_random:
        return init()
    raise FileNotFoundError(
        f"config.{key} is empty: give the path of the pretrained checkpoint (or set "
        f"config.feature_nets.allow_random_init=True for smoke tests and synthetic data)"
    )
