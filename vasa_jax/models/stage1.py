"""Stage 1: the face latent model (face-vid2vid modules arranged to expose VASA-1's four latents).

An image I (float, [B, H, W, 3] in [0, 1]) is encoded into
  V_app  [B, D, h, w, C]  appearance volume         (AppearanceFeatureExtractor)
  z_id   [B, K, 3]        canonical 3D keypoints    (CanonicalKeypointDetector)
  z_pose [B, 7]           yaw, pitch, roll (degrees), tx, ty, tz, log-scale   (HeadPoseEstimator)
  z_dyn  [B, 3K + E]      facial dynamics: keypoint deformations and an expression code   (DynamicsEncoder)
and rendered by
  decode(V_app_s, z_id_s, z_pose_s, z_dyn_s, z_pose_d, z_dyn_d) -> image showing the source identity with the
  driving pose and dynamics.
The source pose and dynamics enter the decoder because V_app is the *posed* source volume: the motion field maps
driving-space points back to source-space points through both keypoint sets, as in face-vid2vid.

Keypoints: x = exp(log_s) * (x_c @ R(yaw, pitch, roll) + delta) + t, delta the deformation part of z_dyn.
Expression reaches the pixels along two paths: the keypoint deformations move the warp, and the generator is
modulated by z_dyn (ExpressionEncoder: FiLM codes and features placed at the driving keypoints), which can render
what no warp of the source holds (an open mouth's interior, closed lids, moved irises).
Warps use align_corners=True so that coordinate grids from `ops.make_coordinate_grid_3d` (linspace(-1, 1)) hit
voxel centres exactly: an identical source and driving pose is an exact identity warp.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax import ops
from vasa_jax.models.layers import (
    config_from_mapping,
    Conv,
    Dense,
    DownBlock,
    GroupNorm,
    Hourglass,
    ResBlock,
    UpBlock,
    soft_argmax_3d,
)

NUM_POSE_BINS = 66
POSE_DIM = 7  # yaw, pitch, roll, tx, ty, tz, log_scale
# What the expression readout reads linearly out of z_dyn (weak supervision by the data's per-frame labels, as the
# head pose is supervised by its pseudo-labels): mouth opening, eye openness, gaze theta and phi.
EXPRESSION_LABELS = ("mouth_open", "eye_open", "gaze_theta", "gaze_phi")
# The face layout the generator predicts of the driving frame and renders from (vasa_jax.data.regions.LAYOUT_NAMES):
# the mouth's interior, the eyes' opening, the irises.
NUM_LAYOUT_MAPS = 3
# The largest residual flow of the 2D motion network (`image_motion_expression`), in the grid's [-1, 1] units: 0.1 is
# 3 px at 64x64, 26 px at 512, about three times what a 30-degree gaze moves an iris.
RESIDUAL_FLOW_LIMIT = 0.1


@dataclasses.dataclass(frozen=True)
class Stage1ModelConfig:
    """Every size of the face latent model; built from the `model` section of configs/stage1.py."""

    image_size: int = 256
    num_keypoints: int = 15
    # Appearance feature extractor: image -> volume [D, image_size / 2**afe_num_down, ..., C].
    afe_base_channels: int = 64
    afe_num_down: int = 2
    afe_max_channels: int = 512
    volume_depth: int = 16
    volume_channels: int = 32
    afe_num_res_blocks: int = 6
    # Canonical keypoint detector: works on the image resized by kp_scale_factor.
    kp_scale_factor: float = 0.25
    kp_base_channels: int = 32
    kp_num_down: int = 3
    kp_max_channels: int = 1024
    kp_volume_depth: int = 4
    kp_volume_channels: int = 64
    kp_num_up: int = 2
    kp_temperature: float = 0.1
    # Head pose estimator.
    hpe_base_channels: int = 64
    hpe_num_down: int = 4
    hpe_max_channels: int = 512
    # Dynamics encoder (z_dyn), independent of the pose estimator as in VASA-1: a shared trunk was dominated by the
    # pose terms and never learned the mouth (expression readout r = 0.14 after 1000 tiny steps).
    dyn_base_channels: int = 32
    dyn_num_down: int = 5
    dyn_max_channels: int = 256
    dyn_hidden: int = 256
    # z_dyn = [keypoint deformations (3K), expression code (this many)]. The code reaches only the generator's
    # expression path and the expression readout: labels supervise it without the warp's geometry pulling at it
    # (supervising the deformations themselves fought the reconstruction terms; readout r = 0.08 after 250 steps).
    expression_code_dim: int = 16
    # Motion field estimator.
    mfe_compress_channels: int = 4
    mfe_base_channels: int = 32
    mfe_max_channels: int = 512
    mfe_num_levels: int = 3
    mfe_keypoint_variance: float = 0.01
    mfe_mask_kernel: int = 7  # face-vid2vid's 7x7x7; 3D convs are slow on CPU, the tiny config uses 3
    # Generator.
    gen_channels: int = 512
    gen_num_res_blocks: int = 6
    # Expression into the image-building stage (every variant): an MLP turns the driving dynamics and their change
    # from the source into a code that modulates (FiLM) every residual and upsampling block of the generator, and
    # per-keypoint features of that code are placed at the driving keypoints' image positions as extra input
    # channels. A warp of the source cannot open a closed mouth or close an eye; this path can.
    expression_channels: int = 256
    expression_map_channels: int = 16
    # The generator's refiner: a 2D U-Net at the image resolution (base channels, widest, levels).
    refine_base_channels: int = 32
    refine_max_channels: int = 128
    refine_num_levels: int = 4
    # Image-space skip path (off in face-vid2vid's design, the 256/512 default): a 2D motion network warps the
    # source *image* by the keypoints' image-plane motion, and the generator blends that warped image with its
    # own output through a predicted mask, so unchanged texture need not be re-synthesised from the volume. It
    # is what lets the tiny CPU model beat copying the source within minutes.
    gen_image_skip: bool = False
    image_motion_scale: float = 0.5  # resolution of the 2D motion network relative to the image
    image_motion_base_channels: int = 16
    image_motion_max_channels: int = 64
    image_motion_num_levels: int = 3
    # With the image-space skip path: the warped source is edited before the blend, by a per-pixel colour change in
    # logit space (zero at initialisation) that the refiner's features and the layout paint over it. Closing a lid or
    # opening a mouth is then a local edit of a sharp image; without it the blend can only hand the whole face
    # interior to the generator's own image, which the volume path draws as a blur (seen at every blink frame).
    gen_source_edit: bool = False
    # With the image-space skip path: the 2D motion network also sees the expression readouts (driving, and their
    # change from the source) and adds a residual flow to its keypoint flows (zero at initialisation). A 30-degree
    # gaze moves the iris about a pixel at 64x64 while the lids stay: no keypoint's first-order flow isolates
    # that, and the generator's own image drew it as a smear that reads as no gaze at all (NOTES.md, eleventh
    # sitting). losses.iris_warp supervises where the flow carries the source's irises.
    image_motion_expression: bool = False

    @property
    def volume_size(self) -> int:
        return self.image_size // 2**self.afe_num_down

    @property
    def dynamics_dim(self) -> int:
        """Size of a flat z_dyn: 3 per keypoint, then the expression code."""
        return 3 * self.num_keypoints + self.expression_code_dim

    @property
    def output_size(self) -> int:
        """What decode renders: the size it reads (LivePortrait's renderer renders larger)."""
        return self.image_size

    @classmethod
    def from_config(cls, config: Any) -> "Stage1ModelConfig":
        return config_from_mapping(cls, config, "stage-1 model")


def image_to_volume(image, base_channels, num_down, max_channels, depth, channels):
    """Shared 2D-to-3D encoder of the AFE and the CKD: a 7x7 stem, `num_down` downsampling blocks, a 1x1 conv to
    depth * channels, and a reshape to a volume [B, depth, h, w, channels]. Called inside a compact module, so
    its layers belong to (and are named within) that module."""
    x = Conv(base_channels, 7, 2)(image)
    x = nn.relu(GroupNorm(base_channels)(x))
    for level in range(num_down):
        x = DownBlock(min(max_channels, base_channels * 2 ** (level + 1)), 2)(x)
    x = Conv(depth * channels, 1, 2)(x)
    b, h, w, _ = x.shape
    return x.reshape(b, h, w, depth, channels).transpose(0, 3, 1, 2, 4)


class AppearanceFeatureExtractor(nn.Module):
    """Image -> appearance volume V_app [B, D, h, w, C]: 2D stem and downsampling, 1x1 conv to D*C channels,
    reshape to a volume, 3D residual blocks."""

    cfg: Stage1ModelConfig

    @nn.compact
    def __call__(self, image):
        cfg = self.cfg
        volume = image_to_volume(
            image, cfg.afe_base_channels, cfg.afe_num_down, cfg.afe_max_channels, cfg.volume_depth,
            cfg.volume_channels,
        )
        for _ in range(cfg.afe_num_res_blocks):
            volume = ResBlock(3)(volume)
        return volume


class CanonicalKeypointDetector(nn.Module):
    """Image -> K canonical 3D keypoints z_id [B, K, 3]: 2D encoder, reshape into a shallow volume, 3D decoder,
    per-keypoint heatmaps and a soft-argmax."""

    cfg: Stage1ModelConfig

    @nn.compact
    def __call__(self, image):
        cfg = self.cfg
        if cfg.kp_scale_factor != 1.0:
            size = int(round(cfg.image_size * cfg.kp_scale_factor))
            image = jax.image.resize(image, (image.shape[0], size, size, image.shape[-1]), "linear", antialias=True)
        v = image_to_volume(
            image, cfg.kp_base_channels, cfg.kp_num_down, cfg.kp_max_channels, cfg.kp_volume_depth,
            cfg.kp_volume_channels,
        )
        for level in range(cfg.kp_num_up):
            v = UpBlock(max(8, cfg.kp_volume_channels // 2 ** (level + 1)), 3, (1, 2, 2))(v)
        heatmaps = Conv(cfg.num_keypoints, 3, 3)(v)
        return soft_argmax_3d(heatmaps, cfg.kp_temperature)


class HeadPoseEstimator(nn.Module):
    """Image -> z_pose [B, 7] (yaw, pitch, roll in degrees from 66-bin classification, translation, log-scale) and
    the yaw/pitch/roll bin logits [B, 3, 66] (for the classification part of the head-pose loss)."""

    cfg: Stage1ModelConfig

    @nn.compact
    def __call__(self, image):
        cfg = self.cfg
        x = Conv(cfg.hpe_base_channels, 7, 2, stride=2)(image)
        x = nn.relu(GroupNorm(cfg.hpe_base_channels)(x))
        for level in range(cfg.hpe_num_down):
            channels = min(cfg.hpe_max_channels, cfg.hpe_base_channels * 2 ** (level + 1))
            x = DownBlock(channels, 2)(x)
            x = ResBlock(2)(x)
        # Flattened rather than averaged: where features sit in the image (nose vs. head outline) tells the pose.
        features = x.reshape(x.shape[0], -1)
        # Zero-initialised heads: the bin logits start uniform (a saturated softmax would stall the pose
        # regression), and translation and scale start at zero, so an untrained model leaves the canonical
        # keypoints in place.
        zero_dense = lambda n, name: Dense(n, name=name, zero_init=True)
        bin_logits = jnp.stack(
            [zero_dense(NUM_POSE_BINS, f"{name}_bins")(features) for name in ("yaw", "pitch", "roll")], axis=1
        )  # [B, 3, 66]
        angles = ops.headpose_bins_to_degrees(bin_logits)  # [B, 3]
        translation = zero_dense(3, "translation")(features)
        log_scale = zero_dense(1, "log_scale")(features)
        return jnp.concatenate([angles, translation, log_scale], axis=-1), bin_logits


class DynamicsEncoder(nn.Module):
    """Image -> z_dyn [B, 3K + E]: the facial dynamics (mouth, eyes, gaze, brows: everything but the head's rigid
    pose) as keypoint deformations and an expression code (`split_dynamics`). Its first convolution keeps the full
    resolution, where an eye is a few pixels tall, and every convolution is group-normalised. The deformation head
    is zero-initialised: an untrained model does not deform."""

    cfg: Stage1ModelConfig

    @nn.compact
    def __call__(self, image):
        cfg = self.cfg

        def conv(x, channels, stride=1):
            # At most 8 groups: with a group per channel (16 channels) the normalisation removes each channel's
            # level per image, which is what says whether a few pixels of sclera are there at all.
            return nn.relu(GroupNorm(channels, max_groups=8)(Conv(channels, 3, 2, stride=stride)(x)))

        x = conv(image, cfg.dyn_base_channels)
        for level in range(cfg.dyn_num_down):
            channels = min(cfg.dyn_max_channels, cfg.dyn_base_channels * 2 ** (level + 1))
            x = conv(conv(x, channels, stride=2), channels)
        x = nn.relu(Dense(cfg.dyn_hidden)(x.reshape(x.shape[0], -1)))
        deformation = Dense(cfg.num_keypoints * 3, name="deformation", zero_init=True)(x)
        code = Dense(cfg.expression_code_dim, name="expression_code")(x)
        return jnp.concatenate([deformation, code], axis=-1)


def split_dynamics(z_dyn, num_keypoints: int):
    """A flat z_dyn [B, 3K + E] -> (keypoint deformations [B, K, 3], expression code [B, E])."""
    deformation = z_dyn[:, : 3 * num_keypoints].reshape(z_dyn.shape[0], num_keypoints, 3)
    return deformation, z_dyn[:, 3 * num_keypoints :]


def keypoints_from_latents(z_id, z_pose, z_dyn):
    """Posed 3D keypoints [B, K, 3] from canonical keypoints [B, K, 3], pose [B, 7] and z_dyn [B, 3K + E] (its
    deformations), computed in float32 whatever the latents' dtype: keypoint positions are warp coordinates."""
    z_id, z_pose, z_dyn = (jnp.asarray(x, jnp.float32) for x in (z_id, z_pose, z_dyn))
    rotation = ops.rotation_matrix(z_pose[:, 0], z_pose[:, 1], z_pose[:, 2])
    deformation, _ = split_dynamics(z_dyn, z_id.shape[1])
    return ops.transform_keypoints(z_id, rotation, z_pose[:, 3:6], deformation, z_pose[:, 6])


def driving_to_source_jacobian(pose_source, pose_driving):
    """J_d^-1 J_s [B, 3, 3], with J = exp(log_s) R the linear part of the row-vector keypoint transform (float32)."""
    pose_source, pose_driving = jnp.asarray(pose_source, jnp.float32), jnp.asarray(pose_driving, jnp.float32)
    jac_source = ops.keypoint_jacobian(
        ops.rotation_matrix(pose_source[:, 0], pose_source[:, 1], pose_source[:, 2]), pose_source[:, 6]
    )
    jac_driving = ops.keypoint_jacobian(
        ops.rotation_matrix(pose_driving[:, 0], pose_driving[:, 1], pose_driving[:, 2]), pose_driving[:, 6]
    )
    return jnp.linalg.solve(jac_driving, jac_source)


def keypoint_flows(points, kp_source, kp_driving, pose_source, pose_driving):
    """First-order flows [B, K, *P, 3] of driving-space points [*P, 3] to source space, one per keypoint:
    z -> x_s,k + (z - x_d,k) J_d^-1 J_s. A point that moves rigidly with keypoint k (same deformation in both
    frames) lands exactly on its source position."""
    driving_to_source = driving_to_source_jacobian(pose_source, pose_driving)
    extra = (None,) * (points.ndim - 1)
    offsets = points[None, None] - kp_driving[(slice(None), slice(None)) + extra]  # [B, K, *P, 3]
    flows = jnp.einsum("bk...i,bij->bk...j", offsets, driving_to_source)
    return flows + kp_source[(slice(None), slice(None)) + extra]


class MotionFieldEstimator(nn.Module):
    """Dense 3D flow (driving space -> source space) and a 2D occlusion mask.

    Per keypoint k a first-order flow maps a driving point z to x_s,k + (z - x_d,k) J_d^-1 J_s (row vectors);
    a background flow is the identity. The source volume is warped by each flow, stacked with Gaussian heatmap
    differences, and a 3D hourglass predicts softmax composition masks (K+1) and an occlusion logit map.
    """

    cfg: Stage1ModelConfig

    @nn.compact
    def __call__(self, volume, kp_source, kp_driving, pose_source, pose_driving):
        cfg = self.cfg
        b, d, h, w, _ = volume.shape
        k = kp_source.shape[1]
        compressed = Conv(cfg.mfe_compress_channels, 1, 3)(volume)
        compressed = nn.relu(GroupNorm(cfg.mfe_compress_channels)(compressed))

        grid = ops.make_coordinate_grid_3d(d, h, w)  # [D, H, W, 3], float32 as every warp grid
        kp_flows = keypoint_flows(grid, kp_source, kp_driving, pose_source, pose_driving)
        identity = jnp.broadcast_to(grid[None, None], (b, 1, d, h, w, 3))
        flows = jnp.concatenate([identity, kp_flows], axis=1)  # [B, K+1, D, H, W, 3]

        # The one volume sampled at the K + 1 flows stacked along depth: no K + 1 copies of it.
        warped = ops.grid_sample_3d(compressed, flows.reshape(b, (k + 1) * d, h, w, 3), align_corners=True)
        warped = warped.reshape(b, k + 1, d, h, w, -1).transpose(0, 2, 3, 4, 1, 5).reshape(b, d, h, w, -1)

        heat_driving = ops.keypoints_to_gaussian_volume(kp_driving, (d, h, w), cfg.mfe_keypoint_variance)
        heat_source = ops.keypoints_to_gaussian_volume(kp_source, (d, h, w), cfg.mfe_keypoint_variance)
        heat = jnp.concatenate([jnp.zeros((b, d, h, w, 1), volume.dtype), heat_driving - heat_source], axis=-1)

        features = Hourglass(
            ndim=3,
            base_channels=cfg.mfe_base_channels,
            max_channels=cfg.mfe_max_channels,
            num_levels=cfg.mfe_num_levels,
            factors=(1, 2, 2),
        )(jnp.concatenate([warped, heat.astype(warped.dtype)], axis=-1))
        mask = jax.nn.softmax(Conv(k + 1, cfg.mfe_mask_kernel, 3, name="mask")(features).astype(jnp.float32), axis=-1)
        flow = jnp.einsum("bdhwk,bkdhwi->bdhwi", mask, flows.astype(jnp.float32))

        planes = features.transpose(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        occlusion = jax.nn.sigmoid(Conv(1, 7, 2, name="occlusion")(planes).astype(jnp.float32))
        return flow, occlusion, mask


def image_plane_flows(size, kp_source, kp_driving, pose_source, pose_driving):
    """2D flows [B, K+1, size, size, 2] (align_corners=True grids) from driving-image to source-image positions:
    the identity (background) and, per keypoint, the first-order flow taken at the keypoint's own depth,
    p -> x_s,k + (p - x_d,k) A, with (x, y) parts only and A the top-left 2x2 block of J_d^-1 J_s (the
    projection of the 3D flow for the surface the keypoint sits on)."""
    b = kp_source.shape[0]
    points = ops.make_coordinate_grid_2d(size, size, jnp.float32)  # [S, S, 2]
    linear = driving_to_source_jacobian(pose_source, pose_driving)[:, :2, :2]
    offsets = points[None, None] - kp_driving[:, :, None, None, :2]  # [B, K, S, S, 2]
    flows = jnp.einsum("bkxyi,bij->bkxyj", offsets, linear) + kp_source[:, :, None, None, :2]
    identity = jnp.broadcast_to(points[None, None], (b, 1, size, size, 2))
    return jnp.concatenate([identity, flows], axis=1)


def upsample_grid(grid, size):
    """A sampling grid [B, s, s, 2] (align_corners=True) brought to [B, size, size, 2]: its displacement from the
    identity is resized bilinearly, so an identity grid stays exactly the identity."""
    b, s = grid.shape[0], grid.shape[1]
    displacement = grid - ops.make_coordinate_grid_2d(s, s, grid.dtype)
    displacement = jax.image.resize(displacement, (b, size, size, 2), "linear")
    return displacement + ops.make_coordinate_grid_2d(size, size, grid.dtype)


class ImageMotionEstimator(nn.Module):
    """The 2D motion network of the image-space skip path (first-order-motion-model style): the downscaled source
    image warped by each image-plane keypoint flow, with 2D Gaussian heatmap differences, goes through a 2D
    hourglass that predicts softmax masks composing the flows (and, with `image_motion_expression`, a residual flow
    steered by the expression `readouts` [B, 2L]). Returns the source image's sampling grid [B, S, S, 2] at the full
    image resolution."""

    cfg: Stage1ModelConfig

    @nn.compact
    def __call__(self, source_image, kp_source, kp_driving, pose_source, pose_driving, readouts):
        cfg = self.cfg
        b, k = kp_source.shape[:2]
        size = max(4, int(round(cfg.image_size * cfg.image_motion_scale)))
        small = jax.image.resize(source_image, (b, size, size, 3), "linear")
        flows = image_plane_flows(size, kp_source, kp_driving, pose_source, pose_driving)  # [B, K+1, s, s, 2]
        warped = ops.grid_sample_2d(small, flows.reshape(b, (k + 1) * size, size, 2), align_corners=True)
        warped = warped.reshape(b, k + 1, size, size, 3).transpose(0, 2, 3, 1, 4).reshape(b, size, size, -1)

        gaussian = lambda kp: ops.keypoints_to_gaussian_2d(kp, size, cfg.mfe_keypoint_variance)
        heat = gaussian(kp_driving) - gaussian(kp_source)  # [B, s, s, K]
        heat = jnp.concatenate([jnp.zeros((b, size, size, 1)), heat], axis=-1)
        inputs = [warped, heat]
        if cfg.image_motion_expression:
            inputs.append(jnp.broadcast_to(readouts[:, None, None], (b, size, size, readouts.shape[-1])))

        features = Hourglass(
            ndim=2,
            base_channels=cfg.image_motion_base_channels,
            max_channels=cfg.image_motion_max_channels,
            num_levels=cfg.image_motion_num_levels,
        )(jnp.concatenate([x.astype(warped.dtype) for x in inputs], axis=-1))
        mask = jax.nn.softmax(Conv(k + 1, 7, 2, name="mask")(features).astype(jnp.float32), axis=-1)
        grid = jnp.einsum("bxyk,bkxyi->bxyi", mask, flows)
        if cfg.image_motion_expression:
            # Bounded, and by a 3x3 kernel: the first Adam steps of a zero-initialised 7x7 one moved the whole flow
            # by tens of pixels and carried the irises out of the eyes (1e-3, the tiny config's learning rate).
            residual = Conv(2, 3, 2, name="residual_flow", zero_init=True)(features).astype(jnp.float32)
            grid = grid + RESIDUAL_FLOW_LIMIT * jnp.tanh(residual)
        return upsample_grid(grid, cfg.image_size)


class ExpressionEncoder(nn.Module):
    """Driving dynamics and their change from the source's, z_dyn [B, 3K + E] each, with the driving frame's
    expression readouts and their change from the source's [B, 2L] (`FaceLatentModel.read_expression`) -> the
    generator's modulation code [B, C] and per-keypoint expression features [B, K, F] (placed at the keypoints by
    `expression_map`)."""

    cfg: Stage1ModelConfig

    @nn.compact
    def __call__(self, dyn_source, dyn_driving, readouts):
        cfg = self.cfg
        b, k = dyn_driving.shape[0], cfg.num_keypoints
        x = jnp.concatenate([dyn_driving, dyn_driving - dyn_source, readouts], -1)
        x = nn.relu(Dense(cfg.expression_channels)(x))
        code = nn.relu(Dense(cfg.expression_channels)(x))
        per_keypoint = Dense(k * cfg.expression_map_channels, name="per_keypoint")(code)
        return code, per_keypoint.reshape(b, k, cfg.expression_map_channels)


def expression_map(per_keypoint, kp_driving, size, variance):
    """Per-keypoint expression features [B, K, F] spread over the image plane [B, size, size, F] by Gaussians at the
    driving keypoints' (x, y): a local signal where a mouth or an eye keypoint sits."""
    heat = ops.keypoints_to_gaussian_2d(kp_driving, size, variance)
    return jnp.einsum("bhwk,bkf->bhwf", heat, per_keypoint.astype(heat.dtype))


class Modulation(nn.Module):
    """FiLM by the expression code: x * (1 + scale(code)) + shift(code), per channel; zero-initialised, so it
    starts as the identity."""

    @nn.compact
    def __call__(self, x, code):
        scale, shift = jnp.split(Dense(2 * x.shape[-1], name="film", zero_init=True)(code), 2, axis=-1)
        expand = lambda v: v.reshape((v.shape[0],) + (1,) * (x.ndim - 2) + (v.shape[-1],)).astype(x.dtype)
        return x * (1.0 + expand(scale)) + expand(shift)


class ModulatedResBlock(nn.Module):
    """Pre-activation 2D residual block (GN-FiLM-ReLU-conv x2) that keeps the channel count."""

    @nn.compact
    def __call__(self, x, code):
        channels = x.shape[-1]
        h = nn.relu(Modulation()(GroupNorm(channels)(x), code))
        h = Conv(channels, 3, 2)(h)
        h = nn.relu(Modulation()(GroupNorm(channels)(h), code))
        h = Conv(channels, 3, 2)(h)
        return x + h


class Generator(nn.Module):
    """Warps V_app by the dense flow, projects 3D -> 2D (depth folded into channels + conv) together with the
    expression map, applies the occlusion mask, residual blocks and upsampling back to the image resolution, all
    modulated by the expression code. At the image resolution a 2D U-Net (the refiner) sees those features, the
    expression map and code and, with `gen_image_skip`, the source image warped by `image_grid`; it predicts the
    driving frame's face layout and renders the image from its features and that layout (blended with the warped
    source through a predicted mask with `gen_image_skip`). The refiner works where the mouth and the eyes are
    several pixels wide and sees the warped source's lips and lids in place, so opening a mouth or closing an eye
    is a local edit for it; the volume path alone, at a quarter of the resolution, rendered them as a blur."""

    cfg: Stage1ModelConfig

    @nn.compact
    def __call__(self, volume, flow, occlusion, expression, image_grid=None, source_image=None):
        cfg = self.cfg
        code, local, local_full, readouts = expression
        # The flow stays float32 whatever the compute dtype: a bfloat16 coordinate near 60 resolves only 0.25.
        warped = ops.grid_sample_3d(volume, flow, align_corners=True)
        b, d, h, w, c = warped.shape
        x = warped.transpose(0, 2, 3, 1, 4).reshape(b, h, w, d * c)
        x = Conv(cfg.gen_channels, 3, 2)(jnp.concatenate([x, local.astype(x.dtype)], axis=-1))
        x = nn.relu(GroupNorm(cfg.gen_channels)(x))
        x = Conv(cfg.gen_channels, 1, 2)(x)
        x = x * occlusion.astype(x.dtype)
        for _ in range(cfg.gen_num_res_blocks):
            x = ModulatedResBlock()(x, code)
        for level in range(cfg.afe_num_down):
            x = UpBlock(max(16, cfg.gen_channels // 2 ** (level + 1)), 2)(x)
            x = Modulation()(x, code)

        size = x.shape[1]
        # The code, and the readouts as they are: a calibrated "how open" (mouth, eyes) and gaze per image, which a
        # convolution can turn into an opening at the lips or the lids it sees from the first steps on.
        globals_ = jnp.concatenate([Dense(cfg.expression_map_channels, name="code_map")(code), readouts], axis=-1)
        code_map = jnp.broadcast_to(globals_[:, None, None], (b, size, size, globals_.shape[-1]))
        parts = [x, local_full.astype(x.dtype), code_map.astype(x.dtype)]
        if cfg.gen_image_skip:
            warped_source = ops.grid_sample_2d(
                source_image.astype(jnp.float32), image_grid, align_corners=True, padding_mode="border"
            )
            parts.append(warped_source.astype(x.dtype))
        x = Hourglass(ndim=2, base_channels=cfg.refine_base_channels, max_channels=cfg.refine_max_channels,
                      num_levels=cfg.refine_num_levels, name="refiner")(jnp.concatenate(parts, axis=-1))
        x = Modulation()(x, code)
        # The driving frame's face layout (where the open mouth, the eye openings and the irises are), supervised
        # with the data's layout maps and fed to the output layers: a dense target that ties z_dyn to pixels.
        layout_logits = Conv(NUM_LAYOUT_MAPS, 3, 2, name="layout")(x).astype(jnp.float32)
        self.sow("intermediates", "layout_logits", layout_logits)
        x = jnp.concatenate([x, jax.nn.sigmoid(layout_logits).astype(x.dtype)], axis=-1)
        generated = jax.nn.sigmoid(Conv(3, 7, 2, name="to_rgb")(x).astype(jnp.float32))
        if not cfg.gen_image_skip:
            return generated
        # Training reads the generator's own image (losses.generated_l1) so that the 3D motion keeps learning
        # where the blend already prefers the warped source.
        self.sow("intermediates", "generated", generated)
        if cfg.gen_source_edit:
            edit = Conv(3, 3, 2, name="source_edit", zero_init=True)(x).astype(jnp.float32)
            inside = jnp.clip(warped_source, 1e-3, 1.0 - 1e-3)
            warped_source = jax.nn.sigmoid(jnp.log(inside) - jnp.log1p(-inside) + edit)
        blend_logits = Conv(1, 7, 2, name="blend")(x).astype(jnp.float32)
        blend = jax.nn.sigmoid(blend_logits)  # the warped source's weight
        # For the evaluation's blend statistics and the blend-choice loss: the blend's logits and the source image it
        # weighs (edited when that is on).
        self.sow("intermediates", "blend_logits", blend_logits)
        self.sow("intermediates", "blend_source", warped_source)
        return blend * warped_source + (1.0 - blend) * generated


class FaceLatentModel(nn.Module):
    """The stage-1 face latent model. Use through `model.apply(params, ..., method=...)` with `encode`,
    `encode_motion` or `decode`; `__call__` reconstructs a driving frame from a source frame (and creates all
    parameters at init)."""

    cfg: Stage1ModelConfig

    def setup(self):
        self.appearance = AppearanceFeatureExtractor(self.cfg)
        self.keypoints = CanonicalKeypointDetector(self.cfg)
        self.head_pose = HeadPoseEstimator(self.cfg)
        self.dynamics = DynamicsEncoder(self.cfg)
        self.motion = MotionFieldEstimator(self.cfg)
        self.image_motion = ImageMotionEstimator(self.cfg) if self.cfg.gen_image_skip else None
        self.expression = ExpressionEncoder(self.cfg)
        self.generator = Generator(self.cfg)
        # Zero-initialising this readout would deadlock it with the zero-initialised deformation head (each one's
        # gradient is the other's value), so it starts random.
        self.expression_readout = Dense(len(EXPRESSION_LABELS), name="expression_readout")

    def encode(self, image):
        """image [B, H, W, 3] in [0, 1] -> (V_app, z_id, z_pose, z_dyn)."""
        self._check_image(image)
        z_pose, _ = self.head_pose(image)
        return self.appearance(image), self.keypoints(image), z_pose, self.dynamics(image)

    def encode_motion(self, image):
        """image -> (z_pose, z_dyn) only: what stage 2 models, and what driving frames need."""
        self._check_image(image)
        return self.head_pose(image)[0], self.dynamics(image)

    def estimate_pose(self, image):
        """image -> (z_pose, z_dyn, pose bin logits [B, 3, 66]) (training needs the logits)."""
        self._check_image(image)
        z_pose, bin_logits = self.head_pose(image)
        return z_pose, self.dynamics(image), bin_logits

    def encode_appearance(self, image):
        """image -> (V_app, z_id): the source-only latents."""
        self._check_image(image)
        return self.appearance(image), self.keypoints(image)

    def encode_identity(self, image):
        """image -> canonical keypoints z_id [B, K, 3] only."""
        self._check_image(image)
        return self.keypoints(image)

    def read_expression(self, z_dyn):
        """z_dyn [B, 3K + E] -> the linear readout of EXPRESSION_LABELS from its expression code [B, 4] (in the
        loss's scaled units)."""
        return self.expression_readout(split_dynamics(z_dyn, self.cfg.num_keypoints)[1])

    def read_image_expression(self, image):
        """image -> the readout of EXPRESSION_LABELS from its dynamics [B, 4]: what the encoder sees of an image's
        mouth, eyes and gaze (training reads rendered frames with it)."""
        self._check_image(image)
        return self.read_expression(self.dynamics(image))

    def decode(self, volume, z_id, pose_source, dyn_source, pose_driving, dyn_driving, source_image=None):
        """Render the source (V_app, z_id, posed by pose_source/dyn_source) with the driving pose and dynamics.
        `source_image` (the image V_app was encoded from) is required when the config's `gen_image_skip` is on
        and ignored otherwise."""
        kp_source = keypoints_from_latents(z_id, pose_source, dyn_source)
        kp_driving = keypoints_from_latents(z_id, pose_driving, dyn_driving)
        flow, occlusion, _ = self.motion(volume, kp_source, kp_driving, pose_source, pose_driving)
        readouts = self._readouts(dyn_source, dyn_driving)
        code, per_keypoint = self.expression(dyn_source, dyn_driving, readouts)
        local = expression_map(per_keypoint, kp_driving, volume.shape[2], self.cfg.mfe_keypoint_variance)
        local_full = expression_map(per_keypoint, kp_driving, self.cfg.image_size, self.cfg.mfe_keypoint_variance)
        expression = (code, local, local_full, readouts)
        if not self.cfg.gen_image_skip:
            return self.generator(volume, flow, occlusion, expression)
        image_grid = self._image_grid(source_image, kp_source, kp_driving, pose_source, pose_driving, readouts)
        return self.generator(volume, flow, occlusion, expression, image_grid, source_image)

    def source_image_grid(self, source_image, z_id, pose_source, dyn_source, pose_driving, dyn_driving):
        """The image-space skip path's sampling grid of the source image [B, S, S, 2] (align_corners=True) for the
        driving pose and dynamics: where each pixel of the render takes the warped source from (training warps
        the source frame's layout maps with it)."""
        if not self.cfg.gen_image_skip:
            raise ValueError("this model has no image-space skip path (gen_image_skip): no source image grid")
        kp_source = keypoints_from_latents(z_id, pose_source, dyn_source)
        kp_driving = keypoints_from_latents(z_id, pose_driving, dyn_driving)
        return self._image_grid(source_image, kp_source, kp_driving, pose_source, pose_driving,
                                self._readouts(dyn_source, dyn_driving))

    def _image_grid(self, source_image, kp_source, kp_driving, pose_source, pose_driving, readouts):
        if source_image is None:
            raise ValueError("this model has the image-space skip path (gen_image_skip): its warp needs source_image")
        self._check_image(source_image)
        return self.image_motion(source_image, kp_source, kp_driving, pose_source, pose_driving, readouts)

    def _readouts(self, dyn_source, dyn_driving):
        """The readouts of z_dyn (mouth opening, eye openness, gaze: supervised by the data's labels) of the driving
        frame and their change from the source's [B, 2L]: what the generator (and, with image_motion_expression,
        the 2D motion network) sees beside z_dyn itself. They are a function of z_dyn, so stage 2 still only
        generates z_dyn."""
        read_source, read_driving = self.read_expression(dyn_source), self.read_expression(dyn_driving)
        return jnp.concatenate([read_driving, read_driving - read_source], axis=-1)

    def __call__(self, source, driving):
        volume, z_id, pose_s, dyn_s = self.encode(source)
        pose_d, dyn_d = self.encode_motion(driving)
        return self.decode(volume, z_id, pose_s, dyn_s, pose_d, dyn_d, source)

    def _check_image(self, image):
        expected = (self.cfg.image_size, self.cfg.image_size, 3)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(f"expected images of shape [B, {expected[0]}, {expected[1]}, 3], got {image.shape}")
