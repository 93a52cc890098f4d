"""Procedural synthetic talking heads: a known-answer dataset for stage 1 and stage 2.

Every frame is rendered by orthographic ray casting against a small set of ellipsoids
(cranium, jaw, nose, ears, a hair shell, long hair, neck and torso) posed in 3D, so a yaw really shows the
side of the head. Surface appearance (eyes, gaze, eyelids, brows, mouth, lips, teeth, skin
texture, hair) is a function of the hit point in HEAD coordinates, so it moves rigidly with the
head. Everything is pure numpy, vectorised over pixels and frames, and deterministic in its seeds.

Conventions
-----------
* Images: uint8 RGB ``[H, W, 3]``; normalised image coordinates span ``[-1, 1]`` over the image,
  ``+x`` to the right, ``+y`` downwards.
* World / head frames: ``x`` right, ``y`` up, ``z`` towards the viewer (orthographic camera looking
  down ``-z``). The face points along head ``+z``.
* Pose (degrees): ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` maps head to world.
  - ``yaw > 0``: the face turns towards image ``+x`` (the nose moves right in the image).
  - ``pitch > 0``: the face looks up (the nose moves up in the image).
  - ``roll > 0``: the head tilts counter-clockwise in the image.
* ``tx, ty``: head centre offset in normalised image units (``+ty`` moves the head down).
  ``scale``: multiplies the head size (1 = default VoxCeleb-like framing, the head with hair
  fills ~60% of the image height).
* Pose vectors (``pose_vector``) are ``[yaw, pitch, roll, tx, ty, log(scale)]`` (float32). The angles are
  directly the face latent model's: expressed in the warp-grid frame (x right, y down, z away from the viewer),
  the head rotation is the transpose of ``vasa_jax.ops.rotation_matrix(yaw, pitch, roll)`` (tested).
* Gaze (degrees, relative to the head): ``gaze_theta > 0`` looks towards head ``+x`` (image right
  for a frontal head), ``gaze_phi > 0`` looks up.
* ``eye_open`` and ``mouth_open`` in ``[0, 1]``; ``emotion``: 4 weights over
  ``EMOTIONS = (neutral, happy, angry, surprised)`` summing to one.
* ``mouth_open`` of a clip is exactly ``loudness_to_mouth_open(frame_loudness(audio, ...))``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Optional

import numpy as np

__all__ = [
    "EMOTIONS",
    "LABELS",
    "TEST_ID_OFFSET",
    "Identity",
    "FrameState",
    "Clip",
    "SyntheticConfig",
    "SyntheticStage1Source",
    "sample_identity",
    "make_clip",
    "render_frame",
    "render_frames",
    "render_clip",
    "face_regions",
    "face_layout",
    "frame_loudness",
    "loudness_to_mouth_open",
    "pose_vector",
    "head_rotation",
    "identity_ids",
    "get_identity",
    "get_clip",
]

EMOTIONS = ("neutral", "happy", "angry", "surprised")

# Semantic labels returned by ``render_frames(..., return_labels=True)``.
LABELS = dict(
    background=0, skin=1, hair=2, sclera=3, iris=4, mouth=5, teeth=6, lips=7, brow=8,
    nose=9, ear=10, neck=11, clothes=12, eyelid=13,
)

TEST_ID_OFFSET = 1_000_000  # test identities are TEST_ID_OFFSET + k: disjoint from train ids

# Random-stream tags for np.random.default_rng([dataset_seed, TAG, ...]).
_TAG_IDENTITY = 11
_TAG_CLIP = 22
_TAG_PAIR = 33

_HEAD_SCALE = 0.55  # world units per head unit at scale 1 (cranium half-height ~1 head unit)
_HEAD_Y = 0.02  # world y of the head centre at ty = 0
_LIGHT = np.array([-0.45, 0.55, 0.75]) / np.linalg.norm([-0.45, 0.55, 0.75])
_FILL = np.array([0.7, -0.1, 0.7]) / np.linalg.norm([0.7, -0.1, 0.7])

# Object slots (ray-cast candidates). HAIR_FAR is the inside of the hair shell seen from behind.
_CRANIUM, _JAW, _NOSE, _EAR_L, _EAR_R, _NECK, _TORSO, _HAIR_LONG, _HAIR, _HAIR_FAR = range(10)
_NUM_OBJECTS = 9  # geometric objects; the hair shell provides two slots (outside and inside)
_HEAD_OBJECTS = (_CRANIUM, _JAW, _NOSE, _EAR_L, _EAR_R, _HAIR_LONG, _HAIR)  # posed by the head rotation

_SLOT_LABEL = np.array(
    [LABELS["skin"], LABELS["skin"], LABELS["nose"], LABELS["ear"], LABELS["ear"], LABELS["neck"],
     LABELS["clothes"], LABELS["hair"], LABELS["hair"], LABELS["hair"]], np.uint8)
_SLOT_LABEL_BG = np.concatenate([[LABELS["background"]], _SLOT_LABEL]).astype(np.uint8)  # index slot + 1

_STATE_FIELDS = ("yaw", "pitch", "roll", "tx", "ty", "scale", "gaze_theta", "gaze_phi",
                 "eye_open", "mouth_open")


# ----------------------------------------------------------------------------------------------
# Identities
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Identity:
    """All appearance parameters of one synthetic person (head units: cranium half-height ~1)."""

    identity_id: int
    dataset_seed: int
    head_radii: np.ndarray  # (a, b, c) of the cranium ellipsoid
    jaw_width: float  # jaw x-radius relative to the cranium
    jaw_length: float  # jaw y-radius
    skin_rgb: np.ndarray
    lip_rgb: np.ndarray
    hair_rgb: np.ndarray
    brow_rgb: np.ndarray
    iris_rgb: np.ndarray
    shirt_rgb: np.ndarray
    has_hair: bool
    hair_volume: float  # hair shell thickness
    hair_front: float  # hairline height at the forehead (shell-normalised y)
    hair_side: float  # hairline height at the sides
    hair_back: float  # hairline height at the back (low = long hair)
    hair_length: float  # 0, or the length of long hair hanging behind the head and neck
    fringe: float  # how far a fringe comes down over the forehead
    fringe_phase: float
    hair_freq: float
    eye_spacing: float  # half distance between eye centres
    eye_y: float
    eye_width: float  # half width
    eye_height: float  # half height
    iris_radius: float
    nose_size: float
    nose_length: float
    mouth_width: float  # half width
    mouth_y: float
    lip_thickness: float
    brow_height: float  # above the eye centre
    brow_arch: float
    brow_thickness: float
    brow_length: float  # half length
    brow_slant: float
    ear_size: float
    blush: float
    tex_k: np.ndarray  # [M, 3] skin-texture wave vectors (head units^-1)
    tex_phase: np.ndarray  # [M]
    tex_amp: np.ndarray  # [M]
    freckles: float  # 0 = none
    freckle_k: np.ndarray  # [3, 3]
    freckle_phase: np.ndarray  # [3]
    bg_rgb0: np.ndarray
    bg_rgb1: np.ndarray
    bg_angle: float
    bg_pattern: int  # 0 gradient, 1 stripes, 2 blobs
    bg_freq: np.ndarray  # [2]
    bg_phase: np.ndarray  # [2]

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _mix(a, b, t):
    return np.asarray(a, np.float64) * (1.0 - t) + np.asarray(b, np.float64) * t


def _palette(rng, colours, jitter):
    colours = np.asarray(colours, np.float64)
    t = rng.uniform(0.0, len(colours) - 1)
    i = min(int(t), len(colours) - 2)
    c = _mix(colours[i], colours[i + 1], t - i)
    return np.clip(c * np.exp(rng.normal(0.0, jitter, 3)), 0.0, 1.0)


_SKIN_TONES = [(0.97, 0.82, 0.71), (0.92, 0.72, 0.58), (0.80, 0.58, 0.43), (0.62, 0.43, 0.30),
               (0.42, 0.28, 0.19)]
_HAIR_COLOURS = [(0.07, 0.06, 0.05), (0.22, 0.13, 0.07), (0.42, 0.27, 0.13), (0.80, 0.64, 0.36),
                 (0.55, 0.22, 0.08), (0.68, 0.68, 0.66)]
_IRIS_COLOURS = [(0.33, 0.20, 0.10), (0.20, 0.40, 0.65), (0.25, 0.48, 0.30), (0.50, 0.40, 0.18),
                 (0.45, 0.50, 0.55), (0.12, 0.08, 0.05)]


def sample_identity(identity_id: int, dataset_seed: int = 0) -> Identity:
    """Deterministically samples identity ``identity_id`` of dataset ``dataset_seed``."""
    identity_id, dataset_seed = int(identity_id), int(dataset_seed)
    rng = np.random.default_rng([dataset_seed, _TAG_IDENTITY, identity_id])
    u = rng.uniform
    a, b, c = u(0.74, 0.86), u(0.95, 1.05), u(0.84, 0.94)
    skin = _palette(rng, _SKIN_TONES, 0.04)
    hair = np.asarray(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], np.float64)
    hair = np.clip(hair * np.exp(rng.normal(0.0, 0.1, 3)), 0.0, 1.0)
    iris = np.asarray(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], np.float64)
    iris = np.clip(iris * np.exp(rng.normal(0.0, 0.1, 3)), 0.0, 1.0)
    lip = np.clip(skin * np.array([0.88, 0.55, 0.55]) * u(0.85, 1.05) + np.array([0.08, 0.0, 0.02]),
                  0.0, 1.0)
    style = rng.choice(4, p=[0.1, 0.35, 0.35, 0.2])  # 0 bald-ish, 1 short, 2 medium, 3 long
    hair_front = [0.92, u(0.45, 0.65), u(0.40, 0.60), u(0.38, 0.60)][style]
    hair_side = [0.15, u(0.15, 0.35), u(-0.05, 0.15), u(-0.3, -0.05)][style]
    hair_back = [-0.15, u(-0.45, -0.25), u(-0.7, -0.45), u(-1.0, -0.75)][style]
    m = 6
    direction = rng.normal(size=(m, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    fk = np.linalg.qr(rng.normal(size=(3, 3)))[0] * u(12.0, 18.0)  # orthogonal lattice: round dots
    brightness = rng.uniform(0.35, 0.85)
    bg0 = np.clip(rng.uniform(0.1, 0.9, 3) * 0.5 + brightness * 0.5, 0.0, 1.0)
    bg1 = np.clip(bg0 * np.exp(rng.normal(0.0, 0.35, 3)), 0.0, 1.0)
    return Identity(
        identity_id=identity_id,
        dataset_seed=dataset_seed,
        head_radii=np.array([a, b, c]),
        jaw_width=u(0.70, 0.92),
        jaw_length=u(0.58, 0.68),
        skin_rgb=skin,
        lip_rgb=lip,
        hair_rgb=hair,
        brow_rgb=np.clip(_mix(hair, skin * 0.3, 0.3) * 0.8, 0.0, 1.0),
        iris_rgb=iris,
        shirt_rgb=np.clip(rng.uniform(0.05, 0.9, 3), 0.0, 1.0),
        has_hair=bool(u() > 0.05),
        hair_volume=u(0.0, 0.10),
        hair_front=hair_front,
        hair_side=hair_side,
        hair_back=hair_back,
        hair_length=float(u(0.8, 1.2)) if style == 3 and u() < 0.75 else 0.0,
        fringe=[0.0, u(0.0, 0.2), u(0.0, 0.3), u(0.0, 0.3)][style],
        fringe_phase=u(0.0, 2 * np.pi),
        hair_freq=u(30.0, 60.0),
        eye_spacing=u(0.26, 0.33),
        eye_y=u(0.02, 0.10),
        eye_width=u(0.13, 0.165),
        eye_height=u(0.065, 0.085),
        iris_radius=u(0.070, 0.085),
        nose_size=u(0.8, 1.25),
        nose_length=u(0.85, 1.2),
        mouth_width=u(0.16, 0.24),
        mouth_y=u(-0.52, -0.44),
        lip_thickness=u(0.028, 0.048),
        brow_height=u(0.17, 0.23),
        brow_arch=u(0.0, 0.05),
        brow_thickness=u(0.022, 0.04),
        brow_length=u(0.13, 0.17),
        brow_slant=u(-0.03, 0.03),
        ear_size=u(0.85, 1.2),
        blush=u(0.0, 0.25),
        tex_k=direction * u(2.0, 7.0, (m, 1)),
        tex_phase=u(0.0, 2 * np.pi, m),
        tex_amp=u(0.01, 0.03, m),
        freckles=float(u(0.2, 0.45)) if u() < 0.3 else 0.0,
        freckle_k=fk,
        freckle_phase=u(0.0, 2 * np.pi, 3),
        bg_rgb0=bg0,
        bg_rgb1=bg1,
        bg_angle=u(0.0, 2 * np.pi),
        bg_pattern=int(rng.integers(3)),
        bg_freq=u(3.0, 9.0, 2),
        bg_phase=u(0.0, 2 * np.pi, 2),
    )


# ----------------------------------------------------------------------------------------------
# Frame states
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class FrameState:
    """Per-frame controls; each field is a float or an array over frames (emotion: [..., 4])."""

    yaw: Any = 0.0
    pitch: Any = 0.0
    roll: Any = 0.0
    tx: Any = 0.0
    ty: Any = 0.0
    scale: Any = 1.0
    gaze_theta: Any = 0.0
    gaze_phi: Any = 0.0
    eye_open: Any = 1.0
    mouth_open: Any = 0.0
    emotion: Any = (1.0, 0.0, 0.0, 0.0)

    def __len__(self) -> int:
        return int(np.asarray(self.yaw).reshape(-1).shape[0]) if np.ndim(self.yaw) else 1

    def __getitem__(self, index) -> "FrameState":
        out = {k: np.asarray(getattr(self, k))[index] for k in _STATE_FIELDS}
        emotion = np.asarray(self.emotion)
        out["emotion"] = emotion[index] if emotion.ndim == 2 else emotion
        return FrameState(**out)

    def replace(self, **kwargs) -> "FrameState":
        return dataclasses.replace(self, **kwargs)

    def as_batch(self) -> Dict[str, np.ndarray]:
        """Broadcast every field to float64 arrays of shape [N] (emotion [N, 4])."""
        arrays = {k: np.atleast_1d(np.asarray(getattr(self, k), np.float64)) for k in _STATE_FIELDS}
        emotion = np.asarray(self.emotion, np.float64)
        n = max([a.shape[0] for a in arrays.values()] + [emotion.shape[0] if emotion.ndim == 2 else 1])
        out = {k: np.broadcast_to(a, (n,)) for k, a in arrays.items()}
        out["emotion"] = np.broadcast_to(emotion.reshape(-1, 4), (n, 4))
        return out


def pose_vector(state: FrameState) -> np.ndarray:
    """[..., 6] float32: yaw, pitch, roll (degrees), tx, ty (normalised image units), log(scale)."""
    return np.stack([np.asarray(state.yaw, np.float64), np.asarray(state.pitch, np.float64),
                     np.asarray(state.roll, np.float64), np.asarray(state.tx, np.float64),
                     np.asarray(state.ty, np.float64), np.log(np.asarray(state.scale, np.float64))],
                    axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, s], -1), np.stack([z, -s, c], -1)], -2)


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def head_rotation(yaw, pitch, roll) -> np.ndarray:
    """Head-to-world rotation matrices [..., 3, 3] from angles in degrees."""
    y, p, r = (np.deg2rad(np.asarray(v, np.float64)) for v in (yaw, pitch, roll))
    return _rot_z(r) @ _rot_y(y) @ _rot_x(p)


@functools.lru_cache(maxsize=16)
def _axis(size: int) -> np.ndarray:
    """Pixel-centre coordinates along one image axis in [-1, 1] (float32, read-only)."""
    c = ((np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    c.setflags(write=False)
    return c


@functools.lru_cache(maxsize=16)
def _background(identity: Identity, size: int) -> np.ndarray:
    """Static per-identity background [3, 1, S, S] float32: gradient, optional pattern, vignette."""
    c = _axis(size).astype(np.float64)
    u = np.tile(c, size)
    y = -np.repeat(c, size)
    g = 0.5 + 0.35 * (u * np.cos(identity.bg_angle) + y * np.sin(identity.bg_angle))
    col = identity.bg_rgb0[None, :] * (1.0 - g[:, None]) + identity.bg_rgb1[None, :] * g[:, None]
    f, ph = identity.bg_freq, identity.bg_phase
    if identity.bg_pattern == 1:
        d = u * np.cos(identity.bg_angle + 1.0) + y * np.sin(identity.bg_angle + 1.0)
        col = col * (1.0 + 0.07 * np.sin(f[0] * d + ph[0]))[:, None]
    elif identity.bg_pattern == 2:
        col = col * (1.0 + 0.08 * np.sin(f[0] * u + ph[0]) * np.sin(f[1] * y + ph[1]))[:, None]
    col = col * (1.0 - 0.12 * (u * u + y * y))[:, None]
    col = np.ascontiguousarray(np.clip(col, 0.0, 1.0).astype(np.float32).T).reshape(3, 1, size, size)
    col.setflags(write=False)
    return col


def _objects(identity: Identity, st: Dict[str, np.ndarray]):
    """Centres [N, K, 3] and radii [K, 3] of the ray-cast objects (in their own frames)."""
    n = st["yaw"].shape[0]
    a, b, c = identity.head_radii
    vol = identity.hair_volume
    ns, nl, es = identity.nose_size, identity.nose_length, identity.ear_size
    radii = np.array([
        [a, b, c],
        [identity.jaw_width * a, identity.jaw_length, 0.70],
        [0.075 * ns, 0.20 * nl, 0.13 * ns],
        [0.07 * es, 0.17 * es, 0.11 * es],
        [0.07 * es, 0.17 * es, 0.11 * es],
        [0.40, 0.60, 0.36],
        [1.45, 0.95, 0.60],
        [a + 0.12 + vol, 0.8 * max(identity.hair_length, 0.1), 0.5],
        [a + 0.07 + vol, b + 0.05 + vol, c + 0.07 + vol],
    ])
    centres = np.array([
        [0.0, 0.0, 0.0],
        [0.0, -0.38, 0.10],
        [0.0, -0.10 - 0.05 * nl, c - 0.02],
        [-(a - 0.03), -0.03, -0.06],
        [a - 0.03, -0.03, -0.06],
        [0.0, -1.25, -0.14],
        [0.0, -2.25, -0.30],
        [0.0, 0.15 - 0.8 * max(identity.hair_length, 0.1), -0.40],
        [0.0, 0.05, -0.04],
    ])
    centres = np.broadcast_to(centres, (n,) + centres.shape).copy()
    centres[:, _JAW, 1] -= 0.07 * np.clip(st["mouth_open"], 0.0, 1.0)  # the jaw drops as it opens
    return centres, radii


def _hair_mask(identity: Identity, qx, qy, qz):
    """Which points of the (shell-normalised) hair shell carry hair."""
    if not identity.has_hair:
        return np.zeros(qx.shape, bool)
    rho = np.sqrt(qx * qx + qz * qz) + 1e-6
    cz = qz / rho  # +1 front, 0 sides, -1 back
    front, side, back = identity.hair_front, identity.hair_side, identity.hair_back
    line = np.where(cz > 0, side + (front - side) * cz, side + (side - back) * cz)
    fr = np.clip(cz * 2.0 - 1.0, 0.0, 1.0)
    line = line - identity.fringe * fr * (0.65 + 0.35 * np.cos(6.0 * qx + identity.fringe_phase))
    line = np.where(cz > 0.4, np.maximum(line, 0.30), line)  # never cover the eyes
    return qy > line


def render_frames(identity: Identity, states: FrameState, resolution: int, *,
                  supersample: Optional[int] = None, return_labels: bool = False,
                  batch_size: Optional[int] = None):
    """Renders frames of ``identity`` for every entry of ``states``.

    Returns uint8 ``[N, H, W, 3]`` RGB (and uint8 ``[N, H, W]`` labels from ``LABELS`` if
    ``return_labels``; labels are taken from one sub-sample per pixel). ``supersample`` defaults to
    2 for resolutions <= 128 (area-averaged anti-aliasing) and 1 above.
    """
    st = states.as_batch()
    n = st["yaw"].shape[0]
    resolution = int(resolution)
    if supersample is None:
        supersample = 2 if resolution <= 128 else 1
    size = resolution * supersample
    if batch_size is None:
        batch_size = max(1, (1 << 17) // (size * size))
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    labels = np.empty((n, resolution, resolution), np.uint8) if return_labels else None
    bg = _background(identity, size)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        sub = {k: v[sl] for k, v in st.items()}
        col, lab = _render_batch(identity, sub, size, bg, return_labels)  # [3, M, S, S]
        m = col.shape[1]
        if supersample > 1:  # area-average anti-aliasing
            blocks = col.reshape(3, m, resolution, supersample, resolution, supersample)
            acc = blocks[:, :, :, 0, :, 0].copy()
            for i in range(supersample):
                for j in range(supersample):
                    if i or j:
                        acc += blocks[:, :, :, i, :, j]
            col = acc * np.float32(255.0 / supersample ** 2)
        else:
            col = col * np.float32(255.0)
        col += np.float32(0.5)
        np.clip(col, 0.0, 255.0, out=col)
        images[sl] = np.moveaxis(col.astype(np.uint8), 0, -1)
        if return_labels:
            o = supersample // 2
            labels[sl] = lab.reshape(m, size, size)[:, o::supersample, o::supersample]
    return (images, labels) if return_labels else images


def render_frame(identity: Identity, state: FrameState, resolution: int, **kwargs):
    """Renders one frame: uint8 [H, W, 3] RGB (plus labels [H, W] if ``return_labels=True``)."""
    out = render_frames(identity, state, resolution, **kwargs)
    if isinstance(out, tuple):
        return out[0][0], out[1][0]
    return out[0]


def _pixel_range(lo_u, hi_u, lo_y, hi_y, size):
    """Pixel rows [r0, r1) and columns [c0, c1) covering a world-space rectangle (clipped)."""
    c0 = int(np.clip(np.floor((lo_u + 1) * 0.5 * size - 0.5), 0, size))
    c1 = int(np.clip(np.ceil((hi_u + 1) * 0.5 * size - 0.5) + 1, 0, size))
    r0 = int(np.clip(np.floor((1 - hi_y) * 0.5 * size - 0.5), 0, size))
    r1 = int(np.clip(np.ceil((1 - lo_y) * 0.5 * size - 0.5) + 1, 0, size))
    return r0, r1, c0, c1


def _head_box(rot, s, trans, lo, hi, size):
    """Screen pixel range of a head-frame axis-aligned box over all frames of a batch."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    w = trans[:, None, :] + s[:, None, None] * np.einsum("nij,cj->nci", rot, corners)
    return _pixel_range(w[..., 0].min(), w[..., 0].max(), w[..., 1].min(), w[..., 1].max(), size)


