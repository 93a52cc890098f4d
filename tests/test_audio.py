"""Audio loading, the 25 fps frame grid and the log-mel encoder.

Files are written here by soundfile from a synthetic two-tone signal, so each format, rate, bit depth and channel
count is checked against a known reference. Real speech clips are read from `$VASA_MEDIA_DIR/audio` when set.
"""

import os

import numpy as np
import pytest
import soundfile as sf

from vasa_jax import audio
from vasa_jax.audio import AudioError, load_audio, log_mel_features, make_audio_encoder, num_video_frames

DURATION = 1.3


def two_tone(sample_rate: int, duration: float = DURATION) -> np.ndarray:
    """440 Hz + 1234 Hz, well below every Nyquist rate used here, so resampling keeps it intact."""
    t = np.arange(round(sample_rate * duration)) / sample_rate
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32)


# name, file rate, subtype, channels, max abs error vs the 16 kHz reference (away from the edges)
FORMATS = [
    ("pcm16.wav", 16000, "PCM_16", 1, 1e-4),
    ("pcm24_stereo_48k.wav", 48000, "PCM_24", 2, 1e-4),
    ("float_22k.wav", 22050, "FLOAT", 1, 1e-4),
    ("lossless_44k.flac", 44100, "PCM_16", 1, 1e-4),
    ("vorbis_22k.ogg", 22050, "VORBIS", 1, 0.05),
    ("mp3_stereo_44k.mp3", 44100, "MPEG_LAYER_III", 2, 0.05),
]


@pytest.mark.parametrize("name,rate,subtype,channels,tol", FORMATS, ids=[f[0] for f in FORMATS])
def test_load_audio_formats(tmp_path, name, rate, subtype, channels, tol):
    x = two_tone(rate)
    if channels == 2:  # different channels: the loader must average them
        x = np.stack([x * 1.5, x * 0.5], axis=1)
    path = tmp_path / name
    sf.write(path, x, rate, subtype=subtype)

    y = load_audio(path)
    ref = two_tone(audio.SAMPLE_RATE)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(ref)) <= 1, (len(y), len(ref))
    inner = slice(800, len(ref) - 800)  # resampler edge transients
    assert np.abs(y[inner] - ref[inner]).max() < tol
    assert np.corrcoef(y[: len(ref)], ref[: len(y)])[0, 1] > 0.999


def test_load_audio_other_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, two_tone(48000), 48000, subtype="PCM_16")
    y = load_audio(path, sample_rate=24000)
    assert abs(len(y) - round(DURATION * 24000)) <= 1
    assert np.abs(y[800:-800] - two_tone(24000)[800:-800]).max() < 1e-3


def test_load_audio_errors(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: audio file not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: audio file is empty \(0 bytes\)"):
        load_audio(empty)

    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros((0,), np.float32), 16000, subtype="PCM_16")
    assert no_samples.stat().st_size > 0
    with pytest.raises(AudioError, match=r"no_samples\.wav: audio file contains no samples"):
        load_audio(no_samples)

    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file"):
        load_audio(text)

    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) * 4)
    with pytest.raises(AudioError, match=r"photo\.jpg: not a readable audio file"):
        load_audio(jpeg)

    assert issubclass(AudioError, ValueError)


def test_num_video_frames():
    assert num_video_frames(0) == 0
    assert num_video_frames(16000) == 25
    assert num_video_frames(21920) == 34  # 1.37 s = 34.25 frames
    assert num_video_frames(319) == 0 and num_video_frames(320) == 1  # half a frame rounds up
    assert num_video_frames(640 * 7 + 320) == 8
    assert num_video_frames(48000, sample_rate=48000, fps=30) == 30
    assert num_video_frames(1001, sample_rate=1000, fps=29.97) == 30
    with pytest.raises(ValueError):
        num_video_frames(-1)


@pytest.mark.parametrize("seconds", [0.0, 100 / 16000, 1.0, 1.37, 7.99])
def test_log_mel_frame_count(seconds):
    n = round(seconds * 16000)
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    feats = log_mel_features(x)
    assert feats.shape == (num_video_frames(n), 160)
    assert feats.dtype == np.float32 and np.all(np.isfinite(feats))
    if feats.size:
        assert feats.min() >= np.log(audio.LOG_MEL_FLOOR) - 1e-5


