"""Random affine + TPS transforms used by the keypoint equivariance loss."""

import numpy as np

import jax
import jax.numpy as jnp

from vasa_jax import ops
from vasa_jax.ops import make_coordinate_grid_2d, sample_tps_params

# Jitted once per shape: far cheaper on CPU than op-by-op eager dispatch.
tps_transform_points = jax.jit(ops.tps_transform_points)
tps_warp_image = jax.jit(ops.tps_warp_image)
tps_jacobian = jax.jit(ops.tps_jacobian)
grid_sample_2d = ops.grid_sample_2d


def _random_points(seed, batch, n, limit=0.9):
    rng = np.random.default_rng(seed)
    return rng.uniform(-limit, limit, (batch, n, 2)).astype(np.float32)


def _smooth_image(height, width):
    """[1, H, W, 2] analytic image f(x, y) on the align_corners=True grid."""
    grid = np.asarray(make_coordinate_grid_2d(height, width))
    return _smooth_fn(grid)[None]


def _smooth_fn(xy):
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([np.sin(1.5 * x) + 0.5 * np.cos(2.0 * y), x * y], axis=-1)


def test_param_shapes_and_determinism():
    params = sample_tps_params(jax.random.PRNGKey(0), 3, points_tps=4)
    assert params["theta"].shape == (3, 2, 3)
    assert params["control_points"].shape == (16, 2)
    assert params["control_params"].shape == (3, 1, 16)
    again = sample_tps_params(jax.random.PRNGKey(0), 3, points_tps=4)
    for key in params:
        np.testing.assert_array_equal(np.asarray(params[key]), np.asarray(again[key]))
    other = sample_tps_params(jax.random.PRNGKey(1), 3, points_tps=4)
    assert not np.allclose(np.asarray(params["theta"]), np.asarray(other["theta"]))
    # Control points form a regular grid over [-1, 1]^2.
    cp = np.asarray(params["control_points"])
    np.testing.assert_allclose(np.unique(cp[:, 0]), np.linspace(-1, 1, 4), atol=1e-7)
    np.testing.assert_allclose(np.unique(cp[:, 1]), np.linspace(-1, 1, 4), atol=1e-7)


def test_zero_noise_is_identity():
    params = sample_tps_params(jax.random.PRNGKey(0), 2, sigma_affine=0.0, sigma_tps=0.0)
    pts = _random_points(0, 2, 50)
    np.testing.assert_allclose(np.asarray(tps_transform_points(params, pts)), pts, atol=1e-6)

    image = np.random.default_rng(1).standard_normal((2, 9, 11, 3)).astype(np.float32)
    warped = np.asarray(tps_warp_image(params, image))
    np.testing.assert_allclose(warped[:, 1:-1, 1:-1], image[:, 1:-1, 1:-1], atol=1e-5)

    jac = np.asarray(tps_jacobian(params, pts))
    np.testing.assert_allclose(jac, np.broadcast_to(np.eye(2), (2, 50, 2, 2)), atol=1e-6)


def test_affine_only_matches_matrix_product():
    params = sample_tps_params(jax.random.PRNGKey(2), 3, sigma_affine=0.1, sigma_tps=0.0)
    theta = np.asarray(params["theta"])
    pts = _random_points(3, 3, 20)
    homog = np.concatenate([pts, np.ones_like(pts[..., :1])], -1)
    ref = np.einsum("bij,bnj->bni", theta, homog)
    np.testing.assert_allclose(np.asarray(tps_transform_points(params, pts)), ref, atol=1e-6)
    jac = np.asarray(tps_jacobian(params, pts))
    np.testing.assert_allclose(jac, np.broadcast_to(theta[:, None, :, :2], jac.shape), atol=1e-6)


def test_tps_term_and_jacobian():
    params = sample_tps_params(jax.random.PRNGKey(4), 2, sigma_affine=0.05, sigma_tps=0.05)
    pts = _random_points(5, 2, 10)
    out = np.asarray(tps_transform_points(params, pts), np.float64)

    # Explicit formula: affine(p) + sum_k c_k r_k^2 log(r_k^2 + 1e-6), r on p.
    theta = np.asarray(params["theta"], np.float64)
    cp = np.asarray(params["control_points"], np.float64)
    c = np.asarray(params["control_params"], np.float64)[:, 0]
    r2 = np.sum((pts[:, :, None, :] - cp[None, None]) ** 2, -1)
    tps = np.sum(c[:, None, :] * r2 * np.log(r2 + 1e-6), -1)
    ref = np.einsum("bij,bnj->bni", theta[:, :, :2], pts) + theta[:, None, :, 2] + tps[..., None]
    np.testing.assert_allclose(out, ref, atol=1e-5)

    # Jacobian against central finite differences.
    jac = np.asarray(tps_jacobian(params, pts))
    eps = 1e-3
    for j in range(2):
        step = np.zeros(2, np.float32)
        step[j] = eps
        fd = (
            np.asarray(tps_transform_points(params, pts + step))
            - np.asarray(tps_transform_points(params, pts - step))
        ) / (2 * eps)
        np.testing.assert_allclose(jac[..., :, j], fd, atol=2e-3)


def test_warp_consistency_with_point_transform():
    """If T maps p to q, warped image at p equals the original image at q."""
    h, w = 48, 40
    image = _smooth_image(h, w)
    params = sample_tps_params(jax.random.PRNGKey(6), 1, sigma_affine=0.05, sigma_tps=0.005)
    warped = tps_warp_image(params, image)

    p = _random_points(7, 1, 200, limit=0.7)
    q = np.asarray(tps_transform_points(params, p))
    warped_at_p = np.asarray(
        grid_sample_2d(warped, p[:, :, None, :], align_corners=True)
    )[:, :, 0]
    image_at_q = np.asarray(
        grid_sample_2d(image, q[:, :, None, :], align_corners=True)
    )[:, :, 0]
    # Two bilinear interpolations of a smooth image on a ~0.05 pixel pitch.
    np.testing.assert_allclose(warped_at_p, image_at_q, atol=5e-3)
    np.testing.assert_allclose(warped_at_p, _smooth_fn(q), atol=5e-3)

    # At pixel centres only the source interpolation remains: exact match.
    grid = np.broadcast_to(np.asarray(make_coordinate_grid_2d(h, w))[None], (1, h, w, 2))
    q_grid = np.asarray(tps_transform_points(params, grid.reshape(1, -1, 2))).reshape(1, h, w, 2)
    np.testing.assert_allclose(
        np.asarray(warped), np.asarray(grid_sample_2d(image, q_grid, align_corners=True)), atol=1e-6
    )


def test_jit_compatible():
    f = jax.jit(lambda key, img: tps_warp_image(sample_tps_params(key, 2), img))
    out = f(jax.random.PRNGKey(0), jnp.ones((2, 8, 8, 1)))
    assert out.shape == (2, 8, 8, 1)