def _render_batch(identity: Identity, st: Dict[str, np.ndarray], size: int, bg: np.ndarray,
                  return_labels: bool):
    """Ray casts a batch of frames at ``size`` x ``size``: float32 colours [3, N, S, S] in [0, 1]
    (channel first) and uint8 labels [N, S, S] (or None).

    Every object is intersected only inside its screen-space bounding box; per-pixel results
    (depth, object, shading, head-frame point) are kept in dense buffers, then the face is painted
    inside the screen boxes of the eye and mouth regions."""
    f32 = np.float32
    ax = _axis(size)  # u of each column
    ays = -ax  # world y of each row
    n = st["yaw"].shape[0]
    k = _NUM_OBJECTS

    rot_head = head_rotation(st["yaw"], st["pitch"], st["roll"])  # [N, 3, 3]
    rot_body = head_rotation(0.25 * st["yaw"], 0.0 * st["pitch"], 0.3 * st["roll"])
    rot_hang = head_rotation(st["yaw"], 0.3 * st["pitch"], st["roll"])  # long hair hangs down
    head_frame = np.array([o in _HEAD_OBJECTS for o in range(k)])
    rot = np.where(head_frame[None, :, None, None], rot_head[:, None], rot_body[:, None])  # [N,K,3,3]
    rot[:, _HAIR_LONG] = rot_hang
    s = _HEAD_SCALE * st["scale"]  # [N]
    trans = np.stack([st["tx"], -st["ty"] + _HEAD_Y, np.zeros(n)], -1)  # [N, 3] world
    centres, radii = _objects(identity, st)

    # Ray of pixel (u, y): world w = (u, y, -lam). In object-normalised coordinates
    # q = (R^T (w - T) / s - c) / r = G @ [u, y, 1] + lam * d; the surface is |q| = 1.
    rt = np.swapaxes(rot, -1, -2)  # rt[..., :, j] = R^T e_j
    inv = 1.0 / (s[:, None, None] * radii[None])  # [N, K, 3]
    g = np.empty((n, k, 3, 3))
    g[..., 0] = rt[..., 0] * inv
    g[..., 1] = rt[..., 1] * inv
    g[..., 2] = -(np.einsum("nkij,nj->nki", rt, trans) * inv) - centres / radii[None]
    d = -rt[..., 2] * inv  # [N, K, 3]
    qa = np.einsum("nki,nki->nk", d, d)  # [N, K]
    cb = np.einsum("nkij,nki->nkj", g, d).astype(f32)  # B = cb . [u, y, 1]
    mm = np.einsum("nkij,nkil->nkjl", g, g)  # C = [u, y, 1] mm [u, y, 1]^T - 1
    cc = np.stack([mm[..., 0, 0], mm[..., 1, 1], 2 * mm[..., 0, 1], 2 * mm[..., 0, 2],
                   2 * mm[..., 1, 2], mm[..., 2, 2] - 1.0], -1).astype(f32)
    g32, d32 = g.astype(f32), d.astype(f32)
    inv_a = (1.0 / qa).astype(f32)
    qa32 = qa.astype(f32)
    # Lights in each object's frame, pre-divided by the radii (normal = q / r).
    key = (np.einsum("nkji,j->nki", rot, _LIGHT) / radii[None]).astype(f32)
    fill = (np.einsum("nkji,j->nki", rot, _FILL) / radii[None]).astype(f32)
    inv_r2 = (1.0 / radii ** 2).astype(f32)

    # Screen-space boxes: world centre +- row norms of s R diag(r).
    wc = trans[:, None, :] + s[:, None, None] * np.einsum("nkij,nkj->nki", rot, centres)
    half = np.linalg.norm(s[:, None, None, None] * rot * radii[None, :, None, :], axis=-1)
    lo, hi = (wc - half).min(axis=0), (wc + half).max(axis=0)  # [K, 3]

    best = np.full((n, size, size), np.inf, f32)
    obj = np.full((n, size, size), -1, np.int8)
    shade = np.zeros((n, size, size), f32)
    pattern = np.ones((n, size, size), f32)  # multiplies the per-object base colour (hair strands, nostrils)
    ph = np.zeros((3, n, size, size), f32)  # head-frame points of head objects
    cran = None  # (box, lam, normal) of the cranium, to smooth its crease with the jaw
    skin = identity.skin_rgb.astype(f32)
    palette = np.stack([np.zeros(3, f32), skin, skin, skin, skin * f32([1.02, 0.92, 0.92]),
                        skin * f32([1.02, 0.92, 0.92]), skin * f32(0.85), identity.shirt_rgb.astype(f32),
                        identity.hair_rgb.astype(f32), identity.hair_rgb.astype(f32),
                        identity.hair_rgb.astype(f32)], 1)  # [3, slot + 1]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for kk in range(k):
            r0, r1, c0, c1 = _pixel_range(lo[kk, 0], hi[kk, 0], lo[kk, 1], hi[kk, 1], size)
            if r1 <= r0 or c1 <= c0 or (kk == _HAIR_LONG and not (identity.has_hair and identity.hair_length > 0)):
                continue
            u, y = ax[c0:c1], ays[r0:r1]
            cbk, cck = cb[:, kk], cc[:, kk]
            qb = (cbk[:, 0, None] * u)[:, None, :] + (cbk[:, 1, None] * y + cbk[:, 2, None])[:, :, None]
            cu = (cck[:, 0, None] * u + cck[:, 3, None]) * u
            cy = (cck[:, 1, None] * y + cck[:, 4, None]) * y + cck[:, 5, None]
            qc = cu[:, None, :] + cy[:, :, None] + cck[:, 2, None, None] * np.multiply.outer(y, u)
            disc = qb * qb - qa32[:, kk, None, None] * qc
            hit = disc > 0
            root = np.sqrt(np.maximum(disc, 0.0))
            ia = inv_a[:, kk, None, None]
            gk, dk = g32[:, kk], d32[:, kk]
            gu = [(gk[:, i, 0, None] * u)[:, None, :] for i in range(3)]
            gy = [(gk[:, i, 1, None] * y + gk[:, i, 2, None])[:, :, None] for i in range(3)]
            slots = [(kk, (-qb - root) * ia)]
            if kk == _HAIR:
                slots.append((_HAIR_FAR, (root - qb) * ia))
            region = (slice(None), slice(r0, r1), slice(c0, c1))
            for slot, lm in slots:
                lm = np.where(hit, lm, f32(0.0))
                q = [gu[i] + gy[i] + lm * dk[:, i, None, None] for i in range(3)]
                valid = hit
                if kk == _HAIR:
                    valid = hit & _hair_mask(identity, *q)
                lm = np.where(valid, lm, f32(np.inf))
                # Lambert shading: normal ~ q / r in the object's frame.
                nn = q[0] * q[0] * inv_r2[kk, 0] + q[1] * q[1] * inv_r2[kk, 1] + q[2] * q[2] * inv_r2[kk, 2]
                inv_n = 1.0 / np.sqrt(nn)
                if slot == _HAIR_FAR:
                    inv_n = -inv_n
                kd = (q[0] * key[:, kk, 0, None, None] + q[1] * key[:, kk, 1, None, None]
                      + q[2] * key[:, kk, 2, None, None]) * inv_n
                fd = (q[0] * fill[:, kk, 0, None, None] + q[1] * fill[:, kk, 1, None, None]
                      + q[2] * fill[:, kk, 2, None, None]) * inv_n
                sh = f32(0.34) + f32(0.70) * np.maximum(kd, 0.0) + f32(0.16) * np.maximum(fd, 0.0)
                if slot == _HAIR_FAR:
                    sh *= f32(0.55)
                breg = best[region]
                closer = lm < breg
                np.copyto(breg, lm, where=closer)
                oreg = obj[region]
                np.copyto(oreg, np.int8(slot), where=closer)
                if slot == _CRANIUM:
                    cran = ((r0, r1, c0, c1), lm, [q[i] * inv_r2[kk, i] * inv_n for i in range(3)])
                if slot == _JAW and cran is not None:
                    sh = _smooth_crease(cran, (r0, r1, c0, c1), lm, q, inv_r2[kk], inv_n, valid, oreg,
                                        key[:, kk] * radii[kk].astype(f32), fill[:, kk] * radii[kk].astype(f32),
                                        shade[region], sh)
                np.copyto(shade[region], sh, where=closer)
                if slot in (_HAIR, _HAIR_FAR, _HAIR_LONG):
                    pat = f32(0.9) + f32(0.1) * np.sin(identity.hair_freq * (q[0] + f32(0.35) * q[2])
                                                      + f32(5.0) * q[1])
                elif slot == _NOSE:  # nostrils on the underside
                    nostril = (((np.abs(q[0]) - f32(0.42)) ** 2 / f32(0.05) + (q[1] + f32(0.65)) ** 2 / f32(0.04)
                                < 1.0) & (q[2] > 0.1))
                    pat = np.where(nostril, f32(0.55), f32(1.0))
                else:
                    pat = f32(1.0)
                np.copyto(pattern[region], pat, where=closer)
                if kk in (_CRANIUM, _JAW, _NOSE, _EAR_L, _EAR_R):
                    for i in range(3):
                        p_i = q[i] * f32(radii[kk, i]) + centres[:, kk, i, None, None].astype(f32)
                        np.copyto(ph[(i,) + region], p_i, where=closer)

    labels = _SLOT_LABEL_BG[obj + 1] if return_labels else None
    slot1 = obj.astype(np.intp) + 1
    alb = np.stack([np.take(palette[c], slot1) for c in range(3)])  # [3, N, S, S]
    # Skin texture over the head's skin objects, in head coordinates (moves with the head).
    hlo, hhi = lo[:_NECK].min(axis=0), hi[:_NECK].max(axis=0)
    r0, r1, c0, c1 = _pixel_range(hlo[0], hhi[0], hlo[1], hhi[1], size)
    if r1 > r0 and c1 > c0:
        region = (slice(None), slice(r0, r1), slice(c0, c1))
        px, py, pz = ph[(0,) + region], ph[(1,) + region], ph[(2,) + region]
        tex = np.zeros(px.shape, f32)
        for (kx, ky, kz), phase, amp in zip(identity.tex_k.astype(f32), identity.tex_phase.astype(f32),
                                            identity.tex_amp.astype(f32)):
            tex += amp * np.sin(px * kx + py * ky + pz * kz + phase)
        on_skin = obj[region] <= _EAR_R
        pattern[region] *= np.where(on_skin, f32(1.0) + tex, f32(1.0))

    eyes = _head_box(rot_head, s, trans, (-0.6, identity.eye_y - 0.2, 0.2),
                     (0.6, identity.eye_y + identity.brow_height + 0.2, identity.head_radii[2] + 0.05), size)
    mouth = _head_box(rot_head, s, trans, (-identity.mouth_width * 1.2 - 0.02, identity.mouth_y - 0.3, 0.2),
                      (identity.mouth_width * 1.2 + 0.02, identity.mouth_y + 0.15, identity.head_radii[2] + 0.15), size)
    cheeks = _head_box(rot_head, s, trans, (-0.7, -0.5, 0.2), (0.7, 0.05, identity.head_radii[2] + 0.05), size)
    par = {key_: v.astype(f32).reshape((n,) + (1,) * 2 + v.shape[1:]) for key_, v in st.items()}
    for box, painter in ((cheeks, _paint_cheeks), (eyes, _paint_eyes), (mouth, _paint_mouth)):
        r0, r1, c0, c1 = box
        if r1 <= r0 or c1 <= c0:
            continue
        region = (slice(None), slice(r0, r1), slice(c0, c1))
        face = (obj[region] <= _JAW) & (obj[region] >= 0) & (ph[(2,) + region] > 0.2)
        if not face.any():
            continue
        painter(identity, par, ph[(0,) + region], ph[(1,) + region], ph[(2,) + region], face,
                alb[(slice(None),) + region],
                labels[region] if return_labels else None)

    alb *= shade * pattern
    background = obj < 0
    for c in range(3):
        np.copyto(alb[c], bg[c], where=background)
    return alb, labels