def test_log_mel_properties():
    x = two_tone(16000, 2.0)
    feats = log_mel_features(x, num_mels=40)
    assert feats.shape == (50, 80)
    # A prefix of the audio gives the same features for the frames it fully covers (no per-clip normalisation).
    head = log_mel_features(x[:16000], num_mels=40)
    np.testing.assert_allclose(head[:24], feats[:24], atol=1e-5)
    # Silence sits on the floor; the two tones light up a few low mel bands, not the top ones.
    silence = log_mel_features(np.zeros(8000, np.float32))
    np.testing.assert_allclose(silence, np.log(audio.LOG_MEL_FLOOR), atol=1e-6)
    bands = feats[10, :40]  # first of the pair: 40 mel bands
    assert bands.argmax() < 20 and bands.max() > bands[-5:].max() + 5
    with pytest.raises(ValueError, match="multiple of 2 \\* fps"):
        log_mel_features(x, sample_rate=16000, fps=30)
    with pytest.raises(AudioError, match="mono waveform"):
        log_mel_features(np.zeros((2, 100), np.float32))


def test_make_audio_encoder():
    enc = make_audio_encoder("log_mel", num_mels=64)
    assert enc.feature_dim == 128
    x = two_tone(16000)
    out = enc(x)
    assert out.shape == (num_video_frames(len(x)), 128)
    with pytest.raises(ValueError, match="unknown audio encoder kind 'mel'"):
        make_audio_encoder("mel")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_mel'\]"):
        make_audio_encoder("log_mel", num_mel=64)
    with pytest.raises(ValueError, match=r"missing required option\(s\) \['checkpoint_dir'\]"):
        make_audio_encoder("wav2vec2")


def _chunked(x, rng, pieces=6):
    return np.split(x, np.sort(rng.integers(0, len(x) + 1, pieces - 1)))


