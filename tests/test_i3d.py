"""FVD's network (issue 13): the Flax I3D against a PyTorch InceptionI3d of the layout of `i3d_pretrained_400.pt`
(written for this test, random weights and BatchNorm statistics, saved as a state dict, imported), and FVD's
features of real videos."""

import math
import os

import jax
import numpy as np
import pytest

from test_syncnet import randomise_statistics
from vasa_jax import video_metrics
from vasa_jax.models import i3d

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn


def _same_pads(sizes, window, strides):
    """The port's padding (TensorFlow SAME), in F.pad's order (last dimension first)."""
    pads = []
    for size, k, s in zip(sizes, window, strides):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads.append((total // 2, total - total // 2))
    return [p for pair in reversed(pads) for p in pair]


class TorchUnit3D(nn.Module):
    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, bias=False, relu=True):
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x):
        x = self.conv3d(F.pad(x, _same_pads(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class TorchPool(nn.MaxPool3d):
    def forward(self, x):
        return super().forward(F.pad(x, _same_pads(x.shape[2:], self.kernel_size, self.stride)))


class TorchInception(nn.Module):
    def __init__(self, cin, c):
        super().__init__()
        self.b0 = TorchUnit3D(cin, c[0])
        self.b1a, self.b1b = TorchUnit3D(cin, c[1]), TorchUnit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = TorchUnit3D(cin, c[3]), TorchUnit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = TorchPool((3, 3, 3), (1, 1, 1)), TorchUnit3D(cin, c[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class TorchI3D(nn.Module):
    """The published layout: module names as the checkpoint's keys, logits averaged over time as FVD ports do."""

    def __init__(self):
        super().__init__()
        self.Conv3d_1a_7x7 = TorchUnit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = TorchPool((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = TorchUnit3D(64, 64)
        self.Conv3d_2c_3x3 = TorchUnit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = TorchPool((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = TorchInception(192, [64, 96, 128, 16, 32, 32])
        self.Mixed_3c = TorchInception(256, [128, 128, 192, 32, 96, 64])
        self.MaxPool3d_4a_3x3 = TorchPool((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = TorchInception(480, [192, 96, 208, 16, 48, 64])
        self.Mixed_4c = TorchInception(512, [160, 112, 224, 24, 64, 64])
        self.Mixed_4d = TorchInception(512, [128, 128, 256, 24, 64, 64])
        self.Mixed_4e = TorchInception(512, [112, 144, 288, 32, 64, 64])
        self.Mixed_4f = TorchInception(528, [256, 160, 320, 32, 128, 128])
        self.MaxPool3d_5a_2x2 = TorchPool((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = TorchInception(832, [256, 160, 320, 32, 128, 128])
        self.Mixed_5c = TorchInception(832, [384, 192, 384, 48, 128, 128])
        self.avg_pool = nn.AvgPool3d((2, 7, 7), (1, 1, 1))
        self.logits = TorchUnit3D(1024, 400, bn=False, bias=True, relu=False)

    def forward(self, x):
        for name, module in self.named_children():
            if name not in ("avg_pool", "logits"):
                x = module(x)
        return self.logits(self.avg_pool(x)).squeeze(3).squeeze(3).mean(dim=2)


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    torch.manual_seed(0)
    network = TorchI3D()
    with torch.no_grad():  # He-scaled weights keep the activations O(1) through 40 layers
        for name, tensor in network.state_dict().items():
            if name.endswith("conv3d.weight"):
                tensor.copy_(torch.randn(tensor.shape) * math.sqrt(2.0 / tensor[0].numel()))
    randomise_statistics(network)
    path = str(tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt")
    torch.save(network.state_dict(), path)
    return network, i3d.load_i3d(path)


def test_i3d_matches_the_published_layout(imported):
    """Odd and even clip lengths (the SAME padding differs) through the whole network, within 1e-4."""
    network, variables = imported
    rng = np.random.default_rng(0)
    model = i3d.InceptionI3d()
    forward = jax.jit(model.apply)
    for frames in (9, 12):
        video = rng.uniform(-1, 1, size=(2, frames, i3d.INPUT_SIZE, i3d.INPUT_SIZE, 3)).astype(np.float32)
        with torch.no_grad():
            reference = network(torch.from_numpy(video).permute(0, 4, 1, 2, 3).contiguous()).numpy()
        logits = np.asarray(forward(variables, video))
        assert logits.shape == (2, i3d.NUM_CLASSES)
        assert np.std(reference) > 0.1  # the random network does not collapse
        assert relative_error(logits, reference) < 1e-4


def test_a_missing_or_foreign_weights_file_is_one_clear_error(imported, tmp_path):
    with pytest.raises(FileNotFoundError, match="i3d_pretrained_400.pt"):
        i3d.load_i3d(str(tmp_path / "absent.pt"))
    network, _ = imported
    torch.save({k: v for k, v in network.state_dict().items() if not k.startswith("logits")}, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"cannot import I3D.*\n  missing \(2\): params/logits/conv3d/bias"):
        i3d.load_i3d(str(tmp_path / "cut.pt"))
    with pytest.raises(ValueError, match="T >= 9"):
        i3d.InceptionI3d().apply(imported[1], np.zeros((1, 8, 224, 224, 3), np.float32))


MEDIA = os.environ.get("VASA_MEDIA_DIR")


def test_fvd_clips_resize_as_the_pytorch_ports_do():
    """Clips of 25 consecutive frames (the tail left out), the shorter side resized to 224 as F.interpolate
    (bilinear, align_corners=False) does, centre-cropped, in [-1, 1]."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(53, 120, 160, 3), dtype=np.uint8)
    clips = video_metrics.fvd_clips(frames)
    assert clips.shape == (2, 25, 224, 224, 3) and clips.dtype == np.float32
    video = torch.from_numpy(frames[25:50]).permute(0, 3, 1, 2).float() / 255.0
    resized = F.interpolate(video, size=(224, math.ceil(160 * 224 / 120)), mode="bilinear", align_corners=False)
    left = (resized.shape[-1] - 224) // 2
    reference = (resized[..., left : left + 224] * 2 - 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(clips[1], reference, atol=1e-5)
    assert len(video_metrics.fvd_clips(frames[:24])) == 0


@pytest.fixture(scope="module")
def real_clip_features(imported):
    """The test-built I3D's logits of the 25-frame clips of the first 3 s of four shared real videos (12 clips)."""
    from vasa_jax import video

    _, variables = imported
    features = {}
    for name in ("liveportrait_d0", "liveportrait_d6", "real3dportrait_May_5s", "sadtalker_WDA_KatieHill_000"):
        frames = np.stack(list(video.iter_video_frames(os.path.join(MEDIA, "video", name + ".mp4"))))[:75]
        features[name] = (frames, video_metrics.fvd_features(variables, frames))
    return features


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real videos)")
def test_fvd_of_real_videos_is_zero_against_themselves_and_grows_with_noise(imported, real_clip_features):
    """FVD_25 from real videos' frames: a set against itself is 0; the same videos with Gaussian pixel noise move
    further the more noise there is; the set's two halves are closer to each other than to the noisier set."""
    _, variables = imported
    frames = {name: pair[0] for name, pair in real_clip_features.items()}
    real = np.concatenate([pair[1] for pair in real_clip_features.values()])
    assert real.shape[1] == i3d.NUM_CLASSES and len(real) == 12
    assert abs(video_metrics.frechet_distance(real, real)) < 1e-5 * np.trace(np.cov(real, rowvar=False))  # sqrtm of a rank-11 product
    rng = np.random.default_rng(0)
    distances = []
    for sigma in (16.0, 64.0):
        noisy = np.concatenate([
            video_metrics.fvd_features(variables, np.clip(f + rng.normal(0, sigma, f.shape), 0, 255).astype(np.uint8))
            for f in frames.values()])
        distances.append(video_metrics.frechet_distance(noisy, real))
    assert 0 < distances[0] < distances[1], distances
    rows = video_metrics.fvd_of_sets(None, real)
    assert 0 < rows["fvd"]["real"] < distances[1] and "generated" not in rows["fvd"]
    assert "at least 4 clips" in video_metrics.fvd_of_sets(real[:1], real[:3])["skipped"]["real"]


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real videos)")
def test_the_videos_command_reports_fvd_or_why_not(imported, tmp_path):
    """`evaluate videos --i3d=...`: FVD_25 of the generated set against the real one in the summary and the table
    (2 clips per set), clip counts per video; the real row too short for its split-half floor says why; without
    --i3d every row says how to get FVD."""
    from vasa_jax import audio, evaluate, video

    network, _ = imported
    weights = str(tmp_path / "i3d_pretrained_400.pt")
    torch.save(network.state_dict(), weights)
    for folder, name in (("generated", "real3dportrait_May_5s.mp4"), ("real", "liveportrait_d6.mp4")):
        source = os.path.join(MEDIA, "video", name)
        frames = np.stack(list(video.iter_video_frames(source)))[:50]
        os.makedirs(tmp_path / folder)
        video.write_mp4(tmp_path / folder / "clip.mp4", frames, audio=audio.load_audio(source)[: 50 * 640])
    report = evaluate.evaluate_videos(str(tmp_path / "generated"), str(tmp_path / "real"), i3d_path=weights,
                                      log=lambda *_: None)
    assert report["generated"]["summary"]["fvd"] > 0 and report["generated"]["summary"]["fvd_clips"] == 2
    assert report["real"]["summary"]["skipped"]["fvd"].startswith("FVD needs a --real set of at least 4 clips")
    (metrics,) = report["generated"]["videos"].values()
    assert metrics["fvd_clips"] == 2
    assert "FVD_25" in report["table"].splitlines()[0]
    assert f"{report['generated']['summary']['fvd']:10.3f}" in report["table"].splitlines()[1]
    report = evaluate.evaluate_videos(str(tmp_path / "generated"), log=lambda *_: None)
    assert report["generated"]["summary"]["skipped"]["fvd"] == "no I3D weights given (--i3d=i3d_pretrained_400.pt)"