def _smooth_crease(cran, box, lam_j, q, inv_r2, inv_n, valid_j, oreg, key, fill, shade_reg, sh):
    """Blend cranium and jaw normals where both are hit, so their union has no visible crease.

    Updates ``shade_reg`` in place for cranium pixels and returns the jaw's shading."""
    (cr0, cr1, cc0, cc1), lam_c, n_c = cran
    r0, r1, c0, c1 = box
    # Cranium quantities on the jaw's box (the jaw box lies within the cranium box in practice).
    rr0, rr1, ccc0, ccc1 = max(r0, cr0), min(r1, cr1), max(c0, cc0), min(c1, cc1)
    if rr1 <= rr0 or ccc1 <= ccc0:
        return sh
    sub_j = (slice(None), slice(rr0 - r0, rr1 - r0), slice(ccc0 - c0, ccc1 - c0))
    sub_c = (slice(None), slice(rr0 - cr0, rr1 - cr0), slice(ccc0 - cc0, ccc1 - cc0))
    lc = lam_c[sub_c]
    lj = lam_j[sub_j]
    both = valid_j[sub_j] & np.isfinite(lc)
    w = 1.0 / (1.0 + np.exp(np.clip((lj - lc) / np.float32(0.02 * _HEAD_SCALE), -30.0, 30.0)))
    nj = [q[i][sub_j] * inv_r2[i] * inv_n[sub_j] for i in range(3)]
    nb = [n_c[i][sub_c] * (1.0 - w) + nj[i] * w for i in range(3)]
    inv_b = 1.0 / np.sqrt(nb[0] ** 2 + nb[1] ** 2 + nb[2] ** 2 + np.float32(1e-12))
    kd = (nb[0] * key[:, 0, None, None] + nb[1] * key[:, 1, None, None] + nb[2] * key[:, 2, None, None]) * inv_b
    fd = (nb[0] * fill[:, 0, None, None] + nb[1] * fill[:, 1, None, None] + nb[2] * fill[:, 2, None, None]) * inv_b
    sb = np.float32(0.34) + np.float32(0.70) * np.maximum(kd, 0.0) + np.float32(0.16) * np.maximum(fd, 0.0)
    sh = sh.copy()
    sh_sub = sh[sub_j]
    np.copyto(sh_sub, sb, where=both)
    # Cranium pixels (already owning the shade buffer) inside the blend zone.
    np.copyto(shade_reg[sub_j], sb, where=both & (oreg[sub_j] == _CRANIUM))
    return sh


