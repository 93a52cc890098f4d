"""Stage-1 face latent model: latent shapes, logical axis names, and geometric identities of the decoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vasa_jax import ops
from vasa_jax.models.stage1 import FaceLatentModel, MotionFieldEstimator, Stage1ModelConfig, keypoints_from_latents

SMALL = dict(
    image_size=32, num_keypoints=4, afe_base_channels=8, afe_num_down=1, afe_max_channels=16, volume_depth=4,
    volume_channels=4, afe_num_res_blocks=1, kp_scale_factor=1.0, kp_base_channels=8, kp_num_down=2,
    kp_max_channels=16, kp_volume_depth=2, kp_volume_channels=8, kp_num_up=1, hpe_base_channels=8, hpe_num_down=2,
    hpe_max_channels=16, mfe_compress_channels=2, mfe_base_channels=8, mfe_max_channels=16, mfe_num_levels=1,
    gen_channels=16, gen_num_res_blocks=1, dyn_base_channels=8, dyn_num_down=2, dyn_max_channels=16, dyn_hidden=16,
    expression_code_dim=4, expression_channels=16, expression_map_channels=4, refine_base_channels=8,
    refine_max_channels=16, refine_num_levels=2,
)


@pytest.fixture(scope="module")
def model_and_params():
    cfg = Stage1ModelConfig(**SMALL)
    model = FaceLatentModel(cfg)
    image = jnp.zeros((1, 32, 32, 3))
    variables = model.init(jax.random.key(0), image, image)
    return model, variables


def test_latent_shapes_and_output_range(model_and_params):
    model, variables = model_and_params
    params = nn.unbox(variables)
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    v_app, z_id, z_pose, z_dyn = model.apply(params, images, method=FaceLatentModel.encode)
    assert v_app.shape == (2, 4, 16, 16, 4)
    assert z_id.shape == (2, 4, 3) and z_pose.shape == (2, 7) and z_dyn.shape == (2, 3 * 4 + 4)
    assert np.all(np.abs(np.asarray(z_id)) <= 1.0)
    assert np.all(np.abs(np.asarray(z_pose[:, :3])) <= 99.0)
    out = model.apply(params, v_app, z_id, z_pose, z_dyn, z_pose[::-1], z_dyn[::-1], method=FaceLatentModel.decode)
    assert out.shape == (2, 32, 32, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_wrong_image_size_is_a_clear_error(model_and_params):
    model, variables = model_and_params
    with pytest.raises(ValueError, match="expected images of shape"):
        model.apply(nn.unbox(variables), jnp.zeros((1, 48, 48, 3)), method=FaceLatentModel.encode)


def test_kernels_carry_logical_axes(model_and_params):
    _, variables = model_and_params
    specs = jax.tree.leaves(nn.get_partition_spec(variables), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert any("conv_out" in tuple(s) for s in specs)
    assert any("mlp" in tuple(s) for s in specs)


def test_untrained_pose_heads_leave_canonical_keypoints_in_place(model_and_params):
    model, variables = model_and_params
    params = nn.unbox(variables)
    images = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
    z_pose, z_dyn = model.apply(params, images, method=FaceLatentModel.encode_motion)
    np.testing.assert_allclose(np.asarray(z_pose[:, 3:]), 0.0, atol=1e-7)  # translation and log-scale start at 0
    np.testing.assert_allclose(np.asarray(z_dyn[:, : 3 * 4]), 0.0, atol=1e-7)  # the deformations too


def test_same_source_and_driving_keypoints_give_identity_flow():
    """Every per-keypoint flow reduces to the identity when driving == source, so the composed flow is the
    identity grid whatever the composition masks are."""
    cfg = Stage1ModelConfig(**SMALL)
    mfe = MotionFieldEstimator(cfg)
    volume = jax.random.normal(jax.random.key(3), (2, 4, 16, 16, 4))
    z_id = jax.random.uniform(jax.random.key(4), (2, 4, 3), minval=-0.5, maxval=0.5)
    pose = jnp.array([[20.0, -10.0, 5.0, 0.1, -0.05, 0.0, 0.1], [-30.0, 5.0, 0.0, 0.0, 0.1, 0.0, -0.1]])
    dyn = 0.05 * jax.random.normal(jax.random.key(5), (2, 4 * 3))
    kp = keypoints_from_latents(z_id, pose, dyn)
    variables = mfe.init(jax.random.key(6), volume, kp, kp, pose, pose)
    flow, occlusion, mask = mfe.apply(variables, volume, kp, kp, pose, pose)
    grid = ops.make_coordinate_grid_3d(4, 16, 16)
    np.testing.assert_allclose(np.asarray(flow), np.broadcast_to(grid, flow.shape), atol=1e-5)
    np.testing.assert_allclose(np.asarray(mask.sum(-1)), 1.0, atol=1e-5)
    assert occlusion.shape == (2, 16, 16, 1)


def test_keypoint_flows_send_rigidly_moving_points_to_their_source_position():
    """Different rotations, scales and translations in source and driving: a canonical point c with keypoint
    k's deformation sits at s_d (c R_d + delta_k) + t_d in the driving frame; flow k must map it to
    s_s (c R_s + delta_k) + t_s. A swapped or transposed Jacobian product fails this."""
    from vasa_jax.models.stage1 import keypoint_flows

    rng = np.random.default_rng(0)
    z_id = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 3, 3)), jnp.float32)
    dyn = jnp.asarray(rng.normal(0, 0.05, (2, 3, 3)), jnp.float32)
    pose_s = jnp.array([[25.0, -10.0, 5.0, 0.1, -0.05, 0.02, 0.1], [-15.0, 20.0, -8.0, 0.0, 0.1, 0.0, -0.2]])
    pose_d = jnp.array([[-20.0, 15.0, -5.0, -0.1, 0.05, 0.0, -0.15], [30.0, -5.0, 12.0, 0.05, 0.0, -0.1, 0.25]])
    flat = lambda deformation: deformation.reshape(deformation.shape[0], -1)  # z_dyn without an expression code
    kp_s, kp_d = keypoints_from_latents(z_id, pose_s, flat(dyn)), keypoints_from_latents(z_id, pose_d, flat(dyn))
    canonical = jnp.asarray(rng.uniform(-0.6, 0.6, (5, 3)), jnp.float32)  # five arbitrary points

    def place(pose, k):  # the canonical points moved like keypoint k: [B, 5, 3]
        points = canonical[None] + jnp.zeros((2, 1, 3))
        return keypoints_from_latents(points, pose, flat(jnp.broadcast_to(dyn[:, k : k + 1], (2, 5, 3))))

    for k in range(3):
        driving_points, source_points = place(pose_d, k), place(pose_s, k)
        for b in range(2):
            flows = keypoint_flows(driving_points[b], kp_s[b : b + 1], kp_d[b : b + 1], pose_s[b : b + 1], pose_d[b : b + 1])
            np.testing.assert_allclose(np.asarray(flows[0, k]), np.asarray(source_points[b]), atol=1e-5)


def test_flow_follows_a_pure_translation():
    """Driving keypoints shifted by t (same rotation and scale) must send each driving point z to z - t."""
    cfg = Stage1ModelConfig(**SMALL)
    mfe = MotionFieldEstimator(cfg)
    volume = jax.random.normal(jax.random.key(7), (1, 4, 16, 16, 4))
    z_id = jax.random.uniform(jax.random.key(8), (1, 4, 3), minval=-0.5, maxval=0.5)
    pose_s = jnp.array([[10.0, 5.0, -5.0, 0.0, 0.0, 0.0, 0.0]])
    shift = jnp.array([0.2, -0.1, 0.05])
    pose_d = pose_s.at[:, 3:6].add(shift)
    zero = jnp.zeros((1, 4 * 3))
    kp_s, kp_d = keypoints_from_latents(z_id, pose_s, zero), keypoints_from_latents(z_id, pose_d, zero)
    variables = mfe.init(jax.random.key(9), volume, kp_s, kp_d, pose_s, pose_d)
    flow, _, mask = mfe.apply(variables, volume, kp_s, kp_d, pose_s, pose_d)
    grid = np.asarray(ops.make_coordinate_grid_3d(4, 16, 16))
    keypoint_mass = 1.0 - np.asarray(mask[..., :1])  # share of the non-background flows
    expected = grid[None] - keypoint_mass * np.asarray(shift)
    np.testing.assert_allclose(np.asarray(flow), expected, atol=1e-5)


def test_depth_split_conv3d_equals_native_conv3d():
    from vasa_jax.models.layers import Conv3D

    x = jax.random.normal(jax.random.key(10), (2, 5, 6, 7, 3))
    for kernel in (1, 3, 5):
        split = Conv3D(4, kernel, lowering="depth_split")
        variables = nn.unbox(split.init(jax.random.key(11), x))
        variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero bias too
        native = nn.Conv(4, (kernel,) * 3, padding="SAME")
        np.testing.assert_allclose(
            np.asarray(split.apply(variables, x)), np.asarray(native.apply(variables, x)), rtol=1e-5, atol=1e-5
        )


def assert_same_values_and_gradients(ours, reference, x, kernel, message=""):
    """ours(x, kernel) equals reference(x, kernel), and so do the gradients of a nonlinear loss of it."""
    expected = reference(x, kernel)
    np.testing.assert_allclose(np.asarray(ours(x, kernel)), np.asarray(expected),
                               atol=1e-5 * float(jnp.max(jnp.abs(expected))), err_msg=message)

    def loss(x, kernel, conv):
        return jnp.sum(jnp.sin(conv(x, kernel)))

    for g, e in zip(jax.grad(loss, (0, 1))(x, kernel, ours), jax.grad(loss, (0, 1))(x, kernel, reference)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-4 * float(jnp.max(jnp.abs(e))), err_msg=message)


def xla_conv2d(x, kernel, groups=1):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


def test_fft_conv3d_equals_native_conv3d_values_and_gradients():
    """The FFT lowering (LivePortrait's 7x7x7 mask convolution on CPU): whole planes, planes cut into 32-pixel
    tiles whose transforms overlap-add, planes smaller than the kernel; the gradients too (fine-tuning goes
    through it)."""
    from vasa_jax.models.layers import conv3d_same

    cases = (((2, 5, 9, 11, 3), (3, 7, 5, 3, 4)), ((1, 3, 64, 32, 4), (5, 7, 7, 4, 3)),
             ((1, 2, 2, 3, 2), (1, 7, 9, 2, 3)))  # (the last: planes smaller than the kernel's radius)
    for shape, kernel_shape in cases:
        x = jax.random.normal(jax.random.key(12), shape)
        kernel = jax.random.normal(jax.random.key(13), kernel_shape)

        def loss(x, kernel, lowering):
            return jnp.sum(jnp.sin(conv3d_same(x, kernel, lowering)))

        native = conv3d_same(x, kernel, "native")
        np.testing.assert_allclose(np.asarray(conv3d_same(x, kernel, "fft")), np.asarray(native),
                                   atol=1e-5 * float(jnp.max(jnp.abs(native))))
        for ours, theirs in zip(jax.grad(loss, (0, 1))(x, kernel, "fft"), jax.grad(loss, (0, 1))(x, kernel, "native")):
            np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-4 * float(jnp.max(jnp.abs(theirs))))


def test_conv_of_upsampled_equals_conv_of_the_upsampled_input():
    from vasa_jax.models.layers import conv_of_upsampled

    x = jax.random.normal(jax.random.key(14), (2, 7, 5, 6))
    for factor in (1, 2, 3, 4):
        for size in (1, 3, 5):
            kernel = jax.random.normal(jax.random.key(size), (size, size, 6, 4))
            upsampled = jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
            expected = jax.lax.conv_general_dilated(upsampled, kernel, (1, 1), "SAME",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
            # Float32 sums of up to 150 products in another order: relative to the output's scale (outputs near
            # 26 differed by 1.5e-5 on a loaded machine, over a fixed 1e-5).
            np.testing.assert_allclose(np.asarray(conv_of_upsampled(x, kernel, factor)), np.asarray(expected),
                                       atol=1e-6 * float(jnp.max(jnp.abs(expected))),
                                       err_msg=f"factor {factor}, kernel {size}")


def test_conv3d_of_upsampled_input_equals_conv3d_of_the_upsampled_input():
    """conv3d_same's `upsample` (LivePortrait's hourglass up blocks): every lowering, values and gradients, against
    XLA's 3D convolution of the explicitly upsampled input; a non-square kernel takes the explicit path."""
    from vasa_jax.models.layers import conv3d_same

    x = jax.random.normal(jax.random.key(15), (2, 3, 5, 4, 6))
    for kernel_shape in ((3, 3, 3, 6, 5), (1, 3, 5, 6, 2)):
        kernel = jax.random.normal(jax.random.key(16), kernel_shape)
        for factor in (2, 3):
            def upsampled_first(x, kernel, factor=factor):
                return conv3d_same(jnp.repeat(jnp.repeat(x, factor, axis=2), factor, axis=3), kernel, "native")

            for lowering in ("depth_split", "fft", "native"):
                def ours(x, kernel, lowering=lowering, factor=factor):
                    return conv3d_same(x, kernel, lowering, upsample=factor)

                assert ours(x, kernel).shape == (2, 3, 5 * factor, 4 * factor, kernel_shape[-1])
                assert_same_values_and_gradients(ours, upsampled_first, x, kernel,
                                                 f"{lowering}, kernel {kernel_shape}, factor {factor}")


