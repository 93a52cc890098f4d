"""Stage-1 losses as pure functions of arrays (the trainer wires them to the networks; weights live in the config).

Image tensors are [B, H, W, 3] floats in [0, 1]; keypoints are [B, K, 3] ordered (x, y, z) in [-1, 1].
"""

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from vasa_jax import ops


def l1(a, b):
    return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def image_pyramid(image, num_scales: int):
    """[image, image/2, image/4, ...] (area-style antialiased downsampling), `num_scales` entries."""
    levels = [image]
    for _ in range(1, num_scales):
        b, h, w, c = levels[-1].shape
        levels.append(jax.image.resize(levels[-1], (b, h // 2, w // 2, c), "linear", antialias=True))
    return levels


def pyramid_l1(prediction, target, num_scales: int):
    """Sum over `num_scales` pyramid levels of the mean absolute error. The coarse levels give the warp a gradient
    for displacements of several pixels, where the full-resolution error of a flat region has none."""
    return sum(l1(p, t) for p, t in zip(image_pyramid(prediction, num_scales), image_pyramid(target, num_scales)))


def region_l1(prediction, target, regions):
    """Mean absolute error inside each region, summed over regions: `regions` [B, H, W, R] are 0/1 masks (the
    mouth and the eyes, `vasa_jax.data.regions`). Each region's error is averaged over the pixels it covers in the
    whole batch, so a small open mouth weighs as much as a large one per pixel."""
    error = jnp.abs(prediction.astype(jnp.float32) - target.astype(jnp.float32)).mean(axis=-1)  # [B, H, W]
    masks = regions.astype(jnp.float32)
    covered = jnp.sum(masks, axis=(0, 1, 2))  # [R]
    return jnp.sum(jnp.einsum("bhw,bhwr->r", error, masks) / jnp.maximum(covered, 1.0))


def blend_choice_loss(blend_logits, source, generated, target):
    """Per-pixel cross-entropy of the blend's logits [B, H, W, 1] (the weight of the warped `source` against the
    `generated` image) towards whichever of the two is closer to `target` at that pixel (mean absolute error over
    colour; the source on ties). The images are constants here. The reconstruction terms give the blend only the
    gradient of a mixture, which a blurred generated image wins in the eyes on open and closed frames alike
    (measured: the warped source is the closer one on open-eye frames, yet the blend gave it a weight of 0.3 there);
    this term says per pixel which image is right."""
    source_error = jnp.abs(source - target).astype(jnp.float32).mean(axis=-1, keepdims=True)
    generated_error = jnp.abs(generated - target).astype(jnp.float32).mean(axis=-1, keepdims=True)
    choice = jax.lax.stop_gradient((source_error <= generated_error).astype(jnp.float32))
    return jnp.mean(optax.sigmoid_binary_cross_entropy(blend_logits.astype(jnp.float32), choice))


def layout_loss(logits, layout):
    """The predicted face layout (logits [B, H, W, M]) against the frame's layout maps (0/1, [B, H, W, M]): per-pixel
    sigmoid cross-entropy plus a soft Dice term per map over the batch. The maps are small (an open mouth is about 1%
    of the image), and cross-entropy alone first learns to predict nothing; Dice measures the overlap whatever the
    size. A map empty in the whole batch adds nothing to the Dice term when the prediction is empty too."""
    logits = logits.astype(jnp.float32)
    target = layout.astype(jnp.float32)
    cross_entropy = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
    prob = jax.nn.sigmoid(logits)
    overlap = jnp.sum(prob * target, axis=(0, 1, 2))
    dice = 1.0 - (2.0 * overlap + 1.0) / (jnp.sum(prob, axis=(0, 1, 2)) + jnp.sum(target, axis=(0, 1, 2)) + 1.0)
    return cross_entropy + jnp.mean(dice)


def gaussian_blur(maps, sigma: float):
    """Maps [B, H, W] blurred by a Gaussian of `sigma` pixels (separable; each output pixel a normalised weighted mean
    of its row and column, so the borders are not darkened)."""
    def kernel(n):
        offsets = jnp.arange(n, dtype=jnp.float32)
        weights = jnp.exp(-0.5 * ((offsets[:, None] - offsets[None]) / sigma) ** 2)
        return weights / jnp.sum(weights, axis=1, keepdims=True)

    return jnp.einsum("ij,bjk,lk->bil", kernel(maps.shape[1]), maps.astype(jnp.float32), kernel(maps.shape[2]))


def iris_warp_loss(grid, source_iris, driving_iris):
    """Where the render's warp carries the source's irises: 1 - soft Dice between the source frame's iris map
    (`source_iris` [B, H, W], 0/1) warped by `grid` (the render's sampling grid of the source image [B, H, W, 2],
    align_corners=True) and the driving frame's (`driving_iris`), both blurred by a Gaussian of 1/32 of the width
    (2 px at 64x64) so that an iris a few pixels off still has a gradient towards its place; per item, averaged
    over the items whose source and driving frames both show an iris (a warp cannot open a shut eye, nor should it
    squeeze an iris out to draw one). At 64x64 a 30-degree gaze moves an iris of 4-5 px by about one: a shift this
    term sees, and the image-wide terms barely."""
    sigma = source_iris.shape[2] / 32.0
    source, driving = gaussian_blur(source_iris, sigma), gaussian_blur(driving_iris, sigma)
    warped = ops.grid_sample_2d(source[..., None], grid.astype(jnp.float32), align_corners=True)[..., 0]
    overlap = jnp.sum(warped * driving, axis=(1, 2))
    dice = 1.0 - 2.0 * overlap / jnp.maximum(jnp.sum(warped**2, axis=(1, 2)) + jnp.sum(driving**2, axis=(1, 2)), 1e-6)
    shown = lambda x: jnp.sum(x.astype(jnp.float32), axis=(1, 2)) > 0
    valid = (shown(source_iris) & shown(driving_iris)).astype(jnp.float32)
    return jnp.sum(valid * dice) / jnp.maximum(jnp.sum(valid), 1.0)


def perceptual_loss(
    features_fn: Callable[[jax.Array], Mapping[str, jax.Array]],
    prediction,
    target,
    layer_weights: Mapping[str, float],
    num_scales: int,
):
    """Multi-scale perceptual loss: sum over pyramid levels and feature layers of weight * mean |f(pred) - f(target)|.

    `features_fn` maps images to a dict of feature maps (e.g. VGG19 relu1_1 ... relu5_1); the target's features
    carry no gradient. Prediction and target are run through the network in one batch, joined example by example
    (`ops.join_frames`: a batch-sharded step keeps them on their devices).
    """
    total = 0.0
    for pred_level, target_level in zip(image_pyramid(prediction, num_scales), image_pyramid(target, num_scales)):
        features = features_fn(ops.join_frames([pred_level, jax.lax.stop_gradient(target_level)]))
        for name, weight in layer_weights.items():
            pred_f, target_f = ops.split_frames(features[name], 2)
            total = total + weight * l1(pred_f, jax.lax.stop_gradient(target_f))
    return total


def hinge_discriminator_loss(real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array],
                             patch_weights: Sequence[jax.Array] | None = None):
    """Hinge loss for the discriminator, averaged over patches and summed over scales. With `patch_weights` (one
    map per scale, broadcastable to its logits: `region_patch_weights`) each patch counts by its weight."""
    weights = [None] * len(real_logits) if patch_weights is None else patch_weights
    total = 0.0
    for real, fake, weight in zip(real_logits, fake_logits, weights):
        total = total + _patch_mean(jax.nn.relu(1.0 - real), weight) + _patch_mean(jax.nn.relu(1.0 + fake), weight)
    return total


def hinge_generator_loss(fake_logits: Sequence[jax.Array], patch_weights: Sequence[jax.Array] | None = None):
    """The generator's side of the hinge GAN: -mean D(fake), summed over scales (patches weighted as in
    `hinge_discriminator_loss`)."""
    weights = [None] * len(fake_logits) if patch_weights is None else patch_weights
    return sum(-_patch_mean(fake, weight) for fake, weight in zip(fake_logits, weights))


def _patch_mean(values, weights):
    if weights is None:
        return jnp.mean(values)
    weights = jnp.broadcast_to(weights, values.shape)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-6)


def region_patch_weights(regions, logits_shape):
    """The share of each patch logit's cell (the H/h x W/w pixels it stands for) covered by any of the `regions`
    [B, H, W, R] (0/1 masks of the mouth and the eyes): [B, h, w, 1] for logits of shape [B, h, w, 1]. The patch
    discriminator's logits then judge, and train, only where expression shows."""
    b, height, width, _ = regions.shape
    h, w = logits_shape[1], logits_shape[2]
    if height % h or width % w:
        raise ValueError(f"the discriminator's {h}x{w} logits do not tile the {height}x{width} region masks; "
                         "the region adversarial term needs an image size divisible by the logits' size")
    union = jnp.max(regions.astype(jnp.float32), axis=-1)
    return union.reshape(b, h, height // h, w, width // w).mean(axis=(2, 4))[..., None]


def feature_matching_loss(real_features: Sequence[Sequence[jax.Array]], fake_features: Sequence[Sequence[jax.Array]]):
    """L1 between the discriminator's intermediate features of real and generated images (real side frozen),
    summed over layers and scales (face-vid2vid and first-order-motion-model sum them)."""
    total = 0.0
    for real_scale, fake_scale in zip(real_features, fake_features):
        for real, fake in zip(real_scale, fake_scale):
            total = total + l1(fake, jax.lax.stop_gradient(real))
    return total


def equivariance_loss(keypoints, keypoints_of_warped, tps_params):
    """Keypoint equivariance under a random affine + TPS warp T.

    `keypoints_of_warped` are detected on the warped image out(p) = image(T(p)); mapping them through T must give
    the keypoints detected on the original image. Only the image-plane (x, y) coordinates are constrained.
    """
    mapped = ops.tps_transform_points(tps_params, keypoints_of_warped[..., :2])
    return l1(keypoints[..., :2], mapped)


def keypoint_prior_loss(keypoints, min_distance: float = 0.1, mean_depth: float = 0.33):
    """face-vid2vid's keypoint prior: pairs of keypoints closer than sqrt(D_t) are pushed apart
    (sum_{i != j} max(0, D_t - |x_i - x_j|^2)), and the mean depth is pulled towards z_t."""
    diff = keypoints[:, :, None, :] - keypoints[:, None, :, :]
    sq_dist = jnp.sum(diff**2, axis=-1)
    k = keypoints.shape[1]
    off_diagonal = 1.0 - jnp.eye(k, dtype=sq_dist.dtype)
    spread = jnp.sum(jax.nn.relu(min_distance - sq_dist) * off_diagonal, axis=(1, 2))
    depth = jnp.abs(jnp.mean(keypoints[..., 2], axis=1) - mean_depth)
    return jnp.mean(spread + depth)


def head_pose_loss(z_pose, pose_labels, valid=None):
    """face-vid2vid's head-pose loss: L1 between predicted and pseudo-label yaw, pitch and roll in DEGREES, summed
    over the three angles and averaged over examples.

    `valid` ([B], optional) masks out examples without a label.
    """
    error = jnp.abs(z_pose[:, :3] - pose_labels[:, :3]).sum(axis=-1)
    if valid is None:
        return jnp.mean(error)
    valid = valid.astype(error.dtype)
    return jnp.sum(error * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def head_pose_bin_loss(bin_logits, pose_labels, valid=None):
    """Hopenet's classification part of the head-pose loss: cross-entropy of the yaw/pitch/roll bin logits
    [B, 3, 66] against the labels' 3-degree bins. The expectation-only L1 loss stalls once the softmax
    saturates on a wrong bin; cross-entropy keeps a gradient there."""
    targets = ops.degrees_to_headpose_bin(pose_labels[:, :3])
    log_probs = jax.nn.log_softmax(bin_logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0].mean(axis=-1)
    if valid is None:
        return jnp.mean(nll)
    valid = valid.astype(nll.dtype)
    return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def expression_label_loss(readout, labels, scales):
    """Weak supervision of the expression latents: squared error between the linear readout of z_dyn [B, L] and
    the frames' labels [B, L] (mouth opening, eye openness, gaze; `models.stage1.EXPRESSION_LABELS`) times `scales`
    [L] (which bring degrees and ratios to comparable units), averaged over labels and examples. Squared, not
    absolute: an L1 readout settles on the median, which for eye openness (closed in a few percent of frames) is
    'open' whatever the image shows."""
    target = labels.astype(jnp.float32) * jnp.asarray(scales, jnp.float32)
    return jnp.mean(jnp.square(readout.astype(jnp.float32) - target))


def deformation_prior_loss(z_dyn):
    """face-vid2vid's deformation prior: the L1 norm of each frame's expression deformations [B, K, 3] (summed over
    keypoints and coordinates), averaged over frames; deformations should stay small so that pose explains rigid
    motion."""
    return jnp.mean(jnp.sum(jnp.abs(z_dyn.astype(jnp.float32)), axis=(1, 2)))


def pairwise_transfer_loss(pose_transferred, dynamics_transferred):
    """VASA's pairwise pose/dynamics transfer loss between D(V_i, id_i, pose_j, dyn_i) and
    D(V_j, id_j, pose_j, dyn_i): both show frame j's pose with frame i's dynamics of the same person (L1)."""
    return l1(pose_transferred, dynamics_transferred)


def identity_loss(embed_fn: Callable[[jax.Array], jax.Array], reference, reenacted):
    """VASA's cross-identity loss: 1 - cosine similarity of face embeddings of the source image and of the source
    re-enacted with another person's motion. The reference's embedding carries no gradient. Both go through the
    network in one batch joined example by example (`ops.join_frames`)."""
    embeddings = embed_fn(ops.join_frames([jax.lax.stop_gradient(reference), reenacted]))
    embeddings = embeddings / (jnp.linalg.norm(embeddings, axis=-1, keepdims=True) + 1e-8)
    reference_embedding, reenacted_embedding = ops.split_frames(embeddings, 2)
    cosine = jnp.sum(jax.lax.stop_gradient(reference_embedding) * reenacted_embedding, axis=-1)
    return jnp.mean(1.0 - cosine)


def psnr(prediction, target, max_value: float = 1.0, mask=None):
    """Per-example PSNR in dB, [B]; with `mask` [B, H, W] (0/1) only over the pixels it covers."""
    squared = jnp.mean((prediction.astype(jnp.float32) - target.astype(jnp.float32)) ** 2, axis=-1)  # [B, H, W]
    if mask is None:
        mse = jnp.mean(squared, axis=(1, 2))
    else:
        mask = mask.astype(jnp.float32)
        mse = jnp.sum(squared * mask, axis=(1, 2)) / jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1.0)
    return 10.0 * jnp.log10(max_value**2 / jnp.maximum(mse, 1e-10))