def _paint_cheeks(identity, p, x, y, z, face, alb, lab):
    blush = identity.blush + 0.35 * p["emotion"][..., 1]
    if np.max(blush) < 1e-3 and identity.freckles <= 0:
        return
    dch = (np.abs(x) - 0.36) ** 2 + (y + 0.22) ** 2
    bl = np.where(face, blush * np.exp(-dch / np.float32(0.02)), np.float32(0.0))
    alb *= np.stack([1.0 + 0.10 * bl, 1.0 - 0.18 * bl, 1.0 - 0.14 * bl])
    if identity.freckles > 0:  # dots on a random rotated 3D lattice in head coordinates, hashed per cell
        f32 = np.float32
        fk, fp = identity.freckle_k.astype(f32), identity.freckle_phase.astype(f32)
        f = [x * fk[i, 0] + y * fk[i, 1] + z * fk[i, 2] + fp[i] for i in range(3)]
        cell = [np.floor(v) for v in f]
        h = np.sin(cell[0] * f32(12.9898) + cell[1] * f32(78.233) + cell[2] * f32(37.719)) * f32(43758.5453)
        h -= np.floor(h)
        dots = sum((f[i] - cell[i] - f32(0.5)) ** 2 for i in range(3)) < 0.07
        zone = (np.abs(y + 0.14) < 0.2) & (np.abs(x) < 0.5) & (np.abs(x) > 0.08)
        spots = face & dots & (h < identity.freckles) & zone
        alb *= np.where(spots, f32([0.80, 0.68, 0.62])[:, None, None, None], f32(1.0))