@pytest.mark.parametrize("seconds", [0.05, 0.9, 3.013, 7.0])
def test_log_mel_feature_policy_equals_the_whole_clip(seconds):
    """Training (motion datasets) and generation both take `frame_features`; for log-mel its blocks must give the
    rows of the whole clip, and a stream cut anywhere the same rows as the clip at once."""
    rng = np.random.default_rng(int(seconds * 1000))
    x = two_tone(16000, seconds) + 0.05 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
    encoder = make_audio_encoder("log_mel")
    features = audio.frame_features(encoder, x)
    assert features.shape == (num_video_frames(len(x)), 160)
    whole = log_mel_features(audio._frame_aligned(x))
    # Equal up to float rounding: a block's mel projection and the whole clip's are matrix products of different
    # shapes, which the BLAS may round differently (bit-identical on some CPUs, 5e-7 apart on others); a clip
    # shorter than one excerpt is also zero-padded, which changes the FFT's rounding.
    np.testing.assert_allclose(features, whole, rtol=0, atol=1e-5)
    streamed = list(audio.stream_frame_features(_chunked(x, rng), encoder))
    np.testing.assert_array_equal(np.concatenate(streamed) if streamed else features, features)
    assert len(streamed) == -(-len(features) // encoder.context.block_frames)


def test_a_stream_yields_each_block_once_its_lookahead_arrived():
    encoder = make_audio_encoder("log_mel")
    context, spf = encoder.context, 16000 // 25
    x = two_tone(16000, 4.0)
    yielded_after = []
    received = 0

    def frame_by_frame():
        nonlocal received
        for start in range(0, len(x), spf):
            received = start + spf
            yield x[start : start + spf]

    for rows in audio.stream_frame_features(frame_by_frame(), encoder):
        yielded_after.append((received // spf, len(rows)))
    blocks = len(x) // spf // context.block_frames
    assert len(yielded_after) == blocks
    for block, (frames_in, rows) in enumerate(yielded_after[:-1]):
        assert rows == context.block_frames
        assert frames_in == (block + 1) * context.block_frames + context.right_frames
        # The block's first frame waited for every frame after it that had arrived: the documented look-ahead.
        assert (frames_in - 1 - block * context.block_frames) / 25 == pytest.approx(context.lookahead_seconds)


def test_encoder_descriptions_rebuild_the_encoder():
    encoder = make_audio_encoder("log_mel", num_mels=40)
    rebuilt = audio.encoder_from_description(encoder.description())
    assert rebuilt.feature_dim == 80
    x = two_tone(16000, 1.0)
    np.testing.assert_array_equal(rebuilt(x), encoder(x))
    assert audio.encoder_from_description("LogMelEncoder(num_mels=80, feature_dim=160)").feature_dim == 160
    with pytest.raises(ValueError, match="re-encode the motion dataset"):
        audio.encoder_from_description("Wav2Vec2Encoder('/x', layer=2)")
    with pytest.raises(ValueError, match="recorded 81"):
        audio.encoder_from_description(dict(encoder.description(), feature_dim=81))


# Real clips listed in the media MANIFEST: file -> (seconds, source sample rate, channels).
REAL_CLIPS = {
    "sadtalker_deyu.wav": (9.34, 48000, 2),
    "sadtalker_RD_Radio31_000.wav": (8.00, 16000, 2),
    "real3dportrait_Obama_5s.wav": (5.01, 16000, 2),
    "echomimic_echomimic_en_girl.wav": (4.87, 24000, 1),
    "ditto_audio.wav": (15.75, 24000, 1),
}


@pytest.mark.skipif(not os.environ.get("VASA_MEDIA_DIR"), reason="VASA_MEDIA_DIR is not set (real test media)")
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clips(name):
    path = os.path.join(os.environ["VASA_MEDIA_DIR"], "audio", name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} not present")
    seconds, rate, channels = REAL_CLIPS[name]
    info = sf.info(path)
    assert (info.samplerate, info.channels) == (rate, channels)
    y = load_audio(path)
    assert abs(len(y) - info.frames * audio.SAMPLE_RATE / rate) <= 1
    assert abs(len(y) / audio.SAMPLE_RATE - seconds) < 0.01
    # Speech, not silence, on the [-1, 1] scale (resampling may overshoot a clipped source slightly).
    assert 0.01 < np.abs(y).max() < 1.1
    feats = log_mel_features(y)
    assert feats.shape == (num_video_frames(len(y)), 160)
    assert feats.shape[0] == round(seconds * 25) or abs(feats.shape[0] - seconds * 25) < 1


def _write_aac(path, waveform, rate, container_format):
    """Stereo AAC in an m4a/mp4 container, as a phone's voice memo or a camera's video audio is stored."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("aac", rate=rate, layout="stereo")
        for start in range(0, len(waveform), 1024):
            chunk = waveform[start : start + 1024]
            frame = av.AudioFrame.from_ndarray(np.stack([chunk * 1.5, chunk * 0.5]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize("name,container_format", [("memo.m4a", "ipod"), ("clip.mov", "mov")])
def test_load_audio_reads_aac_containers_through_ffmpeg(tmp_path, name, container_format):
    """What libsndfile cannot read (an m4a voice memo, a video container's AAC track) is decoded by FFmpeg, at
    the right duration (the encoder's priming and the last frame's padding left out) and in time."""
    path = tmp_path / name
    _write_aac(path, two_tone(44100), 44100, container_format)
    y = load_audio(path)
    ref = two_tone(audio.SAMPLE_RATE)
    assert abs(len(y) - len(ref)) <= 1, (len(y), len(ref))
    inner = slice(800, len(ref) - 800)
    assert np.corrcoef(y[inner], ref[inner])[0, 1] > 0.99  # AAC is lossy; a shift of a sample or more fails this


def test_load_audio_reads_the_speech_of_an_mp4(tmp_path):
    from vasa_jax import video

    ref = two_tone(audio.SAMPLE_RATE)
    path = video.write_mp4(tmp_path / "talk.mp4", np.zeros((25, 16, 16, 3), np.uint8), audio=ref)
    y = load_audio(path)
    assert abs(len(y) - len(ref)) <= 1, (len(y), len(ref))
    assert np.corrcoef(y[800:-800], ref[800 : len(y) - 800])[0, 1] > 0.99
    silent = video.write_mp4(tmp_path / "silent.mp4", np.zeros((5, 16, 16, 3), np.uint8))
    with pytest.raises(AudioError, match="silent.mp4: not a readable audio file \\(no audio stream"):
        load_audio(silent)
