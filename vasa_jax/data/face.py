"""Face analysis shared by data preparation and generation: MediaPipe Face Mesh landmarks, the per-frame labels
VASA needs (head pose, gaze, eye openness, mouth opening) and the face crop.

Landmarks are MediaPipe Face Mesh's 478 points (468 face points + 5 per iris, `refine_landmarks=True`) in PIXELS
of the analysed image: ``[..., 478, 3]`` = (x right, y down, z), where z is MediaPipe's relative depth (smaller is
closer to the camera) scaled by the image width, as x is.

Pose and gaze follow `vasa_jax.data.synthetic`'s conventions, so real and synthetic labels mean the same thing:
  * head frame: x towards the subject's left (image right for a frontal face), y up, z out of the face;
    world frame: x right, y up, z towards the viewer; ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` maps head to world.
  * yaw > 0: the nose moves right in the image; pitch > 0: the face looks up; roll > 0: counter-clockwise tilt.
  * gaze (theta, phi) in degrees relative to the head: theta > 0 looks towards head +x, phi > 0 looks up.

The MediaPipe dependency: version 0.10.14 is the last release that ships the Face Mesh models inside the wheel
(later releases need a separately downloaded .task file). It pins protobuf<5 while grain needs protobuf>=5.28, so
it is installed with ``pip install --no-deps`` (see requirements-face.txt). Under protobuf 5 its Python side hands
graph configs to the C++ side as text, which the C++ parser rejects; `_mediapipe_face_mesh` passes them as a
serialized binary graph instead, which both sides read identically.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import List

import numpy as np

NUM_LANDMARKS = 478
FACE_MESH_POINTS = 468  # the face's own points; the last 10 are the two irises

# MediaPipe Face Mesh landmark indices ("right" = the subject's right, on the image's left for a frontal face).
RIGHT_EYE_OUTER, RIGHT_EYE_INNER, RIGHT_EYE_TOP, RIGHT_EYE_BOTTOM = 33, 133, 159, 145
LEFT_EYE_OUTER, LEFT_EYE_INNER, LEFT_EYE_TOP, LEFT_EYE_BOTTOM = 263, 362, 386, 374
RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER = FACE_MESH_POINTS, FACE_MESH_POINTS + 5
MOUTH_RIGHT, MOUTH_LEFT, LIP_INNER_TOP, LIP_INNER_BOTTOM = 61, 291, 13, 14
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1
RIGHT_CHEEK, LEFT_CHEEK = 234, 454

# Symmetric pairs (subject's right point, subject's left point) that define the head's x axis.
_SYMMETRIC_PAIRS = np.array([
    (RIGHT_EYE_OUTER, LEFT_EYE_OUTER), (RIGHT_EYE_INNER, LEFT_EYE_INNER), (RIGHT_CHEEK, LEFT_CHEEK),
    (MOUTH_RIGHT, MOUTH_LEFT),
])

# Half the eye's corner-to-corner width over the eyeball radius (about 15 mm over 12 mm in adults): an iris centre
# displaced by a fraction h of the half-width is a rotation of asin(h * this) of the eyeball.
EYE_HALF_WIDTH_OVER_RADIUS = 1.25

# The crop: the forehead-to-chin height of the face is this fraction of the crop side (VoxCeleb-like framing,
# head and hair inside, as the synthetic renderer's default scale), and the crop centre sits this many face heights
# above the middle of that segment, to leave room for the hair.
FACE_HEIGHT_IN_CROP = 0.45
CROP_CENTER_RAISE = 0.1
# Where ArcFace's 112x112 five-point template (eye centres, nose tip, mouth corners) falls in such a crop: the square
# (centre x, centre y, side) in fractions of the crop side. Fitted by least squares to the five points of the nine
# shared test portraits cropped by `crop_boxes` (largest residual 3.4 px of 112); the synthetic heads' default
# framing puts their eyes and mouth within a pixel or two of the same places. The identity loss resizes this square,
# not the whole crop, to ArcFace's input.
ARCFACE_BOX_IN_CROP = (0.5, 0.4875, 0.514)


class FaceAnalysisError(RuntimeError):
    """MediaPipe is missing or failed."""


def _mediapipe_face_mesh():
    """The `mediapipe.solutions.face_mesh` module, with graph configs handed to C++ as binary (see the module
    docstring). Raises FaceAnalysisError with the install command when MediaPipe is missing."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ info and warning lines
    try:
        from mediapipe.python import solution_base
        from mediapipe.python._framework_bindings import calculator_graph
        from mediapipe.python.solutions import face_mesh
    except ImportError as error:
        raise FaceAnalysisError(
            "MediaPipe Face Mesh is not installed: pip install --no-deps -r requirements-face.txt"
        ) from error
    if not getattr(solution_base.calculator_graph, "_vasa_binary_config", False):
        solution_base.calculator_graph = _BinaryConfigGraphModule(calculator_graph)
    return face_mesh