def _put(alb, lab, mask, colour, label):
    """Paints ``colour`` (RGB, or per-pixel [3, ...]) into channel-first ``alb`` where ``mask``."""
    colour = np.asarray(colour, np.float32)
    for c in range(3):
        np.copyto(alb[c], colour[c], where=mask)
    if lab is not None:
        np.copyto(lab, np.uint8(label), where=mask)


def _paint_eyes(identity, p, x, y, z, face, alb, lab):
    """Eyes (sclera, iris following the gaze, pupil), eyelids with blinks, lashes, brows."""
    f32 = np.float32
    emo = p["emotion"]
    happy, angry, surprised = emo[..., 1], emo[..., 2], emo[..., 3]
    es, ey, ew, eh = identity.eye_spacing, identity.eye_y, identity.eye_width, identity.eye_height
    ax_ = np.abs(x)
    xo = ax_ - es  # > 0 towards the temple, for both eyes
    xr = x - np.where(x >= 0, f32(es), f32(-es))  # head-frame x offset from the eye centre
    xn = xo / ew
    in_x = face & (np.abs(xn) < 1.0)
    prof = eh * np.power(np.clip(1.0 - xn * xn, 0.0, 1.0), 0.6)
    squint = np.clip(1.0 - 0.22 * happy - 0.18 * angry + 0.25 * surprised, 0.0, 1.4)
    openness = np.clip(p["eye_open"], 0.0, 1.0) * squint
    lower = ey - 0.85 * prof
    upper = lower + 1.85 * prof * openness
    socket = in_x & (y > lower - 0.02) & (y < ey + 1.25 * prof + 0.02)
    alb *= np.where(socket, f32(0.9), f32(1.0))
    if lab is not None:
        np.copyto(lab, np.uint8(LABELS["eyelid"]), where=socket)
    visible = in_x & (y > lower) & (y < upper)
    ix = ew * 0.85 * np.sin(np.deg2rad(p["gaze_theta"]))
    iy = eh * 0.9 * np.sin(np.deg2rad(p["gaze_phi"]))
    r2 = (xr - ix) ** 2 + (y - ey - iy) ** 2
    ri = identity.iris_radius
    iris = visible & (r2 < ri * ri)
    _put(alb, lab, visible & ~iris, [0.93, 0.92, 0.88], LABELS["sclera"])
    iris_col = identity.iris_rgb.astype(f32)[:, None, None, None] * (0.75 + 0.25 * np.sqrt(r2) / ri)
    _put(alb, lab, iris, iris_col, LABELS["iris"])
    _put(alb, None, visible & (r2 < (0.42 * ri) ** 2), [0.03, 0.03, 0.03], 0)
    lash = face & (np.abs(xn) < 1.08) & (y >= upper - 0.004) & (y < upper + 0.018 + 0.012 * (1 - openness))
    _put(alb, lab, lash, [0.08, 0.06, 0.05], LABELS["eyelid"])

    bx = (ax_ - es - 0.01) / identity.brow_length  # > 0 towards the temple
    yb = (ey + identity.brow_height + identity.brow_arch * (1.0 - bx * bx) + 0.08 * surprised
          - 0.045 * angry + (identity.brow_slant + 0.07 * angry) * bx)
    tb = identity.brow_thickness * (1.0 - 0.45 * bx * bx)
    brow = face & (np.abs(bx) < 1.0) & (np.abs(y - yb) < tb)
    _put(alb, lab, brow, identity.brow_rgb.astype(f32), LABELS["brow"])


