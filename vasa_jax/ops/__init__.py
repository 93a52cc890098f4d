"""Low-level numerical ops: grid sampling, keypoint geometry, TPS transforms.

All functions are pure ``jnp`` (jit/vmap/grad friendly) and channels-last.
"""

from vasa_jax.ops.batch import join_examples, join_frames, split_examples, split_frames
from vasa_jax.ops.keypoints import (
    degrees_to_headpose_bin,
    euler_from_rotation_matrix,
    headpose_bins_to_degrees,
    keypoint_jacobian,
    keypoints_to_gaussian_2d,
    keypoints_to_gaussian_volume,
    make_coordinate_grid_2d,
    make_coordinate_grid_3d,
    rotation_matrix,
    transform_keypoints,
)
from vasa_jax.ops.tps import (
    sample_tps_params,
    tps_jacobian,
    tps_transform_points,
    tps_warp_image,
)
from vasa_jax.ops.warp import grid_sample_2d, grid_sample_3d

__all__ = [
    "degrees_to_headpose_bin",
    "euler_from_rotation_matrix",
    "grid_sample_2d",
    "grid_sample_3d",
    "headpose_bins_to_degrees",
    "join_examples",
    "join_frames",
    "keypoint_jacobian",
    "keypoints_to_gaussian_2d",
    "keypoints_to_gaussian_volume",
    "make_coordinate_grid_2d",
    "make_coordinate_grid_3d",
    "rotation_matrix",
    "sample_tps_params",
    "split_examples",
    "split_frames",
    "tps_jacobian",
    "tps_transform_points",
    "tps_warp_image",
    "transform_keypoints",
]
