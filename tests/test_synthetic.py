"""Tests of the procedural synthetic talking-heads dataset (pure numpy, fast)."""

import dataclasses
import pickle

import numpy as np
import pytest

from vasa_jax.data import synthetic as S

L = S.LABELS
HEAD_LABELS = [L[k] for k in ("skin", "hair", "sclera", "iris", "mouth", "teeth", "lips", "brow", "nose",
                              "ear", "eyelid")]
FACE_LABELS = [L[k] for k in ("skin", "sclera", "iris", "mouth", "teeth", "lips", "brow", "nose", "eyelid")]


def _light_skinned_identity():
    for i in range(50):
        ident = S.sample_identity(i)
        if ident.skin_rgb.mean() > 0.6 and ident.has_hair:
            return ident
    raise AssertionError("no light-skinned identity among the first 50")


def _labels(ident, res=128, **state):
    return S.render_frame(ident, S.FrameState(**state), res, return_labels=True)


def _centroid_x(mask):
    return np.nonzero(mask)[1].mean()


def _eye_areas(lab):
    """Visible eye area (sclera + iris pixels) of the image-left and image-right eye."""
    ys, xs = np.nonzero(np.isin(lab, [L["sclera"], L["iris"]]))
    order = np.sort(np.unique(xs))
    split = order[np.argmax(np.diff(order))] + 0.5  # the largest gap between columns separates the eyes
    return int((xs < split).sum()), int((xs > split).sum())


def test_determinism():
    a, b = S.sample_identity(7), S.sample_identity(7)
    ca, cb = S.make_clip(3, a, 30), S.make_clip(3, b, 30)
    np.testing.assert_array_equal(ca.audio, cb.audio)
    for field in ("yaw", "pitch", "roll", "tx", "ty", "scale", "gaze_theta", "gaze_phi", "eye_open",
                  "mouth_open", "emotion"):
        np.testing.assert_array_equal(getattr(ca.states, field), getattr(cb.states, field))
    np.testing.assert_array_equal(S.render_clip(ca, 64)[::7], S.render_clip(cb, 64)[::7])
    # Different clip seeds give different motion and audio.
    cc = S.make_clip(4, a, 30)
    assert not np.array_equal(ca.audio, cc.audio)
    assert not np.array_equal(ca.states.yaw, cc.states.yaw)


def test_identities_differ():
    imgs = [S.render_frame(S.sample_identity(i), S.FrameState(), 64).astype(np.float32) for i in range(6)]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 10.0, (i, j)
    # Also within the face alone (not just the background).
    a, b = S.sample_identity(0), S.sample_identity(1)
    assert not np.allclose(a.head_radii, b.head_radii)
    assert a.eye_spacing != b.eye_spacing and a.mouth_width != b.mouth_width


def test_yaw_is_a_3d_rotation():
    ident = S.sample_identity(1)
    _, front = _labels(ident)
    _, right = _labels(ident, yaw=30.0)  # face turns towards image +x
    _, left = _labels(ident, yaw=-30.0)
    _, shifted = _labels(ident, tx=0.25)  # a pure 2D shift for comparison

    def nose_offset(lab):
        head = np.isin(lab, HEAD_LABELS)
        return _centroid_x(lab == L["nose"]) - _centroid_x(head)

    # The nose moves across the head silhouette under yaw; a 2D shift keeps it where it was.
    assert abs(nose_offset(front)) < 2.0
    assert abs(nose_offset(shifted) - nose_offset(front)) < 1.5
    assert nose_offset(right) > 8.0
    assert nose_offset(left) < -8.0
    # The eye on the far side is foreshortened (smaller visible area), the near one is not.
    fl, fr = _eye_areas(front)
    rl, rr = _eye_areas(right)
    ll, lr = _eye_areas(left)
    assert 0.8 < fl / fr < 1.25
    assert rr < 0.75 * rl
    assert ll < 0.75 * lr
    sl, sr = _eye_areas(shifted)
    assert abs(sl - fl) <= 0.1 * fl and abs(sr - fr) <= 0.1 * fr
    # Under a strong yaw the ear of the near side becomes more visible (for a short-haired head).
    bald = next(S.sample_identity(i) for i in range(100) if S.sample_identity(i).hair_side > 0.1)
    _, b_front = _labels(bald)
    _, b_side = _labels(bald, yaw=-60.0)
    assert (b_side == L["ear"]).sum() > (b_front == L["ear"]).sum()