def test_conv2d_by_taps_equals_the_convolution():
    """LivePortrait's occlusion convolution (one output channel, 7x7): values and gradients against XLA's
    convolution, square and non-square kernels, planes smaller than the kernel."""
    from vasa_jax.models.layers import conv2d_by_taps

    for shape, kernel_shape in (((2, 9, 8, 6), (7, 7, 6, 1)), ((1, 5, 12, 4), (3, 5, 4, 3)), ((1, 2, 3, 2), (7, 7, 2, 2))):
        x = jax.random.normal(jax.random.key(17), shape)
        kernel = jax.random.normal(jax.random.key(18), kernel_shape)
        assert_same_values_and_gradients(conv2d_by_taps, xla_conv2d, x, kernel, str(kernel_shape))


def test_depthwise_conv2d_equals_the_grouped_convolution():
    """LivePortrait's ConvNeXt depthwise 7x7 convolutions: values and gradients against XLA's grouped convolution,
    square and non-square kernels, a plane smaller than the kernel."""
    from vasa_jax.models.layers import depthwise_conv2d

    for shape, size in (((2, 9, 8, 5), (7, 7)), ((1, 6, 4, 3), (3, 5)), ((1, 2, 3, 4), (7, 7))):
        x = jax.random.normal(jax.random.key(21), shape)
        kernel = jax.random.normal(jax.random.key(22), size + (1, shape[-1]))
        grouped = lambda x, kernel: xla_conv2d(x, kernel, groups=x.shape[-1])  # noqa: E731
        assert_same_values_and_gradients(depthwise_conv2d, grouped, x, kernel, str(size))


