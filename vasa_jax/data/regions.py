"""Face regions and face layout of a training frame, from the synthetic renderer's labels or from MediaPipe Face
Mesh landmarks of real frames.

Regions [..., H, W, 2] uint8 (channel 0 the mouth, 1 the eyes): where expression shows. Stage 1 weights its
reconstruction inside them (an open mouth or a closed lid covers a few percent of the image, so an image-wide loss
barely sees it) and its evaluation measures PSNR there. From landmarks they are the convex hull of the lip points
and of each eye's contour points. Both kinds are grown by `DILATE_PIXELS` at 64x64 (in proportion at other sizes),
so that a region also holds the pixels just around the lips and lids, where an opening mouth or a closing lid
changes the picture.

Layout [..., H, W, 3] uint8 (LAYOUT_NAMES: the mouth's interior, the eyes' opening between the lids, the irises),
not dilated: what the expression makes visible. Stage 1's generator predicts the driving frame's layout and
renders from it (a SPADE-like intermediate), so z_dyn has a dense target for where an open mouth or an open eye
is. From landmarks: the inner-lip ring, each eye's contour ring, and a disc per iris clipped to its eye's opening.
"""

import numpy as np

REGION_NAMES = ("mouth", "eyes")
LAYOUT_NAMES = ("mouth_interior", "eye_opening", "iris")
DILATE_PIXELS = 1  # at 64 x 64; scaled with the resolution

# MediaPipe Face Mesh vertices of FACEMESH_LIPS (outer and inner lip contours) and of each eye's contour
# (FACEMESH_RIGHT_EYE / FACEMESH_LEFT_EYE; "right" is the subject's right). tests/test_regions.py checks them
# against the installed MediaPipe's connection sets.
LIP_POINTS = (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269,
              270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415)
RIGHT_EYE_POINTS = (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246)
LEFT_EYE_POINTS = (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466)
# The same contours as rings, in order around them (inner lips: the upper inner lip, then the lower one back).
INNER_LIP_RING = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
RIGHT_EYE_RING = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE_RING = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
# Iris centre and its four rim points (refine_landmarks=True): right 468 + 469..472, left 473 + 474..477.
RIGHT_IRIS, LEFT_IRIS = (468, (469, 470, 471, 472)), (473, (474, 475, 476, 477))


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation of masks [..., H, W] by a (2 * pixels + 1)-square."""
    out = mask.astype(bool)
    for _ in range(int(pixels)):
        grown = out.copy()
        grown[..., 1:, :] |= out[..., :-1, :]
        grown[..., :-1, :] |= out[..., 1:, :]
        out = grown.copy()
        grown[..., :, 1:] |= out[..., :, :-1]
        grown[..., :, :-1] |= out[..., :, 1:]
        out = grown
    return out


def dilation_pixels(resolution: int) -> int:
    return max(1, int(round(DILATE_PIXELS * resolution / 64)))


def from_labels(labels: np.ndarray, mouth_labels, eye_labels) -> np.ndarray:
    """Region masks [..., H, W, 2] uint8 from per-pixel class labels [..., H, W] (the renderer's): the mouth is
    any of `mouth_labels`, the eyes any of `eye_labels`, each dilated."""
    pixels = dilation_pixels(labels.shape[-1])
    masks = [dilate(np.isin(labels, list(classes)), pixels) for classes in (mouth_labels, eye_labels)]
    return np.stack(masks, -1).astype(np.uint8)


def layout_from_labels(labels: np.ndarray, interior_labels, opening_labels, iris_labels) -> np.ndarray:
    """Layout [..., H, W, 3] uint8 from per-pixel class labels [..., H, W]: each map is any of its labels."""
    maps = [np.isin(labels, list(classes)) for classes in (interior_labels, opening_labels, iris_labels)]
    return np.stack(maps, -1).astype(np.uint8)


def _fixed_point(landmarks, points, scale):
    """Landmark (x, y) of `points` as cv2's 1/16-pixel fixed point, edge -> pixel-centre coordinates."""
    xy = (np.asarray(landmarks, np.float64)[list(points), :2] * scale - 0.5) * 16
    return np.round(xy).astype(np.int32)


def layout_from_landmarks(landmarks: np.ndarray, size: int, landmark_size: int) -> np.ndarray:
    """Layout [size, size, 3] uint8 of one frame from its Face Mesh landmarks [478, 3] in the pixels of a
    `landmark_size` crop (edge coordinates)."""
    import cv2

    scale = size / landmark_size
    maps = np.zeros((3, size, size), np.uint8)
    cv2.fillPoly(maps[0], [_fixed_point(landmarks, INNER_LIP_RING, scale)], 1, lineType=cv2.LINE_8, shift=4)
    for ring, (centre, rim) in ((RIGHT_EYE_RING, RIGHT_IRIS), (LEFT_EYE_RING, LEFT_IRIS)):
        opening = np.zeros((size, size), np.uint8)
        cv2.fillPoly(opening, [_fixed_point(landmarks, ring, scale)], 1, lineType=cv2.LINE_8, shift=4)
        maps[1] |= opening
        points = np.asarray(landmarks, np.float64)[:, :2] * scale
        radius = np.linalg.norm(points[list(rim)] - points[centre], axis=-1).mean()
        disc = np.zeros((size, size), np.uint8)
        centre_fixed = tuple(int(v) for v in np.round((points[centre] - 0.5) * 16))
        cv2.circle(disc, centre_fixed, int(round(radius * 16)), 1, thickness=-1, lineType=cv2.LINE_8, shift=4)
        maps[2] |= disc & opening  # the lids hide the rest of the iris
    return np.moveaxis(maps, 0, -1)


def from_landmarks(landmarks: np.ndarray, size: int, landmark_size: int) -> np.ndarray:
    """Region masks [size, size, 2] uint8 of one frame from its Face Mesh landmarks [478, 3] in the pixels of a
    `landmark_size` crop (edge coordinates, as the preparation stores them)."""
    import cv2

    scale = size / landmark_size
    masks = np.zeros((2, size, size), np.uint8)
    groups = ((0, LIP_POINTS), (1, RIGHT_EYE_POINTS), (1, LEFT_EYE_POINTS))
    for channel, points in groups:
        # Edge coordinates -> pixel-centre coordinates, in 1/16 pixel fixed point for sub-pixel polygon edges.
        xy = (np.asarray(landmarks, np.float64)[list(points), :2] * scale - 0.5) * 16
        hull = cv2.convexHull(np.round(xy).astype(np.int32))
        cv2.fillConvexPoly(masks[channel], hull, 1, lineType=cv2.LINE_8, shift=4)
    return np.moveaxis(dilate(masks, dilation_pixels(size)), 0, -1).astype(np.uint8)