def _paint_mouth(identity, p, x, y, z, face, alb, lab):
    """Lips, dark interior opening with ``mouth_open``, teeth; corners curve with emotion."""
    f32 = np.float32
    emo = p["emotion"]
    happy, angry, surprised = emo[..., 1], emo[..., 2], emo[..., 3]
    mo = np.clip(p["mouth_open"], 0.0, 1.0)
    mw = identity.mouth_width * (1.0 - 0.12 * mo) * (1.0 + 0.12 * happy - 0.15 * surprised)
    xm = x / mw
    in_m = face & (np.abs(xm) < 1.0)
    w2 = np.clip(1.0 - xm * xm, 0.0, 1.0)
    yc = identity.mouth_y + (0.10 * happy - 0.07 * angry) * (xm * xm - 0.3)
    ho = mo * 0.14 * np.sqrt(w2)
    dy = y - yc
    lt = identity.lip_thickness * np.power(w2, 0.35)
    interior = in_m & (np.abs(dy) < np.maximum(ho, 0.007 * np.sqrt(w2)))
    upper_lip = in_m & ~interior & (dy > 0) & (dy < ho + lt)
    lower_lip = in_m & ~interior & (dy < 0) & (-dy < ho + 1.25 * lt)
    teeth = interior & (ho > 0.015) & (dy > ho - np.minimum(0.035, 0.45 * ho))
    lip = identity.lip_rgb.astype(f32)
    _put(alb, lab, upper_lip, lip * f32(0.9), LABELS["lips"])
    _put(alb, lab, lower_lip, lip, LABELS["lips"])
    _put(alb, lab, interior, [0.22, 0.05, 0.06], LABELS["mouth"])
    _put(alb, lab, teeth, [0.90, 0.88, 0.82], LABELS["teeth"])


def face_regions(labels: np.ndarray) -> np.ndarray:
    """Mouth and eye region masks [..., H, W, 2] uint8 of rendered frames from their labels [..., H, W]
    (`vasa_jax.data.regions`): the mouth is its interior, teeth and lips; the eyes are sclera, iris and lids."""
    from vasa_jax.data import regions

    return regions.from_labels(labels, (LABELS["mouth"], LABELS["teeth"], LABELS["lips"]),
                               (LABELS["sclera"], LABELS["iris"], LABELS["eyelid"]))


def face_layout(labels: np.ndarray) -> np.ndarray:
    """The layout [..., H, W, 3] uint8 of rendered frames (`vasa_jax.data.regions.LAYOUT_NAMES`): the mouth's
    interior (with the teeth), the eyes' opening (sclera and iris), the irises."""
    from vasa_jax.data import regions

    return regions.layout_from_labels(labels, (LABELS["mouth"], LABELS["teeth"]), (LABELS["sclera"], LABELS["iris"]),
                                      (LABELS["iris"],))


def render_clip(clip: "Clip", resolution: int, **kwargs):
    """Renders every frame of ``clip``: uint8 [T, H, W, 3] (plus labels with return_labels)."""
    return render_frames(clip.identity, clip.states, resolution, **kwargs)


# ----------------------------------------------------------------------------------------------
# Clips: audio and motion
# ----------------------------------------------------------------------------------------------

LOUDNESS_REF = 0.12  # RMS at which mouth_open = tanh(1) ~ 0.76
LOUDNESS_FLOOR = 0.004  # RMS below this keeps the mouth closed


def frame_loudness(audio: np.ndarray, num_frames: int, fps: float = 25, sample_rate: int = 16000) -> np.ndarray:
    """RMS of ``audio`` over each frame's window [round(i*sr/fps), round((i+1)*sr/fps)): float32 [T]."""
    audio = np.asarray(audio, np.float64)
    edges = np.round(np.arange(num_frames + 1) * (sample_rate / fps)).astype(np.int64)
    edges = np.minimum(edges, audio.shape[0])
    csum = np.concatenate([[0.0], np.cumsum(audio * audio)])
    count = np.maximum(edges[1:] - edges[:-1], 1)
    energy = (csum[edges[1:]] - csum[edges[:-1]]) / count
    return np.sqrt(np.maximum(energy, 0.0)).astype(np.float32)


def loudness_to_mouth_open(loudness: np.ndarray) -> np.ndarray:
    """The monotone map from frame loudness (RMS) to mouth opening in [0, 1): float32."""
    x = np.maximum(np.asarray(loudness, np.float64) - LOUDNESS_FLOOR, 0.0) / LOUDNESS_REF
    return np.tanh(x).astype(np.float32)


