"""Keypoint geometry: rotations, keypoint transform, head-pose bins, heatmaps."""

import numpy as np
import pytest

import jax.numpy as jnp

from vasa_jax.ops import (
    degrees_to_headpose_bin,
    euler_from_rotation_matrix,
    headpose_bins_to_degrees,
    keypoint_jacobian,
    keypoints_to_gaussian_volume,
    make_coordinate_grid_2d,
    make_coordinate_grid_3d,
    rotation_matrix,
    transform_keypoints,
)


def _np_rotation(yaw, pitch, roll):
    """Explicit R_x(pitch) @ R_y(yaw) @ R_z(roll) for one set of degrees."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _random_angles(seed, shape, limit=80.0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-limit, limit, shape).astype(np.float32) for _ in range(3)]


def test_rotation_matrix_matches_explicit_product():
    yaw, pitch, roll = _random_angles(0, (7,), limit=170.0)
    rot = np.asarray(rotation_matrix(yaw, pitch, roll))
    ref = np.stack([_np_rotation(*a) for a in zip(yaw, pitch, roll)])
    np.testing.assert_allclose(rot, ref, atol=1e-6)


def test_rotation_matrix_is_orthonormal_any_batch_shape():
    yaw, pitch, roll = _random_angles(1, (2, 3, 4), limit=180.0)
    rot = np.asarray(rotation_matrix(yaw, pitch, roll), np.float64)
    assert rot.shape == (2, 3, 4, 3, 3)
    eye = np.broadcast_to(np.eye(3), rot.shape)
    np.testing.assert_allclose(rot @ np.swapaxes(rot, -1, -2), eye, atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-6)


def test_rotation_matrix_broadcasts_scalars():
    rot = rotation_matrix(np.zeros((5,), np.float32), 0.0, 0.0)
    assert rot.shape == (5, 3, 3)
    np.testing.assert_allclose(np.asarray(rot), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-7)


def test_euler_round_trip():
    yaw, pitch, roll = _random_angles(2, (64,), limit=80.0)
    y2, p2, r2 = euler_from_rotation_matrix(rotation_matrix(yaw, pitch, roll))
    np.testing.assert_allclose(np.asarray(y2), yaw, atol=1e-3)
    np.testing.assert_allclose(np.asarray(p2), pitch, atol=1e-3)
    np.testing.assert_allclose(np.asarray(r2), roll, atol=1e-3)


def test_transform_keypoints_matches_numpy():
    rng = np.random.default_rng(3)
    b, k = 2, 5
    kp_c = rng.standard_normal((b, k, 3)).astype(np.float32)
    yaw, pitch, roll = _random_angles(4, (b,))
    rot = np.asarray(rotation_matrix(yaw, pitch, roll))
    t = rng.standard_normal((b, 3)).astype(np.float32)
    delta = 0.1 * rng.standard_normal((b, k, 3)).astype(np.float32)
    log_s = 0.2 * rng.standard_normal((b,)).astype(np.float32)

    out = np.asarray(transform_keypoints(kp_c, rot, t, delta, log_s))
    ref = np.stack(
        [np.exp(log_s[i]) * (kp_c[i] @ rot[i] + delta[i]) + t[i] for i in range(b)]
    )
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

    # keypoint_jacobian is the linear part: x(x_c + e_i) - x(x_c) = row i of J.
    jac = np.asarray(keypoint_jacobian(rot, log_s))
    shifted = np.asarray(transform_keypoints(kp_c + np.eye(3)[0], rot, t, delta, log_s))
    np.testing.assert_allclose(shifted - out, np.broadcast_to(jac[:, None, 0], out.shape), atol=1e-5)


def test_identity_pose_is_identity():
    rng = np.random.default_rng(5)
    kp_c = rng.standard_normal((3, 4, 3)).astype(np.float32)
    zeros = np.zeros((3,), np.float32)
    rot = rotation_matrix(zeros, zeros, zeros)
    out = transform_keypoints(kp_c, rot, np.zeros((3, 3)), np.zeros_like(kp_c), zeros)
    np.testing.assert_allclose(np.asarray(out), kp_c, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(keypoint_jacobian(rot, zeros)), np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-7
    )


@pytest.mark.parametrize("bin_index", [0, 1, 33, 65])
def test_headpose_one_hot_bin_to_degrees(bin_index):
    logits = np.full((2, 66), -1e4, np.float32)
    logits[:, bin_index] = 0.0
    deg = np.asarray(headpose_bins_to_degrees(logits))
    np.testing.assert_allclose(deg, bin_index * 3 - 99, atol=1e-4)
    # ... and back to the same bin.
    assert np.all(np.asarray(degrees_to_headpose_bin(deg + 1.0)) == bin_index)


def test_headpose_uniform_logits_give_bin_average():
    deg = headpose_bins_to_degrees(np.zeros((66,), np.float32))
    np.testing.assert_allclose(float(deg), 32.5 * 3 - 99, atol=1e-4)


def test_degrees_to_headpose_bin_clips_and_rounds_to_nearest_bin_value():
    deg = np.array([-150.0, -99.0, -98.0, -97.0, -96.0, 0.0, 1.4, 1.6, 98.9, 120.0], np.float32)
    bins = np.asarray(degrees_to_headpose_bin(deg))
    assert bins.dtype == np.int32
    np.testing.assert_array_equal(bins, [0, 0, 0, 1, 1, 33, 33, 34, 65, 65])


def test_headpose_rejects_wrong_bin_count():
    with pytest.raises(ValueError, match="66"):
        headpose_bins_to_degrees(np.zeros((3, 65), np.float32))


def test_coordinate_grids():
    g3 = np.asarray(make_coordinate_grid_3d(2, 3, 4))
    assert g3.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(g3[0, 0, :, 0], np.linspace(-1, 1, 4), atol=1e-6)  # x along W
    np.testing.assert_allclose(g3[0, :, 0, 1], np.linspace(-1, 1, 3), atol=1e-6)  # y along H
    np.testing.assert_allclose(g3[:, 0, 0, 2], np.linspace(-1, 1, 2), atol=1e-6)  # z along D
    g2 = np.asarray(make_coordinate_grid_2d(3, 5))
    assert g2.shape == (3, 5, 2)
    np.testing.assert_allclose(g2[1, :, 0], np.linspace(-1, 1, 5), atol=1e-6)
    np.testing.assert_allclose(g2[:, 2, 1], np.linspace(-1, 1, 3), atol=1e-6)


def test_gaussian_volume_peaks_at_keypoint():
    d, h, w = 5, 7, 9
    grid = np.asarray(make_coordinate_grid_3d(d, h, w))
    # Keypoints exactly on grid nodes (batch 2, 3 keypoints).
    nodes = [(1, 2, 3), (4, 0, 8), (2, 6, 0)]
    kp = np.stack([[grid[i] for i in nodes], [grid[i] for i in reversed(nodes)]])
    vol = np.asarray(keypoints_to_gaussian_volume(kp, (d, h, w), 0.01))
    assert vol.shape == (2, d, h, w, 3)
    for b, order in enumerate([nodes, list(reversed(nodes))]):
        for k, node in enumerate(order):
            np.testing.assert_allclose(vol[(b, *node, k)], 1.0, atol=1e-6)
            assert np.unravel_index(np.argmax(vol[b, ..., k]), (d, h, w)) == node

    # Matches the direct (non-factorised) formula.
    ref = np.exp(
        -0.5 * np.sum((grid[None, :, :, :, None, :] - kp[:, None, None, None]) ** 2, -1) / 0.01
    )
    np.testing.assert_allclose(vol, ref, rtol=1e-5, atol=1e-6)


def test_functions_accept_jax_arrays_and_bfloat16():
    rot = rotation_matrix(jnp.ones((2,), jnp.bfloat16), 0.0, 0.0)
    assert rot.shape == (2, 3, 3)
    deg = headpose_bins_to_degrees(jnp.zeros((4, 66), jnp.bfloat16))
    assert deg.dtype == jnp.float32