def test_image_skip_path_reproduces_the_source_when_nothing_moves():
    """With the image-space skip path, identical source and driving motion makes every image-plane flow, and so
    the composed sampling grid, the exact identity: the warped source image is the source. A decode without
    the source image is a clear error."""
    cfg = Stage1ModelConfig(**{**SMALL, "gen_image_skip": True, "image_motion_num_levels": 2})
    model = FaceLatentModel(cfg)
    images = jax.random.uniform(jax.random.key(12), (2, 32, 32, 3))
    params = nn.unbox(model.init(jax.random.key(13), images, images))
    volume, z_id, pose, dyn = model.apply(params, images, method=FaceLatentModel.encode)
    out = model.apply(params, volume, z_id, pose, dyn, pose, dyn, images, method=FaceLatentModel.decode)
    assert out.shape == (2, 32, 32, 3) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="needs source_image"):
        model.apply(params, volume, z_id, pose, dyn, pose, dyn, method=FaceLatentModel.decode)

    grid = model.apply(params, images, z_id, pose, dyn, pose, dyn, method=FaceLatentModel.source_image_grid)
    warped = ops.grid_sample_2d(images, grid, align_corners=True, padding_mode="border")
    np.testing.assert_allclose(np.asarray(warped), np.asarray(images), atol=1e-4)


