"""Video metrics (issue 13): SyncNet in Flax against a PyTorch network of the published syncnet_v2 layout (random
weights, saved as a state dict, imported), its MFCCs against the reference implementation, the LSE computation on
embeddings with a known offset, the whole SyncNet path on a real video, delta-P, CSIM, and the `evaluate videos`
command."""

import os

import jax
import numpy as np
import pytest

from vasa_jax import video_metrics
from vasa_jax.models import syncnet

torch = pytest.importorskip("torch")
nn = torch.nn


def _conv_block(conv, norm_type, channels, pool=None):
    layers = [conv, norm_type(channels), nn.ReLU()]
    return layers + ([pool] if pool is not None else [])


class TorchSyncNet(nn.Module):
    """The published layout (module indices as in syncnet_v2.model's keys), written for this test."""

    def __init__(self):
        super().__init__()
        b2, b3 = nn.BatchNorm2d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(
            *_conv_block(nn.Conv2d(1, 64, 3, padding=1), b2, 64, nn.MaxPool2d(1, 1)),
            *_conv_block(nn.Conv2d(64, 192, 3, padding=1), b2, 192, nn.MaxPool2d(3, (1, 2))),
            *_conv_block(nn.Conv2d(192, 384, 3, padding=1), b2, 384),
            *_conv_block(nn.Conv2d(384, 256, 3, padding=1), b2, 256),
            *_conv_block(nn.Conv2d(256, 256, 3, padding=1), b2, 256, nn.MaxPool2d(3, 2)),
            *_conv_block(nn.Conv2d(256, 512, (5, 4)), b2, 512),
        )
        self.netcnnlip = nn.Sequential(
            *_conv_block(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), b3, 96, nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_block(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), b3, 256,
                         nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3, 256),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3, 256),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3, 256,
                         nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_block(nn.Conv3d(256, 512, (1, 6, 6)), b3, 512),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))

    def forward_aud(self, x):
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x):
        return self.netfclip(self.netcnnlip(x).flatten(1))


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def randomise_statistics(network):
    """BatchNorm statistics, affine terms and biases random, so a swapped or unread one shows in a parity test."""
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape))
            elif name.endswith(("running_mean", "bias")) or (name.endswith("weight") and tensor.ndim == 1):
                tensor.copy_(0.1 * torch.randn(tensor.shape) + (1.0 if name.endswith("weight") else 0.0))
    network.eval()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    torch.manual_seed(0)
    network = TorchSyncNet()
    randomise_statistics(network)
    path = str(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model")
    torch.save(network.state_dict(), path)
    return network, syncnet.load_syncnet(path)


def test_both_towers_match_the_published_layout(imported):
    network, variables = imported
    rng = np.random.default_rng(0)
    mfcc = rng.normal(size=(3, syncnet.NUM_MFCC, syncnet.MFCC_STEPS)).astype(np.float32)
    frames = rng.uniform(0, 255, size=(2, syncnet.NUM_FRAMES, syncnet.CROP_SIZE, syncnet.CROP_SIZE, 3))
    frames = frames.astype(np.float32)
    with torch.no_grad():
        reference_audio = network.forward_aud(torch.from_numpy(mfcc)[:, None]).numpy()
        reference_lips = network.forward_lip(torch.from_numpy(frames).permute(0, 4, 1, 2, 3).contiguous()).numpy()
    model = syncnet.SyncNet()
    audio = jax.jit(lambda v, x: model.apply(v, x, method="embed_audio"))(variables, mfcc)
    lips = jax.jit(lambda v, x: model.apply(v, x, method="embed_lips"))(variables, frames)
    assert audio.shape == (3, syncnet.EMBEDDING_DIM) and lips.shape == (2, syncnet.EMBEDDING_DIM)
    assert relative_error(audio, reference_audio) < 1e-4
    assert relative_error(lips, reference_lips) < 1e-4


def test_a_missing_or_foreign_weights_file_is_one_clear_error(imported, tmp_path):
    with pytest.raises(FileNotFoundError, match="syncnet_v2.model"):
        syncnet.load_syncnet(str(tmp_path / "absent.model"))
    network, _ = imported
    state = {k: v for k, v in network.state_dict().items() if not k.startswith("netfclip")}
    torch.save(state, tmp_path / "partial.model")
    with pytest.raises(ValueError, match=r"cannot import SyncNet.*\n  missing \(8\): params/netfclip_0"):
        syncnet.load_syncnet(str(tmp_path / "partial.model"))


def _reference_distances(video, audio, max_offset):
    """The reference evaluation's loop, written out: audio padded with zero rows, one window of 2K + 1 per frame."""
    padded = np.concatenate([np.zeros((max_offset, audio.shape[1])), audio, np.zeros((max_offset, audio.shape[1]))])
    rows = []
    for i in range(len(video)):
        window = padded[i : i + 2 * max_offset + 1]
        rows.append([np.sqrt(np.sum((video[i] - w + 1e-6) ** 2)) for w in window])
    return np.array(rows)


@pytest.mark.parametrize("shift", [-4, 0, 3])
def test_lse_recovers_a_known_offset(shift):
    """Audio window i + shift carries the embedding of video window i (plus noise): the distances equal the
    reference loop's, the offset found is -shift, LSE-D is far below the unmatched distances and LSE-C clearly
    positive; with the audio shuffled, the confidence collapses."""
    rng = np.random.default_rng(shift + 10)
    length, dim, k = 60, 32, video_metrics.MAX_OFFSET
    base = rng.normal(size=(length + 2 * k, dim))
    video = base[k : k + length]
    audio = base[k - shift : k - shift + length] + 0.05 * rng.normal(size=(length, dim))
    distances = video_metrics.sync_distances(video, audio)
    np.testing.assert_allclose(distances, _reference_distances(video, audio, k), rtol=1e-12)
    scores = video_metrics.lse(distances)
    assert scores["offset"] == -shift
    # Matched windows sit the noise apart (0.05 sqrt(32) = 0.28), unmatched ones about sqrt(2 * 32) = 8; the few
    # frames whose partner falls past the clip's ends raise the minimum's mean a little.
    assert scores["lse_d"] < 0.1 * np.median(distances.mean(axis=0))
    assert scores["lse_c"] > 5.0
    shuffled = video_metrics.lse(video_metrics.sync_distances(video, audio[rng.permutation(length)]))
    assert shuffled["lse_c"] < 0.2 * scores["lse_c"]
    with pytest.raises(ValueError, match="one shape"):
        video_metrics.sync_distances(video, audio[:-1])


def test_a_safetensors_copy_imports_the_same(imported, tmp_path):
    """The importer reads a safetensors copy of the same keys too, to the same arrays."""
    from vasa_jax.models.torch_import import save_safetensors

    network, variables = imported
    path = tmp_path / "syncnet_v2.safetensors"
    save_safetensors(path, {k: v.numpy() for k, v in network.state_dict().items()})
    again = syncnet.load_syncnet(str(path))
    jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_mfcc_matches_the_reference_implementation():
    """SyncNet's audio features: our MFCCs against python_speech_features (what the reference evaluation calls) on
    the 16-bit PCM of a modulated tone in noise with a stretch of digital silence; and the 20-step windows cut
    per frame."""
    reference = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.normal(size=t.shape))
    speech[8000:9000] = 0.0  # silence: the reference's eps substitution
    pcm = np.round(speech * 32767).astype(np.int16)
    ours = video_metrics.syncnet_mfcc(pcm.astype(np.float64) / 32768.0)
    theirs = reference.mfcc(pcm, 16000)
    assert ours.shape == theirs.shape == (199, 13)  # 1 + ceil((32000 - 400) / 160) frames
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    windows = video_metrics.audio_windows(ours, 45)
    assert windows.shape == (45, 13, 20)
    np.testing.assert_allclose(windows[7], ours[28:48].T, rtol=1e-6)
    with pytest.raises(ValueError, match="46 windows need 200 MFCC steps, the audio gives 199"):
        video_metrics.audio_windows(ours, 46)


