"""Implicit 3D keypoint geometry (face-vid2vid / VASA-1 motion representation).

A frame's keypoints are obtained from identity-specific canonical keypoints
``x_c`` and per-frame motion (head rotation R, translation t, expression
deformation delta, scale s) as

    x = s * (x_c @ R + delta) + t

in the row-vector convention (keypoints are rows, ``@ R`` rotates them).
Angles are in degrees everywhere in this module.  All functions are pure
``jnp`` and differentiable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "rotation_matrix",
    "euler_from_rotation_matrix",
    "transform_keypoints",
    "keypoint_jacobian",
    "headpose_bins_to_degrees",
    "degrees_to_headpose_bin",
    "make_coordinate_grid_2d",
    "make_coordinate_grid_3d",
    "keypoints_to_gaussian_volume",
]

# Hopenet head-pose classification: 66 bins of 3 degrees covering [-99, 99).
NUM_HEADPOSE_BINS = 66
HEADPOSE_BIN_WIDTH = 3.0
HEADPOSE_MIN_DEGREES = -99.0


def rotation_matrix(yaw, pitch, roll):
    """Rotation matrices from Euler angles in degrees.

    Uses the face-vid2vid convention R = R_x(pitch) @ R_y(yaw) @ R_z(roll) with
    R_x(p) = [[1, 0, 0], [0, cos p, -sin p], [0, sin p, cos p]],
    R_y(y) = [[cos y, 0, sin y], [0, 1, 0], [-sin y, 0, cos y]],
    R_z(r) = [[cos r, -sin r, 0], [sin r, cos r, 0], [0, 0, 1]].

    Args:
      yaw, pitch, roll: arrays of degrees, broadcastable to a common batch
        shape [...].

    Returns:
      [..., 3, 3] rotation matrices (float32 unless the inputs are float64).
    """
    yaw, pitch, roll = jnp.broadcast_arrays(
        *(jnp.asarray(a, dtype=jnp.result_type(a, jnp.float32)) for a in (yaw, pitch, roll))
    )
    y, p, r = jnp.deg2rad(yaw), jnp.deg2rad(pitch), jnp.deg2rad(roll)
    cy, sy = jnp.cos(y), jnp.sin(y)
    cp, sp = jnp.cos(p), jnp.sin(p)
    cr, sr = jnp.cos(r), jnp.sin(r)
    # The product R_x R_y R_z written out entry by entry: cheaper than three
    # batched 3x3 matmuls and exact to the same rounding.
    rows = [
        [cy * cr, -cy * sr, sy],
        [cp * sr + sp * sy * cr, cp * cr - sp * sy * sr, -sp * cy],
        [sp * sr - cp * sy * cr, sp * cr + cp * sy * sr, cp * cy],
    ]
    return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def euler_from_rotation_matrix(rotation):
    """Inverse of :func:`rotation_matrix`: [..., 3, 3] -> (yaw, pitch, roll) degrees.

    From the closed form of R = R_x(pitch) R_y(yaw) R_z(roll):
    R[0, 2] = sin(yaw), R[0, :2] = cos(yaw) (cos roll, -sin roll) and
    R[1:, 2] = cos(yaw) (-sin pitch, cos pitch).  Unique for yaw in
    (-90, 90) with pitch and roll in (-180, 180]; at |yaw| = 90 (gimbal lock)
    only pitch + roll / pitch - roll is determined.

    Returns:
      Tuple (yaw, pitch, roll), each of shape [...].
    """
    rotation = jnp.asarray(rotation)
    yaw = jnp.arcsin(jnp.clip(rotation[..., 0, 2], -1.0, 1.0))
    roll = jnp.arctan2(-rotation[..., 0, 1], rotation[..., 0, 0])
    pitch = jnp.arctan2(-rotation[..., 1, 2], rotation[..., 2, 2])
    return jnp.rad2deg(yaw), jnp.rad2deg(pitch), jnp.rad2deg(roll)


def transform_keypoints(kp_canonical, rotation, translation, deformation, log_scale):
    """Applies per-frame motion to canonical keypoints.

    x = exp(log_scale) * (x_c @ R + deformation) + t   (row-vector convention)

    Args:
      kp_canonical: [B, K, 3] canonical keypoints x_c.
      rotation: [B, 3, 3] rotation matrices R (see :func:`rotation_matrix`).
      translation: [B, 3] translations t.
      deformation: [B, K, 3] expression deformations delta (added after
        rotation, before scaling).
      log_scale: [B] log of the isotropic scale s (log parameterisation keeps
        s positive and makes 0 the identity).

    Returns:
      [B, K, 3] transformed keypoints.
    """
    scale = jnp.exp(log_scale)[:, None, None]
    rotated = jnp.einsum("bki,bij->bkj", kp_canonical, rotation)
    return scale * (rotated + deformation) + translation[:, None, :]


def keypoint_jacobian(rotation, log_scale):
    """Linear part of :func:`transform_keypoints`: exp(log_scale) * R, [B, 3, 3].

    In the row-vector convention x = x_c @ A + (...) with A = s * R, i.e.
    ``A[i, j] = d x_j / d x_c_i``.  The Jacobian in the usual column layout
    (``J[j, i] = d x_j / d x_c_i``) is ``A.T``.  It is the same for every
    keypoint because the deformation is an additive offset.

    Args:
      rotation: [B, 3, 3] rotation matrices.
      log_scale: [B] log scales.
    """
    return jnp.exp(log_scale)[:, None, None] * rotation


def headpose_bins_to_degrees(logits):
    """Hopenet-style continuous angle from bin logits: [..., 66] -> [...] degrees.

    The angle is the softmax expectation of the bin index i, mapped to
    degrees as 3 * E[i] - 99 (bins of 3 degrees covering [-99, 99); the value
    lands on the lower edge of bin i for a one-hot at i).  The softmax is
    computed in float32 for stability under bfloat16 logits.
    """
    logits = jnp.asarray(logits)
    if logits.shape[-1] != NUM_HEADPOSE_BINS:
        raise ValueError(
            f"headpose_bins_to_degrees: last axis must have {NUM_HEADPOSE_BINS} bins, "
            f"got shape {tuple(logits.shape)}"
        )
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    idx = jnp.arange(NUM_HEADPOSE_BINS, dtype=jnp.float32)
    return jnp.sum(probs * idx, axis=-1) * HEADPOSE_BIN_WIDTH + HEADPOSE_MIN_DEGREES


def degrees_to_headpose_bin(degrees):
    """Bin index for classification losses: the bin whose value 3 i - 99 (what `headpose_bins_to_degrees` gives
    for a one-hot at i) is nearest, round((deg + 99) / 3) clipped to [0, 65] (int32). Targeting the nearest
    rather than the enclosing bin keeps the classification and the L1 on degrees from disagreeing by 1.5 degrees."""
    degrees = jnp.asarray(degrees, dtype=jnp.result_type(degrees, jnp.float32))
    bins = jnp.round((degrees - HEADPOSE_MIN_DEGREES) / HEADPOSE_BIN_WIDTH)
    return jnp.clip(bins, 0, NUM_HEADPOSE_BINS - 1).astype(jnp.int32)


def _axis_coords(n, dtype):
    # linspace(-1, 1, n) is the align_corners=True spacing; for n == 1 it
    # yields [-1] (face-vid2vid's 2 * i / (n - 1) - 1 would divide by zero).
    return jnp.linspace(-1.0, 1.0, n, dtype=dtype)


def make_coordinate_grid_2d(height, width, dtype=jnp.float32):
    """[H, W, 2] grid of (x, y) in [-1, 1]; x varies along W, y along H.

    Spacing matches ``align_corners=True`` (the corner pixels sit at +-1), so
    ``grid_sample_2d(image, grid[None], align_corners=True)`` is the identity.
    """
    y = _axis_coords(height, dtype)[:, None]
    x = _axis_coords(width, dtype)[None, :]
    return jnp.stack(jnp.broadcast_arrays(x, y), axis=-1)


def make_coordinate_grid_3d(depth, height, width, dtype=jnp.float32):
    """[D, H, W, 3] grid of (x, y, z) in [-1, 1] (align_corners=True spacing).

    x varies along W, y along H and z along D, matching the coordinate order
    expected by :func:`vasa_jax.ops.grid_sample_3d`.
    """
    z = _axis_coords(depth, dtype)[:, None, None]
    y = _axis_coords(height, dtype)[None, :, None]
    x = _axis_coords(width, dtype)[None, None, :]
    return jnp.stack(jnp.broadcast_arrays(x, y, z), axis=-1)


def keypoints_to_gaussian_volume(kp, spatial_shape, variance):
    """Gaussian heatmaps of keypoints on the 3D coordinate grid.

    value[b, d, h, w, k] = exp(-0.5 * |grid[d, h, w] - kp[b, k]|^2 / variance)
    with ``grid = make_coordinate_grid_3d(*spatial_shape)``.

    The isotropic Gaussian factorises over the three axes, so it is computed
    as an outer product of three 1-D profiles instead of materialising a
    [B, D, H, W, K, 3] difference tensor.

    Args:
      kp: [B, K, 3] keypoints (x, y, z) in normalised coordinates.
      spatial_shape: (D, H, W).
      variance: scalar (or broadcastable) variance in normalised units.

    Returns:
      [B, D, H, W, K] heatmaps, peaking at 1 on the keypoint location.
    """
    kp = jnp.asarray(kp)
    depth, height, width = spatial_shape
    dtype = jnp.result_type(kp.dtype, jnp.float32)
    kp = kp.astype(dtype)

    def profile(n, coord):
        # [B, n, K] = exp(-0.5 * (axis_coord - kp_coord)^2 / variance)
        diff = _axis_coords(n, dtype)[None, :, None] - coord[:, None, :]
        return jnp.exp(-0.5 * diff**2 / variance)

    gx = profile(width, kp[..., 0])
    gy = profile(height, kp[..., 1])
    gz = profile(depth, kp[..., 2])
    return gz[:, :, None, None, :] * gy[:, None, :, None, :] * gx[:, None, None, :, :]


def keypoints_to_gaussian_2d(kp, size, variance):
    """Gaussian heatmaps [B, size, size, K] of keypoints' image-plane positions (x, y of [B, K, 2 or 3]) on the
    2D grid ``make_coordinate_grid_2d(size, size)``: exp(-0.5 * |grid - kp_xy|^2 / variance)."""
    kp = jnp.asarray(kp).astype(jnp.result_type(kp.dtype, jnp.float32))
    axis = _axis_coords(size, kp.dtype)
    profile_x = jnp.exp(-0.5 * (axis[None, :, None] - kp[:, None, :, 0]) ** 2 / variance)  # [B, W, K]
    profile_y = jnp.exp(-0.5 * (axis[None, :, None] - kp[:, None, :, 1]) ** 2 / variance)  # [B, H, K]
    return profile_y[:, :, None, :] * profile_x[:, None, :, :]