def test_the_readouts_steer_the_image_motion_only_with_image_motion_expression():
    """With `image_motion_expression` the 2D motion network sees the expression readouts and adds a bounded residual
    flow: its grid then moves with z_dyn's expression code (which moves no keypoint), where without it the grid does
    not depend on the code at all. The residual starts at zero, so unchanged motion still warps the source onto
    itself; with its bias set to (b, 0) the whole grid moves by RESIDUAL_FLOW_LIMIT * tanh(b) in x."""
    from vasa_jax.models.stage1 import RESIDUAL_FLOW_LIMIT

    images = jax.random.uniform(jax.random.key(12), (2, 32, 32, 3))
    moved = {}
    for steered in (False, True):
        cfg = Stage1ModelConfig(**{**SMALL, "gen_image_skip": True, "image_motion_num_levels": 2,
                                   "image_motion_expression": steered})
        model = FaceLatentModel(cfg)
        params = nn.unbox(model.init(jax.random.key(13), images, images))
        volume, z_id, pose, dyn = model.apply(params, images, method=FaceLatentModel.encode)
        grid_of = lambda p, dyn_d: model.apply(p, images, z_id, pose, dyn, pose, dyn_d,
                                               method=FaceLatentModel.source_image_grid)
        # Driving keypoints off the source's (so the mask over the keypoint flows matters), then the code changed.
        deformed = dyn.at[:, : 3 * cfg.num_keypoints].add(
            0.05 * jax.random.normal(jax.random.key(14), (2, 3 * cfg.num_keypoints)))
        code_changed = deformed.at[:, 3 * cfg.num_keypoints:].add(1.0)
        moved[steered] = float(jnp.abs(grid_of(params, code_changed) - grid_of(params, deformed)).max())
        if steered:
            warped = ops.grid_sample_2d(images, grid_of(params, dyn), align_corners=True, padding_mode="border")
            np.testing.assert_allclose(np.asarray(warped), np.asarray(images), atol=1e-4)
            shifted = jax.tree.map(lambda x: x, params)
            shifted["params"]["image_motion"]["residual_flow"]["bias"] = jnp.array([0.5, 0.0])
            shift = grid_of(shifted, dyn) - grid_of(params, dyn)
            np.testing.assert_allclose(np.asarray(shift[..., 0]), RESIDUAL_FLOW_LIMIT * np.tanh(0.5), atol=1e-5)
            np.testing.assert_allclose(np.asarray(shift[..., 1]), 0.0, atol=1e-5)
    assert moved[False] == 0.0 and moved[True] > 1e-4, moved


