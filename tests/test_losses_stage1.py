"""Stage-1 losses: each against a direct numpy computation or a property that a wrong formula would break."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vasa_jax import ops
from vasa_jax.losses import stage1 as losses


def test_keypoint_prior_matches_numpy():
    kp = np.random.default_rng(0).uniform(-0.3, 0.3, (2, 5, 3)).astype(np.float32)
    expected = []
    for b in range(2):
        spread = sum(
            max(0.0, 0.1 - float(np.sum((kp[b, i] - kp[b, j]) ** 2))) for i in range(5) for j in range(5) if i != j
        )
        expected.append(spread + abs(kp[b, :, 2].mean() - 0.33))
    np.testing.assert_allclose(float(losses.keypoint_prior_loss(jnp.asarray(kp))), np.mean(expected), rtol=1e-5)


def test_hinge_losses():
    real = [jnp.array([2.0, 0.5]), jnp.array([1.5])]
    fake = [jnp.array([-2.0, 0.0]), jnp.array([-0.5])]
    # relu(1 - real) means: [0, .5] -> .25 and [0] -> 0 ; relu(1 + fake): [0, 1] -> .5 and [.5] -> .5
    np.testing.assert_allclose(float(losses.hinge_discriminator_loss(real, fake)), 0.25 + 0.5 + 0.0 + 0.5)
    np.testing.assert_allclose(float(losses.hinge_generator_loss(fake)), 1.0 + 0.5)


def test_region_hinge_losses_judge_only_the_regions_patches():
    """Mouth and eye masks -> each logit cell's covered share; the hinge terms become the weighted means."""
    regions = np.zeros((2, 8, 8, 2), np.float32)
    regions[0, 0:4, 0:4, 0] = 1.0  # example 0: a mouth filling the top-left cell
    regions[0, 0:2, 0:4, 1] = 1.0  # an eye over the same pixels: the union counts them once
    regions[1, 4:8, 6:8, 1] = 1.0  # example 1: half of the bottom-right cell
    weights = losses.region_patch_weights(jnp.asarray(regions), (2, 2, 2, 1))
    expected = np.zeros((2, 2, 2, 1), np.float32)
    expected[0, 0, 0, 0], expected[1, 1, 1, 0] = 1.0, 0.5
    np.testing.assert_allclose(np.asarray(weights), expected)

    rng = np.random.default_rng(0)
    real, fake = (jnp.asarray(rng.normal(size=(2, 2, 2, 1)).astype(np.float32)) for _ in range(2))
    w = expected
    np.testing.assert_allclose(float(losses.hinge_generator_loss([fake], [weights])),
                               -np.sum(w * np.asarray(fake)) / w.sum(), rtol=1e-6)
    hinge = lambda x: np.maximum(x, 0.0)
    np.testing.assert_allclose(
        float(losses.hinge_discriminator_loss([real], [fake], [weights])),
        (np.sum(w * hinge(1 - np.asarray(real))) + np.sum(w * hinge(1 + np.asarray(fake)))) / w.sum(), rtol=1e-6)
    # The generator's gradient reaches only the covered patches.
    grad = np.asarray(jax.grad(lambda f: losses.hinge_generator_loss([f], [weights]))(fake))
    assert np.all(grad[expected == 0] == 0) and np.all(grad[expected > 0] < 0)
    with pytest.raises(ValueError, match="do not tile"):
        losses.region_patch_weights(jnp.asarray(regions), (2, 3, 3, 1))


def test_head_pose_loss_in_degrees_summed_over_angles_with_mask():
    """face-vid2vid's definition: degrees, the three angles summed, examples averaged (translation ignored)."""
    pred = jnp.array([[10.0, -4.0, 1.0, 9, 9, 9, 9], [0.0, 0.0, 0.0, 9, 9, 9, 9]])
    labels = jnp.zeros((2, 6))
    np.testing.assert_allclose(float(losses.head_pose_loss(pred, labels)), (10.0 + 4.0 + 1.0) / 2, rtol=1e-6)
    masked = losses.head_pose_loss(pred, labels, valid=jnp.array([0.0, 1.0]))
    assert float(masked) == 0.0


def test_perceptual_loss_zero_for_identical_and_positive_otherwise():
    features = lambda x: {"a": x * 2.0, "b": jnp.mean(x, axis=-1, keepdims=True)}
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    weights = {"a": 1.0, "b": 0.5}
    assert float(losses.perceptual_loss(features, x, x, weights, num_scales=3)) == 0.0
    y = x + 0.1
    # every level shifts by exactly 0.1 (resizing preserves constants): a -> 0.2, b -> 0.1 * 0.5, three levels
    np.testing.assert_allclose(float(losses.perceptual_loss(features, y, x, weights, 3)), 3 * (0.2 + 0.05), rtol=1e-4)