class _BinaryConfigGraphModule:
    """Stands in for MediaPipe's `calculator_graph` module inside `solution_base`: builds the graph from a serialized
    binary config instead of the text form that protobuf 5 writes and MediaPipe's C++ protobuf 4 cannot parse."""

    _vasa_binary_config = True

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def CalculatorGraph(self, graph_config=None, **kwargs):  # noqa: N802 (mirrors MediaPipe's name)
        if graph_config is None:
            return self._module.CalculatorGraph(**kwargs)
        handle, path = tempfile.mkstemp(suffix=".binarypb")
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(graph_config.SerializeToString())
            return self._module.CalculatorGraph(binary_graph_path=path, **kwargs)
        finally:
            os.remove(path)


class FaceMesh:
    """MediaPipe Face Mesh with irises. `tracking=True` follows faces from frame to frame (video);
    False runs the detector on every image (photos). Call it on an RGB uint8 image; it returns the landmarks of
    every face found, largest face first, each ``[478, 3]`` in pixels."""

    def __init__(self, max_faces: int = 2, tracking: bool = False, min_detection_confidence: float = 0.5):
        face_mesh = _mediapipe_face_mesh()
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=not tracking, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=min_detection_confidence, min_tracking_confidence=0.5,
        )

    def __call__(self, image: np.ndarray) -> List[np.ndarray]:
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"FaceMesh needs an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        with warnings.catch_warnings():  # MediaPipe 0.10.14 calls an API protobuf 5 deprecates, on every image
            warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
            result = self._mesh.process(image)
        faces = []
        for face in result.multi_face_landmarks or []:
            points = np.array([(p.x, p.y, p.z) for p in face.landmark], np.float32)
            faces.append(points * np.array([width, height, width], np.float32))
        faces.sort(key=lambda f: -face_height(f))
        return faces

    def close(self):
        self._mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------------ labels
def face_height(landmarks: np.ndarray) -> np.ndarray:
    """Forehead-to-chin distance in the image plane, in the landmarks' units. [..., 478, 3] -> [...]."""
    return np.linalg.norm(landmarks[..., FOREHEAD, :2] - landmarks[..., CHIN, :2], axis=-1)