def test_mouth_open_monotonic():
    ident = _light_skinned_identity()
    counts, dark = [], []
    box = None
    for m in (0.0, 0.25, 0.5, 0.75, 1.0):
        img, lab = _labels(ident, mouth_open=m)
        counts.append(int(np.isin(lab, [L["mouth"], L["teeth"]]).sum()))
        if box is None:
            _, lab1 = _labels(ident, mouth_open=1.0)
            ys, xs = np.nonzero(np.isin(lab1, [L["mouth"], L["teeth"], L["lips"]]))
            box = (slice(ys.min() - 2, ys.max() + 3), slice(xs.min() - 2, xs.max() + 3))
        dark.append(int((img[box].max(axis=-1) < 80).sum()))
    assert all(b > a for a, b in zip(counts, counts[1:])), counts
    assert all(b > a for a, b in zip(dark, dark[1:])), dark
    assert counts[0] < 0.15 * counts[-1]


def test_blink_hides_the_eyes():
    ident = S.sample_identity(2)
    visible = []
    for e in (1.0, 0.6, 0.3, 0.0):
        img, lab = _labels(ident, eye_open=e)
        visible.append(int(np.isin(lab, [L["sclera"], L["iris"]]).sum()))
    assert all(b < a for a, b in zip(visible, visible[1:])), visible
    assert visible[-1] == 0
    # The rendered image itself loses its bright eye-white pixels.
    open_img = S.render_frame(ident, S.FrameState(eye_open=1.0), 128)
    shut_img = S.render_frame(ident, S.FrameState(eye_open=0.0), 128)
    whites = lambda im: int((im.min(axis=-1) > 200).sum())  # noqa: E731
    assert whites(shut_img) < whites(open_img)


def test_gaze_moves_the_iris():
    ident = S.sample_identity(4)

    def iris_offset(**gaze):
        _, lab = _labels(ident, **gaze)
        iris = lab == L["iris"]
        eye = np.isin(lab, [L["sclera"], L["iris"], L["eyelid"]])
        iy, ix = np.nonzero(iris)
        ey, ex = np.nonzero(eye)
        return ix.mean() - ex.mean(), iy.mean() - ey.mean()

    (xr, _), (xl, _) = iris_offset(gaze_theta=25.0), iris_offset(gaze_theta=-25.0)
    (_, yu), (_, yd) = iris_offset(gaze_phi=20.0), iris_offset(gaze_phi=-20.0)
    assert xr - xl > 1.0  # looking towards +x moves the irises right in the image
    assert yu < yd - 0.3  # looking up moves them up (smaller row index)


def test_clip_audio_and_ground_truth():
    ident = S.sample_identity(5)
    clip = S.make_clip(0, ident, 100)
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert clip.audio.shape[0] == 100 // 25 * 16000
    assert np.all(np.isfinite(clip.audio)) and np.abs(clip.audio).max() < 1.0
    mouth = clip.states.mouth_open
    np.testing.assert_array_equal(mouth, S.loudness_to_mouth_open(S.frame_loudness(clip.audio, 100, 25, 16000)))
    np.testing.assert_array_equal(clip.loudness, S.frame_loudness(clip.audio, 100))
    assert np.corrcoef(mouth, clip.loudness)[0, 1] > 0.95
    assert mouth.min() >= 0.0 and mouth.max() <= 1.0 and mouth.max() > 0.5 and mouth.min() < 0.05

    gt = clip.ground_truth()
    assert gt["pose"].shape == (100, 6) and gt["pose"].dtype == np.float32
    np.testing.assert_allclose(gt["pose"][:, 5], np.log(clip.states.scale), rtol=1e-5)
    assert gt["gaze"].shape == (100, 2) and gt["emotion"].shape == (100, 4)
    np.testing.assert_allclose(gt["emotion"].sum(-1), 1.0, rtol=1e-5)
    assert int(gt["identity"]) == 5

    long_clip = S.make_clip(1, ident, 300)  # 12 s: several blinks, bounded smooth motion
    st = long_clip.states
    assert np.abs(st.yaw).max() <= 35 and np.abs(st.pitch).max() <= 20 and np.abs(st.roll).max() <= 15
    assert np.abs(np.diff(st.yaw)).max() < 5.0  # smooth
    closed = st.eye_open < 0.05
    assert 1 <= closed.sum() and (st.eye_open == 1.0).mean() > 0.8
    assert long_clip.audio.shape[0] == 300 * 640