@dataclasses.dataclass(eq=False)
class Clip:
    identity: Identity
    clip_seed: int
    fps: float
    sample_rate: int
    states: FrameState  # arrays [T] (emotion [T, 4])
    audio: np.ndarray  # float32 [round(T * sample_rate / fps)]
    loudness: np.ndarray  # float32 [T], RMS per frame window

    @property
    def num_frames(self) -> int:
        return len(self.states)

    @property
    def identity_id(self) -> int:
        return self.identity.identity_id

    def ground_truth(self) -> Dict[str, np.ndarray]:
        st = self.states
        return dict(
            pose=pose_vector(st),
            yaw=np.asarray(st.yaw, np.float32), pitch=np.asarray(st.pitch, np.float32),
            roll=np.asarray(st.roll, np.float32), tx=np.asarray(st.tx, np.float32),
            ty=np.asarray(st.ty, np.float32), scale=np.asarray(st.scale, np.float32),
            gaze=np.stack([st.gaze_theta, st.gaze_phi], -1).astype(np.float32),
            eye_open=np.asarray(st.eye_open, np.float32),
            mouth_open=np.asarray(st.mouth_open, np.float32),
            emotion=np.asarray(st.emotion, np.float32),
            identity=np.int32(self.identity.identity_id),
            loudness=self.loudness,
            audio=self.audio,
        )


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with reflect padding."""
    if sigma <= 0:
        return x
    r = int(np.ceil(3 * sigma))
    t = np.arange(-r, r + 1)
    kern = np.exp(-0.5 * (t / sigma) ** 2)
    kern /= kern.sum()
    xp = np.pad(x, [(r, r)] + [(0, 0)] * (x.ndim - 1), mode="reflect")
    out = np.zeros_like(x, dtype=np.float64)
    for i, w in enumerate(kern):
        out += w * xp[i:i + x.shape[0]]
    return out


def _ou(rng, num: int, dims: int, theta: float, sigma: float) -> np.ndarray:
    """Ornstein-Uhlenbeck (mean-reverting random walk) with unit stationary std, [num, dims]."""
    noise = rng.standard_normal((num, dims))
    out = np.empty((num, dims))
    x = rng.standard_normal(dims)
    step = np.sqrt(1.0 - (1.0 - theta) ** 2)
    for i in range(num):
        x = (1.0 - theta) * x + step * noise[i]
        out[i] = x
    return _smooth(out, sigma)


def _speech(rng, num_samples: int, sample_rate: int):
    """Speech-like audio: syllable envelope (3-6 Hz) with pauses, harmonic carrier, noise."""
    dur = num_samples / sample_rate
    # Syllable segments: (start, length, amplitude); pauses between phrases.
    starts, lengths, amps = [], [], []
    t = rng.uniform(0.0, 0.4)
    while t < dur:
        phrase_end = t + rng.uniform(0.8, 2.5)
        while t < min(phrase_end, dur):
            length = 1.0 / rng.uniform(3.0, 6.0)
            starts.append(t)
            lengths.append(length)
            amps.append(rng.uniform(0.35, 1.0))
            t += length
        t += rng.uniform(0.15, 0.6)
    if not starts:  # a clip shorter than the initial pause: silence
        starts, lengths, amps = [0.0], [1.0], [0.0]
    starts, lengths, amps = np.array(starts), np.array(lengths), np.array(amps)
    f32 = np.float32
    ts = np.arange(num_samples) / sample_rate
    idx = np.clip(np.searchsorted(starts, ts, side="right") - 1, 0, max(len(starts) - 1, 0))
    tau = np.clip((ts - starts[idx]) / lengths[idx], 0.0, 1.0).astype(f32)  # position in the syllable
    bump = np.sin(f32(np.pi) * tau)
    env = amps[idx].astype(f32) * bump * bump  # zero between syllables and in pauses

    # Pitch contour 100-250 Hz: base + slow wander + per-syllable accent.
    base = rng.uniform(105.0, 210.0)
    ctrl_t = np.arange(0.0, dur + 0.5, 0.1)
    ctrl = np.cumsum(rng.normal(0.0, 0.04, ctrl_t.shape))
    ctrl -= ctrl.mean()
    f0 = base * np.exp(np.interp(ts, ctrl_t, ctrl) + 0.08 * bump)
    f0 = np.clip(f0, 100.0, 250.0)
    phase = np.mod(2.0 * np.pi * np.cumsum(f0) / sample_rate + rng.uniform(0, 2 * np.pi), 2 * np.pi).astype(f32)
    # Harmonics via the Chebyshev recurrence sin((k+1)p) = 2 cos(p) sin(kp) - sin((k-1)p).
    nh = 12
    weights = (1.0 / np.arange(1, nh + 1)) * np.exp(rng.normal(0.0, 0.3, nh))
    weights = (weights / np.sqrt(0.5 * np.sum(weights ** 2))).astype(f32)  # unit-RMS carrier
    s_prev, s_cur = np.zeros(num_samples, f32), np.sin(phase)
    two_cos = f32(2.0) * np.cos(phase)
    voiced = weights[0] * s_cur
    for h in range(1, nh):
        s_prev, s_cur = s_cur, two_cos * s_cur - s_prev
        voiced += weights[h] * s_cur
    noise = rng.standard_normal(num_samples, dtype=f32)
    audio = f32(0.2) * env * (voiced + f32(0.25) * noise) + f32(0.002) * noise
    return audio


def make_clip(clip_seed: int, identity: Identity, num_frames: int, fps: float = 25,
              sample_rate: int = 16000) -> Clip:
    """A clip of ``identity``: speech audio plus per-frame states (the ground truth)."""
    num_frames = int(num_frames)
    rng = np.random.default_rng([identity.dataset_seed, _TAG_CLIP, identity.identity_id, int(clip_seed)])
    num_samples = int(round(num_frames * sample_rate / fps))
    audio = _speech(rng, num_samples, sample_rate)
    loudness = frame_loudness(audio, num_frames, fps, sample_rate)
    mouth = loudness_to_mouth_open(loudness)

    sec = fps  # frames per second
    ou = _ou(rng, num_frames, 6, theta=1.0 / (1.5 * sec), sigma=0.08 * sec)
    energy = _smooth(mouth.astype(np.float64), 0.06 * sec)
    energy = energy - energy.mean()
    nod = rng.uniform(6.0, 14.0)
    yaw = rng.uniform(-20, 20) + 14.0 * ou[:, 0] + rng.uniform(-4, 4) * energy
    pitch = rng.uniform(-8, 8) + 6.0 * ou[:, 1] - nod * energy
    roll = rng.uniform(-5, 5) + 5.0 * ou[:, 2]
    yaw = 35.0 * np.tanh(yaw / 35.0)
    pitch = 20.0 * np.tanh(pitch / 20.0)
    roll = 15.0 * np.tanh(roll / 15.0)
    tx = rng.uniform(-0.04, 0.04) + 0.03 * ou[:, 3]
    ty = rng.uniform(-0.03, 0.03) + 0.02 * ou[:, 4]
    scale = np.exp(rng.uniform(-0.07, 0.07) + 0.03 * ou[:, 5])

    # Gaze: main direction plus saccades every 0.4-1.5 s (2-frame transitions).
    gaze = np.zeros((num_frames, 2))
    g0 = np.array([rng.uniform(-12, 12), rng.uniform(-8, 8)])
    t = 0.0
    dur = num_frames / fps
    times, targets = [0.0], [np.zeros(2)]
    while t < dur:
        t += rng.uniform(0.4, 1.5)
        times.append(t)
        targets.append(np.clip(rng.normal(0.0, 6.0, 2), -12, 12) * (rng.uniform() < 0.7))
    ft = np.arange(num_frames) / fps
    seg = np.searchsorted(np.array(times), ft, side="right") - 1
    targets = np.array(targets)
    frac = np.clip((ft - np.array(times)[seg]) * fps / 2.0, 0.0, 1.0)
    prev = targets[np.maximum(seg - 1, 0)]
    gaze = g0 + prev + (targets[seg] - prev) * frac[:, None]
    gaze_theta = np.clip(gaze[:, 0], -30, 30)
    gaze_phi = np.clip(gaze[:, 1], -20, 20)

    # Blinks every 2-6 s: eye_open dips to 0 over ~4 frames.
    eye = np.ones(num_frames)
    profile = np.array([0.55, 0.1, 0.0, 0.35, 0.75])
    t = rng.uniform(0.3, 3.0)
    while t < dur:
        i0 = int(round(t * fps))
        for j, v in enumerate(profile):
            if 0 <= i0 + j < num_frames:
                eye[i0 + j] = min(eye[i0 + j], v)
        t += rng.uniform(2.0, 6.0)

    # Emotion: constant per clip, a mixture of neutral and one dominant emotion.
    kind = int(rng.integers(len(EMOTIONS)))
    emotion = np.zeros(len(EMOTIONS))
    w = rng.uniform(0.6, 1.0) if kind else 1.0
    emotion[0] = 1.0 - w
    emotion[kind] += w
    states = FrameState(
        yaw=yaw.astype(np.float32), pitch=pitch.astype(np.float32), roll=roll.astype(np.float32),
        tx=tx.astype(np.float32), ty=ty.astype(np.float32), scale=scale.astype(np.float32),
        gaze_theta=gaze_theta.astype(np.float32), gaze_phi=gaze_phi.astype(np.float32),
        eye_open=eye.astype(np.float32), mouth_open=mouth,
        emotion=np.tile(emotion.astype(np.float32), (num_frames, 1)),
    )
    return Clip(identity=identity, clip_seed=int(clip_seed), fps=fps, sample_rate=int(sample_rate),
                states=states, audio=audio, loudness=loudness)


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Describes the synthetic dataset; the split is by identity (test ids >= TEST_ID_OFFSET)."""

    num_identities: int = 100  # train identities: ids 0 .. num_identities - 1
    num_test_identities: int = 16  # test identities: ids TEST_ID_OFFSET + 0 .. - 1
    clips_per_identity: int = 4
    frames_per_clip: int = 100  # 4 s at 25 fps
    fps: float = 25
    sample_rate: int = 16000
    resolution: int = 64
    seed: int = 0
    pairs_per_clip: int = 50
    extra_frames: int = 0  # per stage-1 item: more frames of the clip with their labels, for the label losses
    # Per stage-1 item: the chance that the driving frame's and each extra frame's mouth, eyes and gaze are drawn
    # independently of the clip (`random_expression`), at the clip frame's pose.
    random_expression: float = 0.0


