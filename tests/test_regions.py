"""Face regions (mouth, eyes) for the region-weighted loss and the region metrics: from the renderer's labels and
from MediaPipe landmarks, which must agree on the same rendered head."""

import numpy as np
import pytest

from vasa_jax.data import regions, synthetic


def test_landmark_groups_are_mediapipes_lip_and_eye_contours():
    from mediapipe.python.solutions import face_mesh_connections as connections

    vertices = lambda pairs: tuple(sorted({i for pair in pairs for i in pair}))
    assert regions.LIP_POINTS == vertices(connections.FACEMESH_LIPS)
    assert regions.RIGHT_EYE_POINTS == vertices(connections.FACEMESH_RIGHT_EYE)
    assert regions.LEFT_EYE_POINTS == vertices(connections.FACEMESH_LEFT_EYE)


def test_dilation_grows_a_pixel_into_a_square():
    mask = np.zeros((2, 9, 9), bool)
    mask[0, 4, 4] = True
    grown = regions.dilate(mask, 2)
    assert grown[0].sum() == 25 and grown[0, 2:7, 2:7].all() and not grown[1].any()


def test_label_regions_cover_the_mouth_and_the_eyes_of_a_rendered_head():
    identity = synthetic.get_identity(3)
    states = synthetic.FrameState(mouth_open=np.array([0.0, 0.8]), eye_open=np.array([1.0, 0.0]))
    frames, labels = synthetic.render_frames(identity, states, 64, return_labels=True)
    masks = synthetic.face_regions(labels)
    assert masks.shape == (2, 64, 64, 2) and masks.dtype == np.uint8
    L = synthetic.LABELS
    mouth = np.isin(labels, [L["mouth"], L["teeth"], L["lips"]])
    eyes = np.isin(labels, [L["sclera"], L["iris"], L["eyelid"]])
    assert masks[..., 0][mouth].all() and masks[..., 1][eyes].all()
    # A region is its parts and a one-pixel rim: small next to the image, and the mouth grows as it opens.
    assert 0.005 < masks[..., 0].mean() < 0.05 and masks[1, ..., 0].sum() > masks[0, ..., 0].sum()
    rows = lambda m: np.nonzero(m.any(axis=1))[0]
    assert rows(masks[0, ..., 1]).max() < rows(masks[0, ..., 0]).min()  # the eyes are above the mouth


def test_landmark_regions_agree_with_the_renderers_on_the_same_head():
    """MediaPipe's landmarks on a rendered head give mouth and eye regions that overlap the renderer's own."""
    from vasa_jax.data import face

    identity = synthetic.get_identity(1)
    frame, labels = synthetic.render_frame(identity, synthetic.FrameState(mouth_open=0.7), 256, return_labels=True)
    with face.FaceMesh(max_faces=1) as mesh:
        (landmarks,) = mesh(frame)
    from_landmarks = regions.from_landmarks(landmarks, 64, 256)
    from_labels = synthetic.face_regions(labels[::4, ::4])  # the same frame's labels at 64 x 64
    for channel in range(2):
        a, b = from_landmarks[..., channel].astype(bool), from_labels[..., channel].astype(bool)
        assert (a & b).sum() / (a | b).sum() > 0.3, channel
    # Two separate eye regions, and the mouth region below them.
    from scipy import ndimage

    assert ndimage.label(from_landmarks[..., 1])[1] == 2
    # The layout: the open mouth's interior and the eye openings overlap the renderer's (at 128: the interior is a
    # few pixels tall at 64), and the irises sit inside the openings.
    layout = regions.layout_from_landmarks(landmarks, 128, 256).astype(bool)
    truth = synthetic.face_layout(labels[1::2, 1::2]).astype(bool)
    for channel in range(2):
        a, b = layout[..., channel], truth[..., channel]
        assert (a & b).sum() / (a | b).sum() > 0.3, channel
    assert layout[..., 2].any() and not (layout[..., 2] & ~layout[..., 1]).any()


def test_closed_mouth_and_closed_eyes_have_an_empty_layout():
    identity = synthetic.get_identity(2)
    _, labels = synthetic.render_frame(identity, synthetic.FrameState(mouth_open=0.0, eye_open=0.0), 64,
                                       return_labels=True)
    layout = synthetic.face_layout(labels)
    assert layout.shape == (64, 64, 3) and layout.sum() == 0
    _, labels = synthetic.render_frame(identity, synthetic.FrameState(mouth_open=0.9), 64, return_labels=True)
    assert synthetic.face_layout(labels).sum(axis=(0, 1)).min() > 0


@pytest.mark.parametrize("size", [32, 128])
def test_landmark_regions_scale_with_the_crop(size):
    landmarks = np.zeros((478, 3), np.float32)
    landmarks[:, :2] = 128.0  # everything at the centre of a 256 crop ...
    for i, point in enumerate(regions.LIP_POINTS):  # ... but the lips: a ring of radius 32 around (128, 180)
        angle = 2 * np.pi * i / len(regions.LIP_POINTS)
        landmarks[point, :2] = (128 + 32 * np.cos(angle), 180 + 32 * np.sin(angle))
    mouth = regions.from_landmarks(landmarks, size, 256)[..., 0]
    ys, xs = np.nonzero(mouth)
    scale = size / 256
    assert abs(xs.mean() + 0.5 - 128 * scale) <= 1 and abs(ys.mean() + 0.5 - 180 * scale) <= 1
    radius, rim = 32 * scale, regions.dilation_pixels(size)
    assert np.pi * radius**2 < mouth.sum() < np.pi * (radius + 2 * rim) ** 2  # the polygon plus its dilated rim