MEDIA = os.environ.get("VASA_MEDIA_DIR")


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real videos)")
def test_the_syncnet_path_runs_on_a_real_video(imported):
    """A real talking-head video with its own speech -> face crops -> both towers -> LSE. The crops hold the
    face, centred, forehead to chin inside; the first windows' embeddings equal the PyTorch network's on the
    same BGR windows and on the reference MFCCs of the clip's 16-bit PCM; the scores are finite."""
    from vasa_jax import audio, video
    from vasa_jax.data import face

    network, variables = imported
    path = os.path.join(MEDIA, "video", "real3dportrait_May_5s.mp4")
    frames = np.stack(list(video.iter_video_frames(path)))[:40]
    speech = audio.load_audio(path)[: 40 * 640]
    crops = video_metrics.syncnet_face_crops(frames)
    assert crops.shape == (40, syncnet.CROP_SIZE, syncnet.CROP_SIZE, 3) and crops.dtype == np.uint8
    with face.FaceMesh(max_faces=1) as mesh:
        landmarks = mesh(crops[0])[0]
    height = landmarks[:, 1] / syncnet.CROP_SIZE  # (measured: forehead 0.02, mouth 0.47, chin 0.71)
    assert abs(landmarks[face.NOSE_TIP, 0] / syncnet.CROP_SIZE - 0.5) < 0.1
    assert 0 < height[face.FOREHEAD] < height[face.LIP_INNER_TOP] < height[face.CHIN] < 1

    lips, sound = video_metrics.syncnet_embeddings(variables, crops, speech, batch_size=8)
    assert lips.shape == sound.shape == (35, syncnet.EMBEDDING_DIM)
    reference = pytest.importorskip("python_speech_features")
    pcm = np.round(np.clip(speech, -1, 1 - 1 / 32768) * 32768).astype(np.int16)
    mfcc = reference.mfcc(pcm, 16000).T.astype(np.float32)  # [13, N], as the reference stacks it
    bgr = torch.from_numpy(crops[:7, ..., ::-1].astype(np.float32).copy())
    with torch.no_grad():
        windows = torch.stack([bgr[i : i + 5] for i in range(2)]).permute(0, 4, 1, 2, 3)
        np.testing.assert_allclose(lips[:2], network.forward_lip(windows).numpy(), rtol=1e-3, atol=1e-3)
        audio_windows = torch.from_numpy(np.stack([mfcc[:, 4 * i : 4 * i + 20] for i in range(2)]))[:, None]
        np.testing.assert_allclose(sound[:2], network.forward_aud(audio_windows).numpy(), rtol=1e-3, atol=1e-3)
    scores = video_metrics.lse(video_metrics.sync_distances(lips, sound))
    assert np.isfinite(scores["lse_d"]) and np.isfinite(scores["lse_c"]) and abs(scores["offset"]) <= 15


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real videos)")
def test_pose_variation_of_a_real_video_against_the_same_held_still():
    """delta-P from the frames: a real talking head moves (well above 0 degrees per frame); the same video with its
    first frame held still does not."""
    from vasa_jax import video

    path = os.path.join(MEDIA, "video", "sadtalker_WDA_KatieHill_000.mp4")
    frames = np.stack(list(video.iter_video_frames(path)))[:50]
    moving = video_metrics.pose_variation(video_metrics.face_landmarks(frames))
    still = video_metrics.pose_variation(video_metrics.face_landmarks(np.repeat(frames[:1], 50, axis=0)))
    assert moving > 0.2 and still < 0.1 * moving, (moving, still)


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real videos)")
def test_the_videos_command_reports_every_metric_or_why_not(imported, tmp_path):
    """`python -m vasa_jax.evaluate videos` on short clips of two real videos (as "generated" and "real"), with the
    test-built SyncNet: per-video and mean LSE, offset and delta-P in the JSON report and the table; CSIM skipped
    with its reason (no ArcFace given); a SyncNet path that does not exist is a reason too, not a crash."""
    import json
    import subprocess
    import sys

    from vasa_jax import audio, video

    network, _ = imported
    weights = str(tmp_path / "syncnet_v2.model")
    torch.save(network.state_dict(), weights)
    for folder, name in (("generated", "real3dportrait_May_5s.mp4"), ("real", "sadtalker_WDA_KatieHill_000.mp4")):
        source = os.path.join(MEDIA, "video", name)
        frames = np.stack(list(video.iter_video_frames(source)))[:30]
        os.makedirs(tmp_path / folder)
        video.write_mp4(tmp_path / folder / "clip.mp4", frames, audio=audio.load_audio(source)[: 30 * 640])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The "generated" clip's sidecar, as the generation command writes it: a requested gaze 5 degrees (theta) from
    # the clip's own main gaze, a distance without paste-back.
    from vasa_jax.data import face
    from vasa_jax.data.prepare import main_gaze

    clip = np.stack(list(video.iter_video_frames(tmp_path / "generated" / "clip.mp4")))
    landmarks = [lm for lm in video_metrics.face_landmarks(clip) if lm is not None]
    theta, phi = main_gaze(np.stack([face.gaze_angles(lm) for lm in landmarks]))
    with open(str(tmp_path / "generated" / "clip.mp4") + ".json", "w") as fh:
        json.dump({"gaze": [float(theta) + 5.0, float(phi)], "distance": 1.0, "paste_back": False}, fh)

    def run(syncnet_weights):
        out = str(tmp_path / "report.json")
        result = subprocess.run(
            [sys.executable, "-m", "vasa_jax.evaluate", "videos", f"--generated={tmp_path / 'generated'}",
             f"--real={tmp_path / 'real' / '*.mp4'}", f"--out={out}", f"--syncnet={syncnet_weights}"],
            cwd=root, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return json.load(open(out)), result.stdout

    report, stdout = run(weights)
    for row in ("generated", "real"):
        (metrics,) = report[row]["videos"].values()
        assert metrics["frames"] == 30 and metrics["faces_found"] == 30
        assert np.isfinite(metrics["lse_d"]) and abs(metrics["offset"]) <= 15 and metrics["pose_variation"] > 0
        assert metrics["skipped"]["csim"] == "no ArcFace weights given (--arcface=an iresnet state dict)"
        assert report[row]["summary"]["lse_c"] == metrics["lse_c"]
    assert "S_C" in stdout and "generated" in stdout and "n/a" in stdout
    assert "no generation sidecar" in report["real"]["videos"][str(tmp_path / "real" / "clip.mp4")]["skipped"][
        "controls"]
    generated = report["generated"]["videos"][str(tmp_path / "generated" / "clip.mp4")]
    from vasa_jax.evaluate import angular_error_degrees

    expected = angular_error_degrees(np.array([[theta + 5.0, phi]]), np.array([[theta, phi]]))[0]  # about 5
    assert generated["gaze_error"] == pytest.approx(expected, abs=1e-3)
    assert generated["skipped"]["distance_error"].startswith("the head distance is relative to the whole photo")

    report, _ = run(str(tmp_path / "absent.model"))
    (metrics,) = report["generated"]["videos"].values()
    assert metrics["skipped"]["lse"].startswith("SyncNet weights: weights file not found")
    assert "lse_d" not in metrics and np.isfinite(metrics["pose_variation"])


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real photos)")
def test_csim_is_one_for_the_reference_itself_and_lower_for_another_face():
    """CSIM's path (our framing's crop, ArcFace's aligned square, cosine of embeddings) with a random iresnet-18:
    frames that are the reference score 1; another person's photo scores less."""
    import cv2

    from vasa_jax.models import arcface

    def photo(name):
        image = cv2.imread(os.path.join(MEDIA, "images", name))[:, :, ::-1]
        return np.ascontiguousarray(cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA))

    params = arcface.init_arcface_params(jax.random.key(0), 18)
    reference, other = photo("hallo_ref6.jpg"), photo("real3dportrait_Macron.png")
    landmarks = video_metrics.face_landmarks(np.stack([reference, other]))
    same = video_metrics.identity_similarity(params, 18, reference, np.stack([reference, reference]),
                                             [landmarks[0], landmarks[0]], landmarks[0])
    different = video_metrics.identity_similarity(params, 18, reference, other[None], [landmarks[1]], landmarks[0])
    assert abs(same - 1.0) < 1e-5 and different < same - 1e-3, (same, different)


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real videos)")
def test_control_errors_are_zero_for_what_the_video_shows():
    """E_g is about 0 when the requested gaze is the video's measured main gaze and grows with the request's
    offset; E_d, on the whole frame (a pasted-back video), is 0 for the measured distance and its offset
    otherwise."""
    from vasa_jax import video

    frames = np.stack(list(video.iter_video_frames(os.path.join(MEDIA, "video", "real3dportrait_May_5s.mp4"))))[:50]
    landmarks = video_metrics.face_landmarks(frames)
    measured, _ = video_metrics.control_errors(landmarks, frames.shape[1],
                                               {"gaze": [0.0, 0.0], "distance": 0.0, "paste_back": True})
    theta, phi = measured["gaze_measured"]
    distance = measured["distance_measured"]
    exact, skipped = video_metrics.control_errors(
        landmarks, frames.shape[1], {"gaze": [theta, phi], "distance": distance, "paste_back": True})
    assert not skipped and exact["gaze_error"] < 1e-3 and exact["distance_error"] < 1e-9
    off, _ = video_metrics.control_errors(
        landmarks, frames.shape[1], {"gaze": [theta, phi + 10.0], "distance": distance + 0.2, "paste_back": True})
    assert off["gaze_error"] == pytest.approx(10.0, abs=0.5) and off["distance_error"] == pytest.approx(0.2)


def test_frechet_distance_is_zero_for_a_set_against_itself_and_grows_with_noise():
    """FVD's distance on features: about 0 for a set against itself, the closed form for diagonal covariances,
    and growing with the noise added to one set."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    assert abs(video_metrics.frechet_distance(features, features)) < 1e-6
    a = rng.normal(size=(5000, 4)) * [1.0, 2.0, 0.5, 1.0]
    b = rng.normal(size=(5000, 4)) * [2.0, 1.0, 0.5, 3.0] + [1.0, 0.0, 0.0, -1.0]
    var_a, var_b = a.var(axis=0, ddof=1), b.var(axis=0, ddof=1)  # (the sample covariances are nearly diagonal)
    closed = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert video_metrics.frechet_distance(a, b) == pytest.approx(closed, rel=0.02)
    noisy = [video_metrics.frechet_distance(features, features + rng.normal(scale=s, size=features.shape))
             for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(x < y for x, y in zip(noisy, noisy[1:])) and noisy[0] > 0
    with pytest.raises(ValueError, match="one D"):
        video_metrics.frechet_distance(features, features[:, :3])