def _normalize(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def head_rotation(landmarks: np.ndarray) -> np.ndarray:
    """Head-to-world rotation matrices [..., 3, 3] from landmarks [..., 478, 3] (see the module's frames).
    The head's x axis is the mean direction of symmetric landmark pairs, y is chin-to-forehead made orthogonal to x,
    z = x cross y. Landmarks are weak-perspective 3D, so this is exact for an orthographic camera."""
    world = landmarks * np.array([1.0, -1.0, -1.0], np.float32)  # image (x right, y down, z away) -> world
    right, left = world[..., _SYMMETRIC_PAIRS[:, 0], :], world[..., _SYMMETRIC_PAIRS[:, 1], :]
    x_axis = _normalize(np.sum(left - right, axis=-2))
    up = world[..., FOREHEAD, :] - world[..., CHIN, :]
    y_axis = _normalize(up - np.sum(up * x_axis, axis=-1, keepdims=True) * x_axis)
    z_axis = np.cross(x_axis, y_axis)
    return np.stack([x_axis, y_axis, z_axis], axis=-1)


def rotation_to_euler(rotation: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees [..., 3] of ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (the inverse of
    `vasa_jax.data.synthetic.head_rotation`)."""
    yaw = np.arcsin(np.clip(-rotation[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(-rotation[..., 2, 1], rotation[..., 2, 2])
    roll = np.arctan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return np.degrees(np.stack([yaw, pitch, roll], axis=-1)).astype(np.float32)


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees [..., 3]."""
    return rotation_to_euler(head_rotation(landmarks))


def gaze_angles(landmarks: np.ndarray) -> np.ndarray:
    """Gaze (theta, phi) in degrees relative to the head, [..., 2], averaged over both eyes.
    Each iris centre's offset from the eye's centre, along the head's x and y axes and in units of the eye's
    half-width, is taken as the sine of the eyeball's rotation (times EYE_HALF_WIDTH_OVER_RADIUS). The eye's centre
    is the middle of its corners horizontally and the middle of its lids vertically: the iris of an eye looking
    straight ahead sits above the corner line (measured: about 8 degrees of bias on real frontal faces), between
    the lids."""
    world = landmarks * np.array([1.0, -1.0, -1.0], np.float32)
    rotation = head_rotation(landmarks)
    angles = []
    for outer, inner, top, bottom, iris in (
        (RIGHT_EYE_OUTER, RIGHT_EYE_INNER, RIGHT_EYE_TOP, RIGHT_EYE_BOTTOM, RIGHT_IRIS_CENTER),
        (LEFT_EYE_OUTER, LEFT_EYE_INNER, LEFT_EYE_TOP, LEFT_EYE_BOTTOM, LEFT_IRIS_CENTER),
    ):
        corners_middle = 0.5 * (world[..., outer, :] + world[..., inner, :])
        lids_middle = 0.5 * (world[..., top, :] + world[..., bottom, :])
        half_width = np.maximum(0.5 * np.linalg.norm(world[..., outer, :] - world[..., inner, :], axis=-1), 1e-9)
        h = np.sum((world[..., iris, :] - corners_middle) * rotation[..., :, 0], axis=-1) / half_width
        v = np.sum((world[..., iris, :] - lids_middle) * rotation[..., :, 1], axis=-1) / half_width
        angles.append(np.degrees(np.arcsin(np.clip(np.stack([h, v], -1) * EYE_HALF_WIDTH_OVER_RADIUS, -1, 1))))
    return (0.5 * (angles[0] + angles[1])).astype(np.float32)


def eye_openness(landmarks: np.ndarray) -> np.ndarray:
    """Lid gap over corner-to-corner width, averaged over both eyes [...] (about 0.3 open, under 0.1 closed)."""
    ratios = []
    for outer, inner, top, bottom in ((RIGHT_EYE_OUTER, RIGHT_EYE_INNER, RIGHT_EYE_TOP, RIGHT_EYE_BOTTOM),
                                      (LEFT_EYE_OUTER, LEFT_EYE_INNER, LEFT_EYE_TOP, LEFT_EYE_BOTTOM)):
        gap = np.linalg.norm(landmarks[..., top, :] - landmarks[..., bottom, :], axis=-1)
        width = np.linalg.norm(landmarks[..., outer, :] - landmarks[..., inner, :], axis=-1)
        ratios.append(gap / np.maximum(width, 1e-9))
    return (0.5 * (ratios[0] + ratios[1])).astype(np.float32)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over mouth-corner width [...] (0 closed, about 0.5 wide open)."""
    gap = np.linalg.norm(landmarks[..., LIP_INNER_TOP, :] - landmarks[..., LIP_INNER_BOTTOM, :], axis=-1)
    width = np.linalg.norm(landmarks[..., MOUTH_RIGHT, :] - landmarks[..., MOUTH_LEFT, :], axis=-1)
    return (gap / np.maximum(width, 1e-9)).astype(np.float32)


# -------------------------------------------------------------------------------------------------- crop
def crop_boxes(landmarks: np.ndarray) -> np.ndarray:
    """Per-frame square crops [..., 4] = (center x, center y, side, angle in radians) in the landmarks' pixels.
    The side makes the face FACE_HEIGHT_IN_CROP of the crop; the angle is the eye line's (0 = level eyes)."""
    forehead, chin = landmarks[..., FOREHEAD, :2], landmarks[..., CHIN, :2]
    height = np.linalg.norm(forehead - chin, axis=-1)
    up = (forehead - chin) / np.maximum(height[..., None], 1e-9)
    center = 0.5 * (forehead + chin) + CROP_CENTER_RAISE * height[..., None] * up
    eyes = landmarks[..., LEFT_EYE_OUTER, :2] - landmarks[..., RIGHT_EYE_OUTER, :2]
    angle = np.arctan2(eyes[..., 1], eyes[..., 0])
    return np.concatenate([center, (height / FACE_HEIGHT_IN_CROP)[..., None], angle[..., None]], -1)


# LivePortrait's framing (its crop configuration: the square around the face's landmarks scaled by 2.3, moved up by
# 0.125 of its side along the face's axis, rotated so that the eye-to-mouth axis is vertical), from the MediaPipe
# points that match the extent of the 106-point layout it was defined on: the face below the top of the eyebrows.
LIVEPORTRAIT_CROP_SCALE = 2.3
LIVEPORTRAIT_CROP_RAISE = 0.125
EYEBROW_POINTS = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107, 276, 283, 282, 295, 285, 300, 293, 334, 296, 336)


def liveportrait_crop_boxes(landmarks: np.ndarray) -> np.ndarray:
    """LivePortrait's square crops [..., 4] = (center x, center y, side, angle in radians), as `crop_boxes`."""
    points = landmarks[..., :FACE_MESH_POINTS, :2]
    eyes = points[..., [RIGHT_EYE_OUTER, RIGHT_EYE_INNER, LEFT_EYE_OUTER, LEFT_EYE_INNER], :].mean(axis=-2)
    lips = points[..., [LIP_INNER_TOP, LIP_INNER_BOTTOM], :].mean(axis=-2)
    down = _normalize(lips - eyes)  # the face's y axis (image y points down)
    across = np.stack([down[..., 1], -down[..., 0]], -1)  # its x axis
    mean = points.mean(axis=-2, keepdims=True)
    along_x = np.einsum("...pi,...i->...p", points - mean, across)
    along_y = np.einsum("...pi,...i->...p", points - mean, down)
    brow_top = along_y[..., list(EYEBROW_POINTS)].min(axis=-1, keepdims=True)
    below = along_y >= brow_top  # (the forehead above the eyebrows is not in the 106-point layout)
    x_min, x_max = (np.where(below, along_x, np.inf).min(-1), np.where(below, along_x, -np.inf).max(-1))
    y_min, y_max = (np.where(below, along_y, np.inf).min(-1), np.where(below, along_y, -np.inf).max(-1))
    side = np.maximum(x_max - x_min, y_max - y_min) * LIVEPORTRAIT_CROP_SCALE
    center = (mean[..., 0, :] + across * (0.5 * (x_min + x_max))[..., None] + down * (0.5 * (y_min + y_max))[..., None]
              - down * (LIVEPORTRAIT_CROP_RAISE * side)[..., None])
    angle = np.arctan2(across[..., 1], across[..., 0])
    return np.concatenate([center, side[..., None], angle[..., None]], -1)


# SyncNet's reference evaluation crops the face detector's box (half its longer side: s) to a square of side 2.8 s
# whose centre sits 0.4 s below the box's, unrotated, with the detections median-filtered over 13 frames. Here the
# box is the bounding box of the face mesh (forehead to chin, as a face detector's box spans it).
SYNCNET_CROP_SIDE, SYNCNET_CROP_LOWER, SYNCNET_SMOOTHING = 2.8, 0.4, 13


def syncnet_crop_boxes(landmarks: np.ndarray) -> np.ndarray:
    """SyncNet's square crops [T, 4] = (center x, center y, side, angle 0) for one face's landmarks [T, 478, 3]
    over a video (the boxes are smoothed over time, so this takes the whole track)."""
    from scipy.signal import medfilt

    points = landmarks[..., :FACE_MESH_POINTS, :2]
    (x_min, y_min), (x_max, y_max) = points.min(axis=-2).T, points.max(axis=-2).T
    half = np.maximum(x_max - x_min, y_max - y_min) / 2
    cx, cy = (x_min + x_max) / 2, (y_min + y_max) / 2
    kernel = min(SYNCNET_SMOOTHING, len(half) // 2 * 2 - 1) if len(half) > 2 else 1
    if kernel > 1:
        half, cx, cy = (medfilt(v, kernel) for v in (half, cx, cy))
    return np.stack([cx, cy + SYNCNET_CROP_LOWER * half, SYNCNET_CROP_SIDE * half, np.zeros_like(half)], -1)


def crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 affine map from source to crop coordinates for one box (cx, cy, side, angle) and a `size` x `size`
    crop, in EDGE coordinates: pixel i spans [i, i + 1] (its centre is at i + 0.5), as MediaPipe's normalised
    coordinates times the image size are. The crop is rotated by the angle, so a head tilted by it appears level."""
    cx, cy, side, angle = (float(v) for v in box)
    scale = size / side
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    # Rotate by -angle and scale about the box centre, then move the centre to the crop's centre.
    matrix = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]])
    matrix[:, 2] = np.array([size / 2, size / 2]) - matrix[:, :2] @ np.array([cx, cy])
    return matrix


def index_matrix(matrix: np.ndarray) -> np.ndarray:
    """An edge-coordinate affine map (see `crop_matrix`) as OpenCV's warpAffine wants it: pixel-index coordinates,
    where pixel i's centre is at i."""
    out = np.array(matrix, np.float64)
    out[:, 2] += out[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return out


def apply_crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The square crop of `image` ([H, W, 3], uint8 or float32) for `box`, resampled to size x size. When shrinking
    by 2x or more the source is first reduced by an integer factor with an area filter (warpAffine interpolates
    from 4 pixels and would alias). A box of the whole image at its own size returns the image unchanged."""
    import cv2

    box = np.asarray(box, np.float64).copy()
    factor = int(box[2] // (2 * size))
    if factor >= 2:
        height, width = image.shape[0] // factor, image.shape[1] // factor
        image = cv2.resize(image[: height * factor, : width * factor], (width, height), interpolation=cv2.INTER_AREA)
        box[:3] /= factor
    return cv2.warpAffine(image, index_matrix(crop_matrix(box, size)), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def paste_back(photo: np.ndarray, box: np.ndarray, crops: np.ndarray, feather: float = 0.1) -> np.ndarray:
    """Put square crops [T, S, S, 3] (e.g. rendered frames) back into `photo` [H, W, 3] where `box` was cut from
    it: the inverse warp, blended into the photo over a border of `feather` x the crop side so no seam shows.
    Pixels the crop does not cover are the photo's own. Returns uint8 [T, H, W, 3]."""
    import cv2

    size = crops.shape[1]
    height, width = photo.shape[:2]
    inverse = index_matrix(cv2.invertAffineTransform(crop_matrix(box, size)))
    ramp = np.clip((np.minimum(np.arange(size), np.arange(size)[::-1]) + 0.5) / max(feather * size, 1e-9), 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    mask = cv2.warpAffine(np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32), inverse, (width, height),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
    background = photo.astype(np.float32)
    out = np.empty((len(crops), height, width, 3), np.uint8)
    for index, crop in enumerate(crops):
        warped = cv2.warpAffine(crop.astype(np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        out[index] = np.clip(np.round(mask * warped + (1 - mask) * background), 0, 255).astype(np.uint8)
    return out


def landmarks_to_crop(landmarks: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Landmarks [..., 478, 3] in source pixels -> crop pixels of the crop `box` at `size` (z scaled alike)."""
    matrix = crop_matrix(box, size)
    xy = landmarks[..., :2] @ matrix[:, :2].T + matrix[:, 2]
    return np.concatenate([xy, landmarks[..., 2:] * (size / box[2])], -1).astype(np.float32)
