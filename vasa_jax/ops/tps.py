"""Random affine + thin-plate-spline (TPS) transforms for equivariance losses.

The keypoint equivariance loss (FOMM / face-vid2vid) warps an image with a
random smooth transform T and asks the keypoint detector to commute with it:
kp(warp(image)) mapped through T should equal kp(image).  Coordinates are the
normalised (x, y) in [-1, 1] used by :func:`vasa_jax.ops.grid_sample_2d`.

The transform of a point p = (x, y) is

    T(p) = theta[:, :2] @ p + theta[:, 2]
           + sum_k c_k * U(|p - cp_k|^2) * (1, 1),   U(r2) = r2 * log(r2 + 1e-6)

Choices, kept consistent across all functions here:

* the radial (TPS) term uses the distances of the ORIGINAL point p to the
  control points (as face-vid2vid does), not of the affinely transformed one;
* there is a single TPS coefficient c_k per control point (``control_params``
  has shape [B, 1, P*P]), so the radial term is a scalar added equally to x
  and y, again following face-vid2vid;
* the kernel is r^2 log(r^2) with the Euclidean distance (face-vid2vid uses
  an L1 distance with r^2 log r); the difference only rescales the random
  coefficients.  The 1e-6 keeps log finite at r = 0, where U is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vasa_jax.ops.keypoints import make_coordinate_grid_2d
from vasa_jax.ops.warp import grid_sample_2d

__all__ = ["sample_tps_params", "tps_transform_points", "tps_warp_image", "tps_jacobian"]

_TPS_EPS = 1e-6


def sample_tps_params(rng, batch_size, *, sigma_affine=0.05, sigma_tps=0.005, points_tps=5):
    """Draws a batch of random affine + TPS transforms.

    Args:
      rng: a ``jax.random`` key.
      batch_size: number of independent transforms B.
      sigma_affine: std of the Gaussian noise added to the identity affine.
      sigma_tps: std of the TPS coefficients.
      points_tps: control points per side P (a regular P x P grid).

    Returns:
      dict with
        theta: [B, 2, 3] affine matrices, identity + N(0, sigma_affine);
        control_points: [P*P, 2] (x, y) control points on a regular grid in
          [-1, 1] (shared by the batch, not random);
        control_params: [B, 1, P*P] TPS coefficients ~ N(0, sigma_tps).
    """
    key_affine, key_tps = jax.random.split(rng)
    identity = jnp.eye(2, 3, dtype=jnp.float32)
    theta = identity + sigma_affine * jax.random.normal(
        key_affine, (batch_size, 2, 3), jnp.float32
    )
    control_points = make_coordinate_grid_2d(points_tps, points_tps).reshape(-1, 2)
    control_params = sigma_tps * jax.random.normal(
        key_tps, (batch_size, 1, points_tps * points_tps), jnp.float32
    )
    return {
        "theta": theta,
        "control_points": control_points,
        "control_params": control_params,
    }


def tps_transform_points(params, points):
    """Applies the transforms to points: [B, N, 2] (x, y) -> [B, N, 2].

    Affine part on the homogeneous point (x, y, 1), plus the TPS radial term
    evaluated on the original points (see the module docstring).
    """
    theta = params["theta"]
    control_points = params["control_points"]
    control_params = params["control_params"]
    points = jnp.asarray(points)
    dtype = jnp.result_type(points.dtype, jnp.float32)
    points = points.astype(dtype)

    affine = jnp.einsum("bij,bnj->bni", theta[:, :, :2].astype(dtype), points)
    affine = affine + theta[:, None, :, 2].astype(dtype)

    # [B, N, K] squared Euclidean distances to the control points.
    diff = points[:, :, None, :] - control_points[None, None, :, :].astype(dtype)
    r2 = jnp.sum(diff * diff, axis=-1)
    radial = r2 * jnp.log(r2 + _TPS_EPS)
    tps = jnp.sum(radial * control_params.astype(dtype), axis=-1)  # [B, N]
    return affine + tps[..., None]


def tps_warp_image(params, image):
    """Warps images with the transforms: out(p) = image(T(p)).

    Args:
      params: output of :func:`sample_tps_params` (batch B).
      image: [B, H, W, C].

    Returns:
      [B, H, W, C]; bilinear sampling with ``align_corners=True`` (pixel
      centres at the linspace grid of :func:`make_coordinate_grid_2d`) and
      zeros padding outside the source image.
    """
    image = jnp.asarray(image)
    batch, height, width, _ = image.shape
    grid = make_coordinate_grid_2d(height, width).reshape(1, height * width, 2)
    grid = jnp.broadcast_to(grid, (batch, height * width, 2))
    sample_at = tps_transform_points(params, grid).reshape(batch, height, width, 2)
    return grid_sample_2d(image, sample_at, align_corners=True, padding_mode="zeros")


def tps_jacobian(params, points):
    """Jacobians of the transforms at points: [B, N, 2] -> [B, N, 2, 2].

    ``J[b, n, i, j] = d T(p)_i / d p_j`` evaluated at ``points[b, n]``
    (computed with ``jax.jacfwd`` per point).
    """
    points = jnp.asarray(points)
    control_points = params["control_points"]

    def point_transform(theta, control_params, point):
        # One example's transform of one point: [2] -> [2].
        single = {
            "theta": theta[None],
            "control_points": control_points,
            "control_params": control_params[None],
        }
        return tps_transform_points(single, point[None, None, :])[0, 0]

    jac = jax.jacfwd(point_transform, argnums=2)  # [2, 2] per point
    per_example = jax.vmap(jac, in_axes=(None, None, 0))
    return jax.vmap(per_example)(params["theta"], params["control_params"], points)
