"""VGG19 / ArcFace iresnet feature nets and the torch-free weight loader.

Reference networks are built here in PyTorch with the exact state-dict key
layout of torchvision's ``vgg19`` and arcface_torch's ``iresnet``, saved with
``torch.save`` and loaded back through our torch-free loader + importers.
"""

import json
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from vasa_jax.models import arcface, vgg19  # noqa: E402
from vasa_jax.models.torch_import import load_torch_state_dict, save_safetensors  # noqa: E402

torch.set_default_dtype(torch.float32)


def rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------
# torch reference networks
# ---------------------------------------------------------------------------

_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
            512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class TorchVGG19(tnn.Module):
    """Same ``features`` Sequential indexing as torchvision's vgg19."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        self.relu_index = {}  # relu{b}_{i} -> Sequential index
        b, i = 1, 0
        for v in _VGG_CFG:
            if v == "M":
                layers.append(tnn.MaxPool2d(2, 2))
                b, i = b + 1, 0
            else:
                i += 1
                layers += [tnn.Conv2d(cin, v, 3, padding=1), tnn.ReLU()]
                self.relu_index[f"relu{b}_{i}"] = len(layers) - 1
                cin = v
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Sequential(tnn.Linear(4, 2))  # tiny stand-in; must be ignored

    def forward(self, x, names):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = (x - mean) / std
        want = {self.relu_index[n]: n for n in names}
        out = {}
        for idx, layer in enumerate(self.features):
            x = layer(x)
            if idx in want:
                out[want[idx]] = x
            if len(out) == len(want):
                break
        return out


class TorchIBasicBlock(tnn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = tnn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = tnn.PReLU(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class TorchIResNet(tnn.Module):
    def __init__(self, layers, num_features=512):
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(64, eps=1e-05)
        self.prelu = tnn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = tnn.BatchNorm2d(512, eps=1e-05)
        self.dropout = tnn.Dropout(p=0.0)
        self.fc = tnn.Linear(512 * 7 * 7, num_features)
        self.features = tnn.BatchNorm1d(num_features, eps=1e-05)

    def _make_layer(self, planes, blocks):
        downsample = tnn.Sequential(tnn.Conv2d(self.inplanes, planes, 1, 2, bias=False),
                                    tnn.BatchNorm2d(planes, eps=1e-05))
        layers = [TorchIBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [TorchIBasicBlock(planes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = (x - 0.5) / 0.5
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.features(self.fc(x))


def _randomise_norms(model, gen):
    for m in model.modules():
        if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = torch.randn(c, generator=gen) * 0.1
            m.running_mean.data = torch.randn(c, generator=gen) * 0.1
            m.running_var.data = torch.rand(c, generator=gen) + 0.5
        elif isinstance(m, tnn.PReLU):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) * 0.3 + 0.1


@pytest.fixture(scope="module")
def vgg_ref(tmp_path_factory):
    torch.manual_seed(0)
    model = TorchVGG19().eval()
    for m in model.features:
        if isinstance(m, tnn.Conv2d):  # keep activations O(1) through 16 layers
            tnn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            tnn.init.normal_(m.bias, std=0.05)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def arcface_ref(tmp_path_factory):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    model = TorchIResNet(arcface.IRESNET_LAYERS[18])
    _randomise_norms(model, gen)
    model.eval()
    path = tmp_path_factory.mktemp("arcface") / "r18.pth"
    torch.save(model.state_dict(), path)
    return model, path


# ---------------------------------------------------------------------------
# VGG19
# ---------------------------------------------------------------------------

def test_vgg19_matches_torch(vgg_ref):
    model, path = vgg_ref
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    names = vgg19.DEFAULT_LAYERS
    with torch.no_grad():
        ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2)).contiguous(), names)
    params = vgg19.load_vgg19_params(path)
    out = jax.jit(vgg19.VGG19Features(layers=names).apply)(params, jnp.asarray(x))
    assert list(out) == list(names)
    for n in names:
        want = ref[n].numpy().transpose(0, 2, 3, 1)
        assert out[n].shape == want.shape, n
        assert np.linalg.norm(want) > 0, n
        assert rel_err(out[n], want) <= 1e-4, (n, rel_err(out[n], want))


def test_vgg19_layers_truncation(vgg_ref):
    _, path = vgg_ref
    params = vgg19.load_vgg19_params(path)
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (1, 16, 16, 3)), jnp.float32)
    layers = ("relu2_1", "relu1_2")
    module = vgg19.VGG19Features(layers=layers)
    out = module.apply(params, x)
    assert list(out) == list(layers)
    assert out["relu1_2"].shape == (1, 16, 16, 64) and out["relu2_1"].shape == (1, 8, 8, 128)
    full = vgg19.VGG19Features(layers=("relu1_2", "relu2_1", "relu3_1")).apply(params, x)
    np.testing.assert_allclose(out["relu2_1"], full["relu2_1"], rtol=1e-6, atol=1e-6)
    # Stops after the deepest requested layer: deeper convs are never created.
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    assert set(shapes["params"]) == {"conv1_1", "conv1_2", "conv2_1"}
    with pytest.raises(ValueError, match="relu9_9"):
        vgg19.VGG19Features(layers=("relu9_9",)).apply(params, x)


def test_vgg19_init_matches_import_structure(vgg_ref):
    _, path = vgg_ref
    imported = vgg19.load_vgg19_params(path)
    init = jax.eval_shape(vgg19.init_vgg19_params, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(imported)
    assert jax.tree_util.tree_map(lambda a: a.shape, init) == jax.tree_util.tree_map(
        lambda a: a.shape, imported)


def test_vgg19_wrong_shape_and_missing_key(vgg_ref):
    _, path = vgg_ref
    sd = load_torch_state_dict(path)
    bad = dict(sd)
    bad["features.5.weight"] = np.zeros((128, 64, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"features\.5\.weight"):
        vgg19.import_torchvision_vgg19(bad)
    bad = dict(sd)
    del bad["features.34.bias"]
    bad["features.99.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        vgg19.import_torchvision_vgg19(bad)
    assert "features.34.bias" in str(info.value) and "features.99.weight" in str(info.value)


# ---------------------------------------------------------------------------
# ArcFace iresnet
# ---------------------------------------------------------------------------

def test_arcface_matches_torch(arcface_ref):
    model, path = arcface_ref
    x = np.random.default_rng(3).uniform(0, 1, (2, 112, 112, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2)).contiguous()).numpy()
    params = arcface.load_arcface_params(path)
    assert arcface.iresnet_layers_from_params(params) == arcface.IRESNET_LAYERS[18]
    out = jax.jit(arcface.iresnet(18).apply)(params, jnp.asarray(x))
    assert out.shape == (2, 512)
    assert rel_err(out, ref) <= 1e-4, rel_err(out, ref)

    emb = jax.jit(arcface.arcface_embed, static_argnames="depth")(params, jnp.asarray(x), depth=18)
    ref_n = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    assert rel_err(emb, ref_n) <= 1e-4
    # Any input size is resized to 112x112; depth inferred from params.
    emb96 = jax.jit(arcface.arcface_embed)(params, jnp.asarray(x[:, :96, :96]))
    assert emb96.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(emb96, axis=-1), 1.0, rtol=1e-5)


def test_arcface_import_errors_and_init(arcface_ref):
    _, path = arcface_ref
    sd = load_torch_state_dict(path)
    assert "layer1.0.downsample.1.num_batches_tracked" in sd  # ignored by the importer
    bad = dict(sd)
    bad["layer2.1.prelu.weight"] = np.zeros((64,), np.float32)
    with pytest.raises(ValueError, match=r"layer2\.1\.prelu\.weight"):
        arcface.import_arcface_iresnet(bad)
    with pytest.raises(ValueError, match=r"layer1\.2\."):  # r34 expects 3 blocks in layer1
        arcface.import_arcface_iresnet(sd, depth=34)
    with pytest.raises(ValueError, match="depth"):
        arcface.import_arcface_iresnet(sd, depth=19)
    init = jax.eval_shape(lambda k: arcface.init_arcface_params(k, 18), jax.random.PRNGKey(0))
    imported = arcface.import_arcface_iresnet(sd, depth=18)
    assert jax.tree_util.tree_map(lambda a: a.shape, init) == jax.tree_util.tree_map(
        lambda a: a.shape, imported)


# ---------------------------------------------------------------------------
# loader formats and errors
# ---------------------------------------------------------------------------

def _hand_written_safetensors(path, tensors):
    """Independent minimal safetensors writer (spec: u64 header len, JSON, bytes)."""
    tags = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}
    header, blob = {"__metadata__": {"format": "pt"}}, b""
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": tags[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    hdr = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hdr)) + hdr + blob)


def test_safetensors_and_npz_round_trip(vgg_ref, tmp_path):
    _, path = vgg_ref
    sd = load_torch_state_dict(path)
    assert set(sd) == set(torch.load(path, weights_only=True))
    st = tmp_path / "vgg19.safetensors"
    save_safetensors(st, sd)
    sd2 = load_torch_state_dict(st)
    assert set(sd2) == set(sd)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and np.array_equal(sd2[k], sd[k]), k
    p1, p2 = vgg19.load_vgg19_params(path), vgg19.load_vgg19_params(st)
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, p1, p2)))

    small = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b": np.array([1.5, -2.0], np.float16), "c": np.array(7, np.int64)}
    hand = tmp_path / "small.safetensors"
    _hand_written_safetensors(hand, small)
    npz = tmp_path / "small.npz"
    np.savez(npz, **small)
    for f in (hand, npz):
        got = load_torch_state_dict(f)
        assert set(got) == set(small)
        for k, v in small.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v)


def test_legacy_torch_format(tmp_path):
    """Pre-1.6 (non-zip) torch.save stream, incl. dtypes, views and shared storage."""
    base = torch.randn(4, 5)
    sd = {"w": base.t(), "v": base[1:3, 2:], "same": base, "h": torch.ones(3, dtype=torch.float16),
          "n": torch.tensor(7), "bf": torch.full((2,), 1.5, dtype=torch.bfloat16)}
    path = tmp_path / "legacy.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    got = load_torch_state_dict(path)
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert got[k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(got[k].astype(np.float32), v.float().numpy(), err_msg=k)


def test_loader_errors(tmp_path):
    missing = tmp_path / "nope" / "vgg19.pth"
    with pytest.raises(FileNotFoundError, match="vgg19.pth"):
        load_torch_state_dict(missing)
    with pytest.raises(FileNotFoundError, match="VGG19"):
        vgg19.load_vgg19_params(missing)
    with pytest.raises(FileNotFoundError, match="iresnet"):
        arcface.load_arcface_params(tmp_path / "backbone.pth")
    not_torch = tmp_path / "plain.pkl"
    not_torch.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        load_torch_state_dict(not_torch)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"hello world, not weights")
    with pytest.raises(ValueError, match="unrecognised"):
        load_torch_state_dict(garbage)
    pickled_module = tmp_path / "module.pth"
    torch.save(tnn.Linear(2, 2), pickled_module)
    with pytest.raises(ValueError, match="state_dict"):
        load_torch_state_dict(pickled_module)