def test_the_source_edit_paints_over_the_warped_source():
    """With `gen_source_edit` the warped source is edited in logit space before the blend: it starts as no edit
    (zero kernel and bias), and an edit of +b everywhere with the blend held on the warped source renders
    sigmoid(logit(source) + b) when nothing moves (the warped source is then the source)."""
    cfg = Stage1ModelConfig(**{**SMALL, "gen_image_skip": True, "image_motion_num_levels": 2, "gen_source_edit": True})
    model = FaceLatentModel(cfg)
    images = jax.random.uniform(jax.random.key(12), (2, 32, 32, 3), minval=0.05, maxval=0.95)
    params = nn.unbox(model.init(jax.random.key(13), images, images))
    edit = params["params"]["generator"]["source_edit"]
    assert not np.any(np.asarray(edit["kernel"])) and not np.any(np.asarray(edit["bias"]))
    volume, z_id, pose, dyn = model.apply(params, images, method=FaceLatentModel.encode)

    def decode(edit_bias):
        p = jax.tree_util.tree_map(lambda x: x, params)
        p["params"]["generator"]["source_edit"]["bias"] = jnp.full((3,), edit_bias)
        p["params"]["generator"]["blend"]["bias"] = jnp.full((1,), 30.0)  # sigmoid(30): the warped source only
        return model.apply(p, volume, z_id, pose, dyn, pose, dyn, images, method=FaceLatentModel.decode)

    np.testing.assert_allclose(np.asarray(decode(0.0)), np.asarray(images), atol=1e-4)
    logit = np.log(np.asarray(images)) - np.log1p(-np.asarray(images))
    np.testing.assert_allclose(np.asarray(decode(1.5)), 1.0 / (1.0 + np.exp(-(logit + 1.5))), atol=1e-4)