def from_stage1_config(config) -> SyntheticConfig:
    """The synthetic dataset a stage-1 config's data section describes (what stage 1 trains on, `encode_motion`
    encodes and the evaluation holds out)."""
    data = config.data
    return SyntheticConfig(
        num_identities=data.num_identities,
        num_test_identities=data.eval_identities,
        clips_per_identity=data.clips_per_identity,
        frames_per_clip=data.frames_per_clip,
        resolution=data.resolution,
        seed=data.seed,
        pairs_per_clip=data.pairs_per_clip,
        extra_frames=data.extra_frames,
        random_expression=data.get("random_expression", 0.0),  # absent from workdirs written before it existed
    )


def random_expression(rng: np.random.Generator, count: int) -> Dict[str, np.ndarray]:
    """Mouth opening, eye openness and gaze for `count` frames, each independent of the others and of the pose:
    gaze uniform over the clips' range, eyes open in 60% of frames (else uniform), mouth closed in 25% (else
    uniform). In the clips the mouth follows the speech, the head nods with it and the eyes are closed in a few
    percent of frames; these draws show every combination."""
    u = rng.uniform
    return {
        "gaze_theta": u(-30, 30, count).astype(np.float32),
        "gaze_phi": u(-20, 20, count).astype(np.float32),
        "eye_open": np.where(u(size=count) < 0.6, 1.0, u(0, 1, count)).astype(np.float32),
        "mouth_open": np.where(u(size=count) < 0.25, 0.0, u(0, 1, count)).astype(np.float32),
    }


def identity_ids(config: SyntheticConfig, split: str = "train") -> np.ndarray:
    if split == "train":
        return np.arange(config.num_identities, dtype=np.int64)
    if split == "test":
        return TEST_ID_OFFSET + np.arange(config.num_test_identities, dtype=np.int64)
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


@functools.lru_cache(maxsize=256)
def get_identity(identity_id: int, dataset_seed: int = 0) -> Identity:
    """Cached ``sample_identity``."""
    return sample_identity(identity_id, dataset_seed)


@functools.lru_cache(maxsize=64)
def _cached_clip(identity_id, dataset_seed, clip_index, num_frames, fps, sample_rate):
    return make_clip(clip_index, get_identity(identity_id, dataset_seed), num_frames, fps, sample_rate)


def get_clip(config: SyntheticConfig, identity_id: int, clip_index: int) -> Clip:
    """Clip ``clip_index`` of ``identity_id`` in the dataset described by ``config`` (cached)."""
    return _cached_clip(int(identity_id), int(config.seed), int(clip_index), int(config.frames_per_clip),
                        config.fps, int(config.sample_rate))


class SyntheticStage1Source:
    """grain RandomAccessDataSource of (source, driving, cross) frame triplets.

    Item ``i`` belongs to clip ``i // pairs_per_clip`` (identity ``clip // clips_per_identity`` of
    the split); source and driving are uniform random frames of that clip, cross is a random
    frame of a random clip of another identity of the same split. Only those three frames are
    rendered. Poses are ``[yaw, pitch, roll, tx, ty, log(scale)]``, gaze ``[theta, phi]``; ``driving_regions`` are
    the driving frame's mouth and eye masks [H, W, 2] (``face_regions``), ``driving_layout`` and ``source_layout`` the
    two frames' layouts [H, W, 3] (``face_layout``). With ``extra_frames`` > 0 an item also
    holds that many more frames of the clip with their labels (``extra_frames`` [N, H, W, 3], ``extra_pose``,
    ``extra_gaze``, ``extra_eye_open``, ``extra_mouth_open``), which only the label losses see.
    """

    def __init__(self, config: SyntheticConfig, split: str = "train"):
        self.config = config
        self.split = split
        identity_ids(config, split)  # validates split

    def __len__(self) -> int:
        c = self.config
        return len(identity_ids(c, self.split)) * c.clips_per_identity * c.pairs_per_clip

    def __repr__(self) -> str:
        return f"SyntheticStage1Source(config={self.config!r}, split={self.split!r})"

    def __getitem__(self, index) -> Dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        c = self.config
        ids = identity_ids(c, self.split)
        clip_number = index // c.pairs_per_clip
        ident_idx, clip_index = divmod(clip_number, c.clips_per_identity)
        identity_id = int(ids[ident_idx])
        split_tag = 0 if self.split == "train" else 1
        rng = np.random.default_rng([c.seed, _TAG_PAIR, split_tag, index])
        src_f, drv_f = rng.integers(c.frames_per_clip, size=2)
        if len(ids) > 1:
            other = int(rng.integers(len(ids) - 1))
            other += other >= ident_idx
        else:
            other = ident_idx
        cross_id = int(ids[other])
        cross_clip = int(rng.integers(c.clips_per_identity))
        cross_f = int(rng.integers(c.frames_per_clip))

        extra_f = rng.integers(c.frames_per_clip, size=c.extra_frames)

        clip = get_clip(c, identity_id, clip_index)
        xclip = get_clip(c, cross_id, cross_clip)
        if c.extra_frames:
            # Half of them from the clip's blinks, if it has any: eyes are closed in a few percent of frames, too
            # rare for the encoder to learn them from uniformly drawn ones.
            blinks = np.flatnonzero(np.asarray(clip.states.eye_open) < 0.5)
            if len(blinks):
                extra_f[: c.extra_frames // 2] = blinks[extra_f[: c.extra_frames // 2] % len(blinks)]
        frames = clip.states[np.concatenate([[src_f, drv_f], extra_f]).astype(np.int64)]
        if c.random_expression > 0:  # the driving and extra frames, never the source: it is what gets re-enacted
            redraw = np.concatenate([[False], rng.uniform(size=len(frames) - 1) < c.random_expression])
            drawn = random_expression(rng, len(frames))
            frames = frames.replace(**{k: np.where(redraw, v, getattr(frames, k)).astype(np.float32)
                                       for k, v in drawn.items()})
        # One render call for the clip's frames (the pair, then the extra frames): the per-call cost dominates.
        images, labels = render_frames(clip.identity, frames, c.resolution, return_labels=True)
        two = frames[np.array([0, 1])]
        cross_state = xclip.states[np.array([cross_f])]
        cross = render_frames(xclip.identity, cross_state, c.resolution)[0]
        pose = pose_vector(two)
        f32 = np.float32
        extra = {}
        if c.extra_frames:
            states = frames[2:]
            extra = {
                "extra_frames": images[2:],
                "extra_pose": pose_vector(states),
                "extra_gaze": np.stack([states.gaze_theta, states.gaze_phi], -1).astype(f32),
                "extra_eye_open": np.asarray(states.eye_open, f32),
                "extra_mouth_open": np.asarray(states.mouth_open, f32),
            }
        return extra | {
            "source": images[0],
            "driving": images[1],
            "cross": cross,
            "source_pose": pose[0],
            "driving_pose": pose[1],
            "cross_pose": pose_vector(cross_state)[0],
            "source_gaze": np.array([two.gaze_theta[0], two.gaze_phi[0]], f32),
            "driving_gaze": np.array([two.gaze_theta[1], two.gaze_phi[1]], f32),
            "source_eye_open": f32(two.eye_open[0]),
            "driving_eye_open": f32(two.eye_open[1]),
            "source_mouth_open": f32(two.mouth_open[0]),
            "driving_mouth_open": f32(two.mouth_open[1]),
            "driving_regions": face_regions(labels[1]),
            "driving_layout": face_layout(labels[1]),
            "source_layout": face_layout(labels[0]),
            "identity": np.int32(identity_id),
            "cross_identity": np.int32(cross_id),
        }
