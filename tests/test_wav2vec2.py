"""Wav2Vec2 port against Hugging Face `transformers.Wav2Vec2Model`, for both layouts.

Tiny random models (hidden 32, 2 layers) keep compile time low; their norms and biases are randomised too, so a
wrong epsilon, a missing bias or a mixed-up LayerNorm position shows up. Each is saved twice: by `save_pretrained`
(safetensors, bare keys, weight norm as parametrizations) and as a `Wav2Vec2ForCTC`-style `pytorch_model.bin`
(`wav2vec2.` prefix, legacy `weight_g` / `weight_v`, an extra head key), which must import to the same params.
"""

import functools
import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vasa_jax.audio import SAMPLE_RATE, make_audio_encoder, normalize_waveform, num_video_frames  # noqa: E402
from vasa_jax.models import wav2vec2 as w2v  # noqa: E402

# Three convs with the released models' total stride (320 samples: 50 Hz at 16 kHz) and a 325-sample receptive
# field, so the 50 Hz -> 25 fps resampling is exercised at its real ratio.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            conv_dim=(16, 16, 16), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
VARIANTS = {
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
    "stable": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}


def rel_err(a, b) -> float:
    """max |a - b| relative to max |b|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _legacy_state_dict(model) -> dict:
    """The model's state dict as a Wav2Vec2ForCTC checkpoint from before PyTorch's weight-norm parametrizations."""
    sd = {}
    for key, value in model.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        sd["wav2vec2." + key] = value.clone()
    sd["lm_head.weight"] = torch.zeros(5, model.config.hidden_size)
    sd["lm_head.bias"] = torch.zeros(5)
    return sd


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """variant -> (torch model, save_pretrained folder, CTC-style pytorch_model.bin folder)."""
    models = {}
    for seed, (variant, options) in enumerate(sorted(VARIANTS.items())):
        config = transformers.Wav2Vec2Config(**TINY, **options)
        torch.manual_seed(seed)
        model = transformers.Wav2Vec2Model(config).eval()
        gen = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
                elif name.endswith(("bias", "original0")):  # biases and the weight-norm gains
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))
        root = tmp_path_factory.mktemp(f"w2v_{variant}")
        st_dir, bin_dir = root / "safetensors", root / "bin"
        model.save_pretrained(st_dir)
        bin_dir.mkdir()
        shutil.copy(st_dir / "config.json", bin_dir / "config.json")
        torch.save(_legacy_state_dict(model), bin_dir / "pytorch_model.bin")
        models[variant] = (model, st_dir, bin_dir)
    return models


@pytest.fixture(scope="module")
def waveform():
    return np.random.default_rng(0).standard_normal((2, 2 * SAMPLE_RATE)).astype(np.float32)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hidden_states_match_transformers(hf_models, variant, waveform):
    model, st_dir, bin_dir = hf_models[variant]
    assert not (st_dir / "pytorch_model.bin").exists()
    config, params = w2v.load_wav2vec2(st_dir)
    assert config.do_stable_layer_norm == (variant == "stable")

    # Both file layouts import to the same params.
    _, params_bin = w2v.load_wav2vec2(bin_dir)
    flat_st = jax.tree_util.tree_leaves_with_path(params)
    flat_bin = jax.tree_util.tree_leaves_with_path(params_bin)
    assert [p for p, _ in flat_st] == [p for p, _ in flat_bin]
    for (_, a), (_, b) in zip(flat_st, flat_bin):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # ... with the same tree as a fresh init.
    init = jax.eval_shape(functools.partial(w2v.init_wav2vec2_params, config), jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(params)
    assert jax.tree_util.tree_map(lambda a: a.shape, init) == jax.tree_util.tree_map(np.shape, params)

    ours = w2v.wav2vec2_hidden_states(config, params, waveform)
    with torch.no_grad():
        out = model(torch.from_numpy(waveform), output_hidden_states=True)
    # transformers 4.x puts last_hidden_state (final LayerNorm included for stable models) last in hidden_states;
    # 5.x leaves that norm out of hidden_states[-1]. Compare the last entry with last_hidden_state either way.
    ref = [h.numpy() for h in out.hidden_states[:-1]] + [out.last_hidden_state.numpy()]
    assert len(ours) == len(ref) == config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert rel_err(a, b) < 1e-4, (variant, i, rel_err(a, b))

    # Stopping early returns the same prefix.
    first = w2v.wav2vec2_hidden_states(config, params, waveform, max_layer=1)
    assert len(first) == 2
    np.testing.assert_allclose(first[1], ours[1], rtol=0, atol=1e-5)


def _interp_torch(x, size):
    return torch.nn.functional.interpolate(x.transpose(1, 2), size=size, mode="linear",
                                           align_corners=True).transpose(1, 2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_video_features(hf_models, variant):
    model, st_dir, _ = hf_models[variant]
    config, params = w2v.load_wav2vec2(st_dir)
    n = round(1.37 * SAMPLE_RATE)
    x = np.random.default_rng(1).standard_normal((1, n)).astype(np.float32)
    frames = num_video_frames(n)
    assert frames == 34

    feats = w2v.wav2vec2_video_features(config, params, x, layer=1)
    with torch.no_grad():
        out = model(torch.from_numpy(x), output_hidden_states=True)
        ref = _interp_torch(out.hidden_states[1], frames).numpy()
    assert feats.shape == (1, frames, config.hidden_size)
    assert rel_err(feats, ref) < 1e-4

    # JoyVASA's order: resample the conv features, then run the transformer at 25 fps.
    feats_conv = w2v.wav2vec2_video_features(config, params, x[0], resample_at="conv_features")
    with torch.no_grad():
        conv = model.feature_extractor(torch.from_numpy(x)).transpose(1, 2)
        hidden, _ = model.feature_projection(_interp_torch(conv, frames))
        ref_conv = model.encoder(hidden).last_hidden_state.numpy()[0]
    assert feats_conv.shape == (frames, config.hidden_size)
    assert rel_err(feats_conv, ref_conv) < 1e-4

    # Any length gives num_video_frames rows, including audio shorter than the receptive field.
    assert config.receptive_field == 325 and config.total_stride == 320
    for length in (0, 100, 320, 2 * SAMPLE_RATE):
        got = w2v.wav2vec2_video_features(config, params, np.zeros(length, np.float32) + 0.1)
        assert got.shape == (num_video_frames(length), config.hidden_size), length
        assert np.all(np.isfinite(np.asarray(got)))
    with pytest.raises(ValueError, match="layer 3 out of range"):
        w2v.wav2vec2_video_features(config, params, x, layer=3)


def test_audio_encoder_interface(hf_models):
    _, st_dir, _ = hf_models["base"]
    config, params = w2v.load_wav2vec2(st_dir)
    x = np.random.default_rng(2).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.3 + 0.05
    enc = make_audio_encoder("wav2vec2", checkpoint_dir=st_dir, layer=-2)
    assert enc.feature_dim == 32 and enc.layer == 1 and enc.normalize
    out = enc(x)
    assert isinstance(out, np.ndarray) and out.shape == (25, 32) and out.dtype == np.float32
    expected = w2v.wav2vec2_video_features(config, params, normalize_waveform(x), layer=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)

    (st_dir / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "sampling_rate": 16000}))
    try:
        raw = make_audio_encoder("wav2vec2", checkpoint_dir=st_dir, layer=1)
        assert not raw.normalize
        np.testing.assert_allclose(raw(x), w2v.wav2vec2_video_features(config, params, x, layer=1), atol=1e-6)
    finally:
        (st_dir / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="layer 5 out of range"):
        make_audio_encoder("wav2vec2", checkpoint_dir=st_dir, layer=5)


def test_checkpoint_errors(hf_models, tmp_path):
    _, st_dir, _ = hf_models["stable"]
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        w2v.load_wav2vec2(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        make_audio_encoder("wav2vec2", checkpoint_dir=tmp_path / "missing")

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(st_dir / "model.safetensors", no_config)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        w2v.load_wav2vec2(no_config)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(st_dir / "config.json", no_weights)
    with pytest.raises(FileNotFoundError, match="no weights file.*model.safetensors, pytorch_model.bin"):
        w2v.load_wav2vec2(no_weights)

    from vasa_jax.models.torch_import import load_torch_state_dict

    config = w2v.load_wav2vec2_config(st_dir)
    sd = load_torch_state_dict(st_dir / "model.safetensors")
    broken = dict(sd)
    del broken["encoder.layers.1.attention.q_proj.bias"]
    broken["encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"missing keys \(1\): encoder\.layers\.1\.attention\.q_proj\.bias"):
        w2v.import_hf_wav2vec2(broken, config)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): encoder\.extra\.weight"):
        w2v.import_hf_wav2vec2(broken, config)
    half = {k: v for k, v in sd.items() if not k.endswith("original1")}
    with pytest.raises(ValueError, match="weight-norm pair incomplete"):
        w2v.import_hf_wav2vec2(half, config)
    with pytest.raises(ValueError, match="shape mismatches"):
        w2v.import_hf_wav2vec2(sd, w2v.Wav2Vec2Config(**{**TINY, **VARIANTS["stable"], "intermediate_size": 64}))

    cfg = json.loads((st_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="hidden_act is 'relu'; only 'gelu'"):
        w2v.Wav2Vec2Config.from_hf_dict({**cfg, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="model_type is 'hubert'"):
        w2v.Wav2Vec2Config.from_hf_dict({**cfg, "model_type": "hubert"})


def test_feature_policy_one_shape_and_streams_equal_offline(hf_models):
    """Under `frame_features`, every Wav2Vec2 call has the excerpt's shape (one compilation whatever the clip's
    length), each block sees its excerpt only (normalised on its own audio, then zero-padded), and a stream cut
    anywhere gives the offline rows bit for bit: the same excerpts go through the same compiled function."""
    from vasa_jax import audio

    _, st_dir, _ = hf_models["base"]
    encoder = make_audio_encoder("wav2vec2", checkpoint_dir=st_dir, block_frames=10, left_frames=8, right_frames=5)
    context, spf = encoder.context, SAMPLE_RATE // 25
    rng = np.random.default_rng(5)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.2 for n in (spf * 37 + 100, spf * 12, spf * 3 - 7)]
    w2v._compiled_forward.cache_clear()
    features = [audio.frame_features(encoder, x) for x in clips]
    assert w2v._compiled_forward.cache_info().currsize == 1
    compiled = w2v._compiled_forward(encoder.config, "float32", None, encoder.layer, None, encoder.layer,
                                     context.excerpt_frames)
    assert w2v._compiled_forward.cache_info().currsize == 1  # the same entry: the excerpt's shape
    assert compiled._cache_size() == 1
    for x, rows in zip(clips, features):
        assert rows.shape == (num_video_frames(len(x)), 32)
        chunks = np.split(x, np.sort(rng.integers(0, len(x) + 1, 4)))
        np.testing.assert_array_equal(np.concatenate(list(audio.stream_frame_features(chunks, encoder))), rows)
    # Block 1 of the first clip from its excerpt alone: frames 2 .. 25, normalised, no padding.
    x = clips[0]
    excerpt = x[(10 - 8) * spf : (20 + 5) * spf]
    expected = w2v.wav2vec2_video_features(encoder.config, encoder.params, normalize_waveform(excerpt),
                                           layer=encoder.layer)[8:18]
    np.testing.assert_allclose(features[0][10:20], expected, rtol=0, atol=1e-6)
    # Whole-clip features differ (attention across the clip, per-clip normalisation): what the policy is for.
    whole = encoder(x)
    assert np.abs(whole[10:20] - features[0][10:20]).max() > 1e-3
    description = encoder.description()
    assert (description["block_frames"], description["left_frames"], description["right_frames"]) == (10, 8, 5)
    rebuilt = audio.encoder_from_description(description)
    np.testing.assert_array_equal(audio.frame_features(rebuilt, clips[1]), features[1])