def test_image_plane_flows_follow_keypoints_and_rotation():
    """Keypoint k's flow sends its driving position to its source position; with a pure in-plane rotation
    (roll) between the frames it rotates the image plane about the keypoint; flow 0 is the identity."""
    from vasa_jax.models.stage1 import image_plane_flows, upsample_grid

    z_id = jnp.array([[[0.2, -0.1, 0.3], [-0.3, 0.25, -0.2]]])
    zero = jnp.zeros((1, 2 * 3))
    pose_s = jnp.array([[0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0]])
    pose_d = jnp.array([[0.0, 0.0, 30.0, -0.05, 0.1, 0.0, 0.0]])
    kp_s, kp_d = keypoints_from_latents(z_id, pose_s, zero), keypoints_from_latents(z_id, pose_d, zero)
    size = 65  # odd, so that the grid holds the point 0 exactly
    flows = np.asarray(image_plane_flows(size, kp_s, kp_d, pose_s, pose_d))
    identity = np.asarray(ops.make_coordinate_grid_2d(size, size))
    np.testing.assert_allclose(flows[0, 0], identity, atol=1e-6)
    for k in range(2):
        # The flow is affine: evaluate it at the driving keypoint through its linear form.
        p0, px, py = flows[0, k + 1, 32, 32], flows[0, k + 1, 32, 33], flows[0, k + 1, 33, 32]
        step = 2.0 / (size - 1)
        linear = np.stack([(px - p0) / step, (py - p0) / step])  # rows: d/dx, d/dy
        at_driving = p0 + (np.asarray(kp_d[0, k, :2]) - identity[32, 32]) @ linear
        np.testing.assert_allclose(at_driving, np.asarray(kp_s[0, k, :2]), atol=1e-5)
        rotation = np.asarray(ops.rotation_matrix(jnp.zeros(1), jnp.zeros(1), jnp.array([-30.0])))[0, :2, :2]
        np.testing.assert_allclose(linear, rotation, atol=1e-5)
    up = upsample_grid(jnp.asarray(identity)[None], 97)
    np.testing.assert_allclose(np.asarray(up[0]), np.asarray(ops.make_coordinate_grid_2d(97, 97)), atol=1e-6)


def test_the_expression_code_reaches_the_pixels_without_moving_a_keypoint(model_and_params):
    """z_dyn's expression code moves no keypoint (the warp is the same), yet the rendered image changes with it:
    the generator renders expression itself. And the readout reads the code alone."""
    model, variables = model_and_params
    params = nn.unbox(variables)
    images = jax.random.uniform(jax.random.key(7), (2, 32, 32, 3))
    volume, z_id, pose, dyn = model.apply(params, images, method=FaceLatentModel.encode)
    changed = dyn.at[:, 12:].add(1.0)  # the code only (4 keypoints x 3 deformations come first)
    np.testing.assert_array_equal(np.asarray(keypoints_from_latents(z_id, pose, dyn)),
                                  np.asarray(keypoints_from_latents(z_id, pose, changed)))
    decode = lambda d: model.apply(params, volume, z_id, pose, dyn, pose, d, method=FaceLatentModel.decode)
    assert float(jnp.abs(decode(changed) - decode(dyn)).max()) > 1e-3
    read = lambda d: model.apply(params, d, method=FaceLatentModel.read_expression)
    np.testing.assert_array_equal(np.asarray(read(dyn.at[:, :12].add(1.0))), np.asarray(read(dyn)))
    assert float(jnp.abs(read(changed) - read(dyn)).max()) > 1e-3