def test_equivariance_loss_zero_for_consistent_keypoints():
    tps = ops.sample_tps_params(jax.random.key(1), 2, sigma_affine=0.05, sigma_tps=0.005, points_tps=5)
    kp_warped = jax.random.uniform(jax.random.key(2), (2, 6, 3), minval=-0.5, maxval=0.5)
    kp = jnp.concatenate([ops.tps_transform_points(tps, kp_warped[..., :2]), kp_warped[..., 2:]], axis=-1)
    assert float(losses.equivariance_loss(kp, kp_warped, tps)) < 1e-6
    assert float(losses.equivariance_loss(kp_warped, kp_warped, tps)) > 1e-3


def test_identity_loss():
    embed = lambda x: jnp.mean(x, axis=(1, 2))
    a = jax.random.uniform(jax.random.key(3), (2, 8, 8, 3))
    assert abs(float(losses.identity_loss(embed, a, a * 2.0))) < 1e-6  # same direction, cosine 1
    assert float(losses.identity_loss(embed, a, 1.0 - a)) > 0.0
    grads = jax.grad(lambda b: losses.identity_loss(embed, a, b))(1.0 - a)
    assert float(jnp.abs(grads).sum()) > 0


def test_feature_matching_sums_layers_and_scales_and_psnr():
    real = [[jnp.ones((1, 4, 4, 2)), jnp.full((1, 2, 2, 2), 0.5)], [jnp.ones((1, 2, 2, 2))]]
    fake = [[jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 2, 2, 2))], [jnp.zeros((1, 2, 2, 2))]]
    np.testing.assert_allclose(float(losses.feature_matching_loss(real, fake)), 1.0 + 0.5 + 1.0)
    target = jnp.zeros((1, 4, 4, 3))
    np.testing.assert_allclose(float(losses.psnr(target + 0.1, target)[0]), 20.0, rtol=1e-5)


def test_psnr_inside_a_mask_sees_only_the_masked_pixels():
    target = jnp.zeros((2, 4, 4, 3))
    prediction = target.at[:, :2].set(0.1).at[:, 2:].set(0.5)  # error 0.1 in the top half, 0.5 in the bottom
    mask = jnp.zeros((2, 4, 4)).at[:, :2].set(1.0)
    np.testing.assert_allclose(np.asarray(losses.psnr(prediction, target, mask=mask)), [20.0, 20.0], rtol=1e-5)
    whole = 10 * np.log10(1 / (0.5 * 0.01 + 0.5 * 0.25))
    np.testing.assert_allclose(np.asarray(losses.psnr(prediction, target)), [whole, whole], rtol=1e-5)


def test_region_l1_averages_each_region_over_its_own_pixels():
    target = jnp.zeros((2, 8, 8, 3))
    prediction = jnp.full((2, 8, 8, 3), 0.1).at[0, 0, 0].set(0.9)  # error 0.9 on one pixel, 0.1 elsewhere
    regions = np.zeros((2, 8, 8, 2), np.uint8)
    regions[0, 0, 0, 0] = 1  # a one-pixel mouth in the first example (where the big error is)
    regions[:, 4:, :, 1] = 1  # eyes: half of both images
    loss = float(losses.region_l1(prediction, target, jnp.asarray(regions)))
    np.testing.assert_allclose(loss, 0.9 + 0.1, rtol=1e-5)
    # A region that is empty in the whole batch contributes nothing (no division by zero).
    regions[..., 0] = 0
    np.testing.assert_allclose(float(losses.region_l1(prediction, target, jnp.asarray(regions))), 0.1, rtol=1e-5)


def test_blend_choice_pushes_each_pixel_towards_the_closer_image():
    """The target of each pixel is the image closer to the frame there (the source on ties); the loss is the mean
    sigmoid cross-entropy towards it, and its gradient raises the source's logit only where the source is closer."""
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, (2, 6, 6, 3)).astype(np.float32)
    source = target + rng.normal(0, 0.1, target.shape).astype(np.float32)
    generated = target + rng.normal(0, 0.1, target.shape).astype(np.float32)
    generated[0, 0, 0] = source[0, 0, 0]  # a tie: the source is chosen
    logits = rng.normal(0, 1, (2, 6, 6, 1)).astype(np.float32)
    closer = (np.abs(source - target).mean(-1, keepdims=True)
              <= np.abs(generated - target).mean(-1, keepdims=True)).astype(np.float32)
    assert closer[0, 0, 0, 0] == 1.0 and 0 < closer.mean() < 1
    probability = 1.0 / (1.0 + np.exp(-logits))
    expected = -np.mean(closer * np.log(probability) + (1 - closer) * np.log(1 - probability))
    loss_fn = lambda z: losses.blend_choice_loss(z, jnp.asarray(source), jnp.asarray(generated), jnp.asarray(target))
    np.testing.assert_allclose(float(loss_fn(jnp.asarray(logits))), expected, rtol=1e-5)
    gradient = np.asarray(jax.grad(loss_fn)(jnp.asarray(logits)))
    np.testing.assert_array_equal(gradient < 0, closer == 1.0)  # descent raises the source's weight where it is closer