def test_render_resolutions_and_framing():
    ident = S.sample_identity(6)
    for res in (64, 256):
        img, lab = S.render_frame(ident, S.FrameState(), res, return_labels=True)
        assert img.shape == (res, res, 3) and img.dtype == np.uint8
        assert lab.shape == (res, res)
        top = np.nonzero(np.isin(lab, HEAD_LABELS).any(axis=1))[0].min()  # top of the hair
        chin = np.nonzero(np.isin(lab, FACE_LABELS).any(axis=1))[0].max()
        height = (chin - top + 1) / res
        assert 0.5 <= height <= 0.7, height
        cols = np.nonzero(np.isin(lab, FACE_LABELS).any(axis=0))[0]
        assert abs((cols.min() + cols.max()) / 2 / res - 0.5) < 0.05  # centred
    clip = S.make_clip(0, ident, 3)
    video = S.render_clip(clip, 64)
    assert video.shape == (3, 64, 64, 3) and video.dtype == np.uint8


def test_stage1_source():
    cfg = S.SyntheticConfig(num_identities=5, num_test_identities=3, clips_per_identity=2, frames_per_clip=20,
                            resolution=64, pairs_per_clip=4, seed=1)
    src = S.SyntheticStage1Source(cfg, "train")
    assert len(src) == 5 * 2 * 4
    item = src[len(src) - 1]
    for key in ("source", "driving", "cross"):
        assert item[key].shape == (64, 64, 3) and item[key].dtype == np.uint8, key
    for key in ("source_pose", "driving_pose", "cross_pose"):
        assert item[key].shape == (6,) and item[key].dtype == np.float32, key
    for key in ("source_gaze", "driving_gaze"):
        assert item[key].shape == (2,) and item[key].dtype == np.float32, key
    for key in ("source_eye_open", "driving_eye_open", "source_mouth_open", "driving_mouth_open"):
        assert np.shape(item[key]) == () and item[key].dtype == np.float32, key
    for key in ("identity", "cross_identity"):
        assert np.shape(item[key]) == () and item[key].dtype == np.int32, key
    assert int(item["identity"]) == 4 and int(item["cross_identity"]) != 4
    assert item["driving_regions"].shape == (64, 64, 2) and item["driving_regions"].dtype == np.uint8
    assert "extra_frames" not in item
    # Ground truth agrees with the clip the item came from.
    clip = S.get_clip(cfg, 4, 1)
    poses = S.pose_vector(clip.states)
    assert any(np.array_equal(item["source_pose"], p) for p in poses)
    # The regions are those of the driving frame.
    (driving_index,) = [i for i, p in enumerate(poses) if np.array_equal(item["driving_pose"], p)][:1]
    _, labels = S.render_frames(clip.identity, clip.states[np.array([driving_index])], 64, return_labels=True)
    np.testing.assert_array_equal(item["driving_regions"], S.face_regions(labels[0]))

    # Extra labelled frames: their labels are those of frames of the same clip, half of them blinks when the clip
    # blinks, and the pair is the same as without them.
    with_extra = S.SyntheticStage1Source(dataclasses.replace(cfg, extra_frames=4), "train")
    extra_item = with_extra[len(src) - 1]
    assert extra_item["extra_frames"].shape == (4, 64, 64, 3) and extra_item["extra_pose"].shape == (4, 6)
    assert extra_item["extra_gaze"].shape == (4, 2) and extra_item["extra_mouth_open"].shape == (4,)
    for key in item:
        np.testing.assert_array_equal(extra_item[key], item[key])
    for pose in extra_item["extra_pose"]:
        assert any(np.array_equal(pose, p) for p in poses)
    blinking = dataclasses.replace(cfg, extra_frames=4, frames_per_clip=100)
    for index in range(0, 40, 4):
        picked = S.SyntheticStage1Source(blinking, "train")[index]
        clip_eyes = S.get_clip(blinking, picked["identity"], (index // 4) % 2).states.eye_open
        if (np.asarray(clip_eyes) < 0.5).any():
            assert (picked["extra_eye_open"][:2] < 0.5).all()

    # Expression drawn independently of the clip: the source and every pose stay the clip's, the driving and extra
    # frames' mouth/eyes/gaze labels are redrawn, and the pixels are those of the redrawn state.
    redrawn = S.SyntheticStage1Source(dataclasses.replace(cfg, extra_frames=4, random_expression=1.0), "train")
    redrawn_item = redrawn[len(src) - 1]
    for key in ("source", "source_pose", "driving_pose", "source_mouth_open", "source_gaze", "extra_pose"):
        np.testing.assert_array_equal(redrawn_item[key], extra_item[key])
    changed = [not np.array_equal(redrawn_item[k], extra_item[k])
               for k in ("driving_mouth_open", "driving_gaze", "extra_mouth_open", "extra_gaze", "driving")]
    assert all(changed), changed
    drawn_state = clip.states[np.array([driving_index])].replace(
        gaze_theta=redrawn_item["driving_gaze"][None, 0], gaze_phi=redrawn_item["driving_gaze"][None, 1],
        eye_open=redrawn_item["driving_eye_open"][None], mouth_open=redrawn_item["driving_mouth_open"][None])
    np.testing.assert_array_equal(redrawn_item["driving"], S.render_frames(clip.identity, drawn_state, 64)[0])

    # Deterministic across instances, and picklable (for grain worker processes).
    again = pickle.loads(pickle.dumps(src))[len(src) - 1]
    assert set(again) == set(item)
    for key in item:
        np.testing.assert_array_equal(again[key], item[key])
    assert pickle.loads(pickle.dumps(item)).keys() == item.keys()
    with pytest.raises(IndexError):
        src[len(src)]

    # Split by identity: train and test identities are disjoint.
    test_src = S.SyntheticStage1Source(cfg, "test")
    assert len(test_src) == 3 * 2 * 4
    train_ids = set(S.identity_ids(cfg, "train").tolist())
    test_ids = set(S.identity_ids(cfg, "test").tolist())
    assert train_ids.isdisjoint(test_ids)
    t_item = test_src[0]
    assert int(t_item["identity"]) in test_ids and int(t_item["cross_identity"]) in test_ids
    assert int(src[0]["identity"]) in train_ids and int(src[0]["cross_identity"]) in train_ids


def test_grain_map_dataset():
    grain = pytest.importorskip("grain")
    cfg = S.SyntheticConfig(num_identities=3, num_test_identities=2, clips_per_identity=1, frames_per_clip=10,
                            resolution=64, pairs_per_clip=2)
    ds = grain.MapDataset.source(S.SyntheticStage1Source(cfg)).shuffle(seed=0).batch(2)
    batch = ds[0]
    assert batch["source"].shape == (2, 64, 64, 3) and batch["identity"].shape == (2,)


def test_keypoint_convention_matches_model_rotation():
    """The renderer's angles, fed to the model's rotation_matrix, give the renderer's rotation expressed in the
    warp-grid frame (y down, z away from the viewer), transposed for the row-vector convention: the synthetic
    pose labels need no conversion."""
    from vasa_jax import ops

    rng = np.random.default_rng(0)
    angles = rng.uniform(-40, 40, (16, 3))
    flip = np.diag([1.0, -1.0, -1.0])
    grid_rotation = flip @ S.head_rotation(angles[:, 0], angles[:, 1], angles[:, 2]) @ flip
    model_rotation = np.asarray(ops.rotation_matrix(angles[:, 0], angles[:, 1], angles[:, 2]))
    np.testing.assert_allclose(model_rotation, np.swapaxes(grid_rotation, -1, -2), atol=1e-5)