def test_expression_label_loss_scales_labels():
    readout = jnp.array([[0.5, 1.0, 0.5, -0.25]])
    labels = jnp.array([[0.5, 1.0, 10.0, -5.0]])  # gaze in degrees, scaled by 0.05
    scales = (1.0, 1.0, 0.05, 0.05)
    assert float(losses.expression_label_loss(readout, labels, scales)) < 1e-7
    np.testing.assert_allclose(float(losses.expression_label_loss(readout + 0.2, labels, scales)), 0.04, rtol=1e-5)


def test_head_pose_bin_loss_is_cross_entropy_of_the_label_bin():
    labels = jnp.array([[0.0, -99.0, 96.2, 0, 0, 0]])  # nearest bin values: 0 -> 33, -99 -> 0, 96 -> 65
    logits = jnp.zeros((1, 3, 66)).at[0, 0, 33].set(5.0)
    expected_first = -jax.nn.log_softmax(logits[0, 0])[33]
    expected = (expected_first + 2 * np.log(66.0)) / 3
    np.testing.assert_allclose(float(losses.head_pose_bin_loss(logits, labels)), float(expected), rtol=1e-5)
    # a saturated softmax on a wrong bin still has a gradient towards the right one
    wrong = jnp.zeros((1, 3, 66)).at[:, :, 10].set(50.0)
    grads = jax.grad(lambda lg: losses.head_pose_bin_loss(lg, labels))(wrong)
    assert float(grads[0, 0, 33]) < -0.1


def test_layout_loss_rewards_overlap_with_the_small_maps():
    layout = np.zeros((2, 16, 16, 3), np.uint8)
    layout[0, 6:8, 6:10, 0] = 1  # an open mouth: 8 pixels of 512 in its map
    layout[:, 3:5, 3:6, 1] = 1
    target = jnp.asarray(layout)
    exact = jnp.where(target > 0, 12.0, -12.0)
    empty = jnp.full(target.shape, -12.0)
    assert float(losses.layout_loss(exact, target)) < 2e-3  # the empty third map: Dice's +1 smoothing
    # Predicting nothing is nearly free for cross-entropy on small maps; Dice makes it cost about one per map.
    assert float(losses.layout_loss(empty, target)) > 0.6
    shifted = jnp.roll(exact, 2, axis=2)
    assert float(losses.layout_loss(exact, target)) < float(losses.layout_loss(shifted, target))
    grads = jax.grad(lambda lg: losses.layout_loss(lg, target))(empty)
    assert float(grads[0, 6, 6, 0]) < 0  # pushes the missed mouth pixel up


def test_iris_warp_loss_is_lowest_for_the_warp_that_carries_the_iris_onto_the_driving_one():
    """A disc of radius 2 px (an iris at 64x64) at column 30 in the source and 32 in the driving frame: over
    horizontal translations of the sampling grid the loss is lowest at the one that carries the source's disc onto
    the driving frame's (sampling 2 px to the left), 0 where the maps coincide, and it still falls towards that
    translation from 4 px away (the blur's reach). Items without an iris in either frame are left out."""
    size = 64
    rows, cols = np.mgrid[:size, :size]
    disc = lambda column: ((rows - 30) ** 2 + (cols - column) ** 2 <= 4).astype(np.float32)
    source, driving, empty = disc(30), disc(32), np.zeros((size, size), np.float32)
    identity = ops.make_coordinate_grid_2d(size, size, jnp.float32)
    pixel = 2.0 / (size - 1)  # one pixel in align_corners=True coordinates

    def loss(shift_pixels, sources, drivings):
        grid = identity.at[..., 0].add(-shift_pixels * pixel)[None].repeat(len(sources), axis=0)
        return float(losses.iris_warp_loss(grid, jnp.asarray(np.stack(sources)), jnp.asarray(np.stack(drivings))))

    values = {shift: loss(shift, [source], [driving]) for shift in range(-3, 7)}
    assert min(values, key=values.get) == 2, values
    assert values[2] < 1e-6 and values[0] > 0.1
    assert values[-2] > values[-1] > values[0] > values[1] > values[2] < values[3] < values[4] < values[5], values
    # The items with an empty map in either frame do not count.
    assert loss(0.0, [source, empty, source], [driving, driving, empty]) == pytest.approx(values[0], rel=1e-6)
    assert loss(0.0, [empty], [driving]) == 0.0
