"""Audio front end of stage 2: loading speech, the 25 fps frame grid and the two audio encoders.

Stage 2 conditions the motion generator on one audio feature vector per video frame. Everything here works on
mono float32 waveforms at `SAMPLE_RATE` (16 kHz, what Wav2Vec2 was trained on), so both encoders see the same input
whatever the source file's rate, bit depth or channel count.

* `load_audio` reads wav / flac / ogg / mp3 through libsndfile (the `soundfile` package; libsndfile >= 1.1 decodes
  MP3 itself), so no ffmpeg is needed. Channels are averaged and the rate is converted with soxr (via librosa).
  Anything that cannot be used raises `AudioError` naming the file and the reason.
* `num_video_frames` fixes how many 25 fps frames a waveform covers. Every encoder returns exactly that many
  feature rows, so audio features and motion frames line up one to one without per-call bookkeeping.
* Two encoders behind one interface (`make_audio_encoder`): "log_mel", the embedded default that needs no weights,
  and "wav2vec2", VASA's choice, backed by `vasa_jax.models.wav2vec2` and a Hugging Face checkpoint. Both are
  callables `waveform [N] -> features [T, feature_dim]` with `T == num_video_frames(N)`.
* One feature policy for training and generation (`frame_features`, `stream_frame_features`): a clip's features
  are computed block by block, each block of frames from a fixed-length excerpt of audio around it (the encoder's
  `FeatureContext`). Motion datasets, offline generation and streaming all call these two functions, so a frame's
  features see the same audio wherever they are computed: Wav2Vec2, which normalises each input and attends across
  all of it, gives the same rows in training and generation, and compiles once (every excerpt has one shape).
"""

from __future__ import annotations

import dataclasses
import fractions
import inspect
import json
import math
import os
from typing import Any, Callable

import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "VIDEO_FPS",
    "AudioError",
    "load_audio",
    "to_mono",
    "num_video_frames",
    "log_mel_features",
    "LogMelEncoder",
    "Wav2Vec2Encoder",
    "AUDIO_ENCODERS",
    "make_audio_encoder",
    "FeatureContext",
    "frame_features",
    "stream_frame_features",
    "encoder_from_description",
]

SAMPLE_RATE = 16000
VIDEO_FPS = 25

# Log-mel analysis. A 25 ms Hann window (400 samples at 16 kHz) zero-padded to the next power of two, the same
# window length Wav2Vec2's first convolution sees, so the two encoders look at comparable slices of speech.
MEL_WINDOW_SECONDS = 0.025
# Floor applied to the mel power before the log: digital silence would otherwise give -inf or huge negative values
# that dominate any normalisation statistics. ln(1e-5) = -11.5 sits below the noise floor of 16-bit recordings.
LOG_MEL_FLOOR = 1e-5


class AudioError(ValueError):
    """An audio file or waveform that cannot be used; the message names the file and the reason."""


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as a mono float32 waveform at `sample_rate`, in [-1, 1] for integer sources.

    Reads whatever libsndfile reads (wav in any PCM / float bit depth, flac, ogg/vorbis, mp3, ...) and, through
    FFmpeg (PyAV), any other container with an audio stream: an m4a/AAC voice memo, the audio track of an
    mp4/mov/mkv/webm video, opus. Multi-channel
    audio is downmixed by averaging the channels, the simplest downmix that keeps speech at the same level whether it
    was recorded on one channel or duplicated on both. Resampling uses soxr's high-quality mode through
    `librosa.resample`. Raises `AudioError` for a missing, empty, undecodable or sample-less file.
    """
    path = os.fspath(path)
    if sample_rate <= 0:
        raise ValueError(f"load_audio: sample_rate must be positive, got {sample_rate}")
    if not os.path.exists(path):
        raise AudioError(f"{path}: audio file not found")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: audio file is empty (0 bytes)")

    import soundfile as sf

    try:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as err:  # LibsndfileError is a RuntimeError
        data, file_rate = _read_with_ffmpeg(path, str(err).strip() or type(err).__name__)
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file contains no samples")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio file contains NaN or infinite samples")

    return to_mono(data, file_rate, sample_rate)


def _read_with_ffmpeg(path: str, sndfile_error: str):
    """(samples [N, C] float32, rate) of the first audio stream of a file FFmpeg reads, for what libsndfile does
    not; AudioError naming libsndfile's complaint when FFmpeg cannot read it either or it holds no audio."""
    import av

    from vasa_jax.video import decode_audio_stream

    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError):
        raise AudioError(f"{path}: not a readable audio file ({sndfile_error})") from None
    with container:
        if not container.streams.audio:
            raise AudioError(f"{path}: not a readable audio file (no audio stream; {sndfile_error})")
        stream = container.streams.audio[0]
        samples, _ = decode_audio_stream(container)
        if stream.duration is not None:  # AAC's last frame is padded to 1024 samples; the stream says where it ends
            samples = samples[: int(round(stream.duration * stream.time_base * stream.rate))]
        return samples, int(stream.rate)


def to_mono(samples: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[N, C] samples at `rate` -> mono float32 [M] at `sample_rate`: channels averaged, soxr high-quality
    resampling (`librosa.resample`). Shared by `load_audio` and the audio of videos (`vasa_jax.video`)."""
    waveform = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if rate != sample_rate:
        import librosa

        waveform = librosa.resample(waveform, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(waveform, dtype=np.float32)


# ---------------------------------------------------------------------------
# frame grid
# ---------------------------------------------------------------------------

def num_video_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: float = VIDEO_FPS) -> int:
    """Number of video frames covered by `num_samples` audio samples: `num_samples * fps / sample_rate` rounded to
    the nearest integer, halves rounded up.

    The arithmetic is exact (rational numbers, no floating point), so e.g. 1.37 s at 16 kHz is 34.25 -> 34 frames
    and exactly half a frame past a whole number counts as one more frame (320 samples -> 1 frame at 16 kHz, 25 fps)
    on every platform. Rounding to nearest rather than truncating keeps a clip whose audio is a few samples short of
    the video (common after resampling) at the video's frame count.
    """
    if num_samples < 0:
        raise ValueError(f"num_video_frames: num_samples must be >= 0, got {num_samples}")
    if sample_rate <= 0 or fps <= 0:
        raise ValueError(f"num_video_frames: sample_rate and fps must be positive, got {sample_rate}, {fps}")
    frames = fractions.Fraction(int(num_samples)) * fractions.Fraction(fps) / fractions.Fraction(sample_rate)
    return math.floor(frames + fractions.Fraction(1, 2))


def _as_waveform(waveform: Any, what: str) -> np.ndarray:
    x = np.asarray(waveform)
    if x.ndim != 1:
        raise AudioError(f"{what}: expected a mono waveform of shape [N], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"{what}: expected a float waveform, got dtype {x.dtype} (use load_audio to read files)")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{what}: waveform contains NaN or infinite samples")
    return x


# ---------------------------------------------------------------------------
# log-mel encoder
# ---------------------------------------------------------------------------

def log_mel_features(
    waveform: np.ndarray, sample_rate: int = SAMPLE_RATE, fps: float = VIDEO_FPS, num_mels: int = 80
) -> np.ndarray:
    """Log-mel features at the video frame rate: float32 `[num_video_frames(N), 2 * num_mels]`.

    The mel spectrogram is taken at twice the video rate (hop `sample_rate / (2 * fps)`: 320 samples = 50 Hz at
    16 kHz, the rate of Wav2Vec2's features) with centred frames, so mel frames 2t and 2t + 1 are centred on the
    start and the middle of video frame t. Each such pair is concatenated into the feature of frame t, which keeps
    the 20 ms detail that fast articulation needs while giving one vector per video frame. The result is trimmed, or
    padded by repeating the last row, to exactly `num_video_frames(N)` rows, so it works for any length, including
    audio shorter than one analysis window; an empty waveform gives shape `[0, 2 * num_mels]`.

    Values are natural-log mel power floored at `LOG_MEL_FLOOR`; no per-clip normalisation, so a feature does not
    depend on the rest of the clip and chunks of a stream give the same features as the whole.
    """
    x = _as_waveform(waveform, "log_mel_features")
    if num_mels <= 0:
        raise ValueError(f"log_mel_features: num_mels must be positive, got {num_mels}")
    hop = fractions.Fraction(sample_rate) / (2 * fractions.Fraction(fps))
    if hop.denominator != 1 or hop <= 0:
        raise ValueError(
            f"log_mel_features: sample_rate ({sample_rate}) must be a positive multiple of 2 * fps ({2 * fps}) so "
            "that two mel frames fall exactly on each video frame"
        )
    hop = int(hop)
    dim = 2 * num_mels
    frames = num_video_frames(x.shape[0], sample_rate, fps)
    if frames == 0:
        return np.zeros((0, dim), np.float32)

    import librosa

    win_length = max(1, round(MEL_WINDOW_SECONDS * sample_rate))
    n_fft = 1 << (win_length - 1).bit_length()
    if x.shape[0] < n_fft:
        # Centred frames zero-pad the signal anyway, so trailing zeros change no frame we keep; they only spare
        # librosa a too-short-input warning.
        x = np.pad(x, (0, n_fft - x.shape[0]))
    mel = librosa.feature.melspectrogram(
        y=x, sr=sample_rate, n_fft=n_fft, hop_length=hop, win_length=win_length, window="hann",
        center=True, pad_mode="constant", power=2.0, n_mels=num_mels,
    )  # [num_mels, 1 + N // hop]
    logmel = np.log(np.maximum(mel, LOG_MEL_FLOOR)).T.astype(np.float32)  # [M, num_mels]
    needed = 2 * frames
    if logmel.shape[0] < needed:  # cannot happen with centred frames, but never return a short array
        logmel = np.concatenate([logmel, np.repeat(logmel[-1:], needed - logmel.shape[0], axis=0)])
    return np.ascontiguousarray(logmel[:needed].reshape(frames, dim))


class LogMelEncoder:
    """The embedded default audio encoder: `log_mel_features` behind the encoder interface (no weights)."""

    kind = "log_mel"

    def __init__(self, num_mels: int = 80, sample_rate: int = SAMPLE_RATE, fps: float = VIDEO_FPS):
        if num_mels <= 0:
            raise ValueError(f"log_mel encoder: num_mels must be positive, got {num_mels}")
        self.num_mels = int(num_mels)
        self.sample_rate = sample_rate
        self.fps = fps
        self.feature_dim = 2 * self.num_mels

    def __call__(self, waveform: np.ndarray, padding: tuple = (0, 0)) -> np.ndarray:
        """Features of the waveform with `padding` (before, after) zero samples around it."""
        x = _as_waveform(waveform, "log_mel encoder")
        return log_mel_features(np.pad(x, padding), self.sample_rate, self.fps, self.num_mels)

    @property
    def context(self) -> "FeatureContext":
        # A row depends on audio within half an FFT window (16 ms) of its frame: one frame either side covers it,
        # so block-wise rows equal those of the whole clip (tested), and a stream waits 40 ms past a block.
        return FeatureContext(block_frames=25, left_frames=1, right_frames=1)

    def description(self) -> dict:
        return {"kind": self.kind, "num_mels": self.num_mels, "feature_dim": self.feature_dim}

    def __repr__(self) -> str:
        return f"LogMelEncoder(num_mels={self.num_mels}, feature_dim={self.feature_dim})"


# ---------------------------------------------------------------------------
# Wav2Vec2 encoder
# ---------------------------------------------------------------------------

def _read_do_normalize(checkpoint_dir: str) -> bool:
    """`do_normalize` from the checkpoint's `preprocessor_config.json`; True (Hugging Face's default) if absent."""
    path = os.path.join(checkpoint_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        return True
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the feature extractor config ({err})") from None
    rate = cfg.get("sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: the checkpoint expects {rate} Hz audio; only {SAMPLE_RATE} Hz is supported")
    return bool(cfg.get("do_normalize", True))


def normalize_waveform(waveform: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole waveform, as Hugging Face's `Wav2Vec2FeatureExtractor` does when
    `do_normalize` is set (epsilon 1e-7 inside the square root, statistics in float32 over the unpadded input)."""
    x = np.asarray(waveform, np.float32)
    if x.size == 0:
        return x
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)


class Wav2Vec2Encoder:
    """Wav2Vec2 features of one hidden layer, resampled to the video rate (see `wav2vec2_video_features`).

    Args:
      checkpoint_dir: a Hugging Face Wav2Vec2 checkpoint folder (`config.json` plus `model.safetensors` or
        `pytorch_model.bin`; `Wav2Vec2Model` or `Wav2Vec2ForCTC` weights).
      layer: index into the hidden states as Hugging Face numbers them (0 = encoder input, L = last layer);
        negative values count from the end. Default: the last layer.
      dtype: computation dtype ("float32" or "bfloat16"); weights stay float32.
      normalize: zero-mean/unit-variance normalise each waveform first. Default: the checkpoint's
        `preprocessor_config.json` `do_normalize` (True when the file is absent, as for the released base and large
        checkpoints), because the model was trained on inputs prepared that way.
      resample_at: "output" (default) runs the transformer at its native 50 Hz and interpolates the chosen layer;
        "conv_features" interpolates the convolutional features before the transformer, as JoyVASA does.

      block_frames, left_frames, right_frames: the `FeatureContext` of `frame_features`: rows are computed
        block_frames at a time from an excerpt of left + block + right frames of audio (defaults 1 s, 2 s and 1 s:
        the positional convolution alone spans 2.5 s). A stream waits for right_frames past a block.

    Called directly, the whole waveform is encoded in one pass and each new length compiles once; through
    `frame_features` every call has the excerpt's one shape.
    """

    kind = "wav2vec2"

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike,
        layer: int | None = None,
        dtype: Any = "float32",
        normalize: bool | None = None,
        resample_at: str = "output",
        block_frames: int = 25,
        left_frames: int = 50,
        right_frames: int = 25,
    ):
        from vasa_jax.models import wav2vec2 as w2v

        self.context = FeatureContext(int(block_frames), int(left_frames), int(right_frames))

        self.checkpoint_dir = os.fspath(checkpoint_dir)
        self.config, self.params = w2v.load_wav2vec2(self.checkpoint_dir)
        num_states = self.config.num_hidden_layers + 1
        if layer is None:
            layer = self.config.num_hidden_layers
        if not -num_states <= layer < num_states:
            raise ValueError(
                f"wav2vec2 encoder: layer {layer} out of range for a model with {num_states} hidden states "
                f"(0 .. {num_states - 1}, or negative from the end)"
            )
        if resample_at not in w2v.RESAMPLE_MODES:
            raise ValueError(f"wav2vec2 encoder: resample_at must be one of {w2v.RESAMPLE_MODES}, got {resample_at!r}")
        self.layer = int(layer) % num_states
        self.dtype = dtype
        self.normalize = _read_do_normalize(self.checkpoint_dir) if normalize is None else bool(normalize)
        self.resample_at = resample_at
        self.feature_dim = self.config.hidden_size
        self._features = w2v.wav2vec2_video_features

    def __call__(self, waveform: np.ndarray, padding: tuple = (0, 0)) -> np.ndarray:
        """Features of the waveform with `padding` (before, after) zero samples around it, added after the
        normalisation as Hugging Face's feature extractor pads a batch (the statistics are the audio's own)."""
        x = _as_waveform(waveform, "wav2vec2 encoder")
        if self.normalize:
            x = normalize_waveform(x)
        x = np.pad(x, padding)
        feats = self._features(
            self.config, self.params, x, layer=self.layer, dtype=self.dtype, resample_at=self.resample_at
        )
        return np.asarray(feats, np.float32)

    def description(self) -> dict:
        """What rebuilds this encoder with `encoder_from_description` (the checkpoint folder may be replaced)."""
        return {"kind": self.kind, "checkpoint_dir": os.path.abspath(self.checkpoint_dir), "layer": self.layer,
                "dtype": self.dtype if isinstance(self.dtype, str) else np.dtype(self.dtype).name,
                "normalize": self.normalize, "resample_at": self.resample_at,
                "block_frames": self.context.block_frames, "left_frames": self.context.left_frames,
                "right_frames": self.context.right_frames, "feature_dim": self.feature_dim}

    def __repr__(self) -> str:
        return (f"Wav2Vec2Encoder({self.checkpoint_dir!r}, layer={self.layer}, feature_dim={self.feature_dim}, "
                f"normalize={self.normalize}, resample_at={self.resample_at!r})")


AUDIO_ENCODERS: dict[str, Callable[..., Any]] = {
    "log_mel": LogMelEncoder,
    "wav2vec2": Wav2Vec2Encoder,
}


def make_audio_encoder(kind: str, **options):
    """Build an audio encoder by name: an object with `.feature_dim` and `__call__(waveform [N]) -> [T, dim]`.

    kinds: "log_mel" (options: num_mels) and "wav2vec2" (options: checkpoint_dir, layer, dtype, normalize,
    resample_at). Unknown kinds or options raise `ValueError` listing what is accepted, so a typo in a config fails
    at start-up rather than silently using a default.
    """
    if kind not in AUDIO_ENCODERS:
        raise ValueError(f"unknown audio encoder kind {kind!r}; choose one of {sorted(AUDIO_ENCODERS)}")
    cls = AUDIO_ENCODERS[kind]
    params = inspect.signature(cls).parameters
    accepted = list(params)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"audio encoder {kind!r}: unknown option(s) {unknown}; accepted options are {accepted}")
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in options]
    if required:
        raise ValueError(f"audio encoder {kind!r}: missing required option(s) {required}")
    return cls(**options)


# ---------------------------------------------------------------------------
# the feature policy: what audio a frame's features see, in training and generation alike
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FeatureContext:
    """How an encoder's rows are computed by `frame_features`: `block_frames` rows per call, from the excerpt of
    audio from `left_frames` before the block to `right_frames` after it. Where the excerpt runs past either end of
    the clip it is zero-padded, so every call has one shape and a block's rows depend only on the audio within
    its excerpt (the encoder normalises the audio it was given, then pads)."""

    block_frames: int
    left_frames: int
    right_frames: int

    def __post_init__(self):
        if self.block_frames < 1 or self.left_frames < 0 or self.right_frames < 0:
            raise ValueError(f"feature context needs block_frames >= 1 and non-negative context, got {self}")

    @property
    def excerpt_frames(self) -> int:
        return self.left_frames + self.block_frames + self.right_frames

    @property
    def lookahead_seconds(self) -> float:
        """The most audio past a frame that a stream waits for before the frame's features are final (the frame
        first in its block waits for the rest of the block and the right context)."""
        return (self.block_frames - 1 + self.right_frames) / VIDEO_FPS


def _samples_per_frame() -> int:
    return SAMPLE_RATE // VIDEO_FPS  # 640: every excerpt starts on a frame boundary


def _block_rows(encoder, audio: np.ndarray, audio_start_frame: int, block: int, total_frames: int) -> np.ndarray:
    """Rows of block `block` of a clip of `total_frames` frames; `audio` holds the clip's frame-aligned samples from
    frame `audio_start_frame` on, at least up to the excerpt's end or the clip's."""
    context, spf = encoder.context, _samples_per_frame()
    first = block * context.block_frames
    start, end = first - context.left_frames, first + context.block_frames + context.right_frames
    lo, hi = max(start, 0), min(end, total_frames)
    excerpt = audio[(lo - audio_start_frame) * spf : (hi - audio_start_frame) * spf]
    rows = encoder(excerpt, padding=((lo - start) * spf, (end - hi) * spf))
    return rows[context.left_frames : context.left_frames + min(context.block_frames, total_frames - first)]


def _frame_aligned(waveform: np.ndarray) -> np.ndarray:
    """The waveform cut or zero-padded to exactly num_video_frames(N) whole frames of samples."""
    total = num_video_frames(len(waveform)) * _samples_per_frame()
    return np.pad(waveform[:total], (0, max(0, total - len(waveform))))


def frame_features(encoder, waveform: np.ndarray) -> np.ndarray:
    """A clip's audio features [num_video_frames(N), feature_dim] under the project's one feature policy: block by
    block as `encoder.context` says. Motion datasets (training) and offline generation call this;
    `stream_frame_features` gives the same rows from audio chunks."""
    x = _frame_aligned(_as_waveform(waveform, "frame_features"))
    total = len(x) // _samples_per_frame()
    blocks = -(-total // encoder.context.block_frames)
    if blocks == 0:
        return np.zeros((0, encoder.feature_dim), np.float32)
    return np.concatenate([_block_rows(encoder, x, 0, b, total) for b in range(blocks)]).astype(np.float32)


def stream_frame_features(waveform_chunks, encoder):
    """`frame_features` of the concatenated chunks, yielded a block of rows at a time as soon as they are final:
    once `encoder.context.right_frames` past the block have arrived (at most `lookahead_seconds` past any of its
    frames), the last block when the chunks end. Only the audio still needed is kept, so memory stays bounded."""
    context, spf = encoder.context, _samples_per_frame()
    buffer, buffer_frame, received, block = np.zeros((0,), np.float32), 0, 0, 0
    for chunk in waveform_chunks:
        chunk = _as_waveform(np.asarray(chunk, np.float32).reshape(-1), "stream_frame_features")
        buffer = np.concatenate([buffer, chunk])
        received += len(chunk)
        while received // spf >= (block + 1) * context.block_frames + context.right_frames:
            # The clip is at least as long as the excerpt's end: its rows are the whole clip's.
            yield _block_rows(encoder, buffer, buffer_frame, block, received // spf)
            block += 1
            keep = max(0, block * context.block_frames - context.left_frames)  # the next excerpt's first frame
            buffer, buffer_frame = buffer[(keep - buffer_frame) * spf :], keep
    total = num_video_frames(received)
    kept = (total - buffer_frame) * spf
    buffer = np.pad(buffer[:kept], (0, max(0, kept - len(buffer))))
    while block * context.block_frames < total:
        yield _block_rows(encoder, buffer, buffer_frame, block, total)
        block += 1


def encoder_from_description(description, checkpoint_dir: str | None = None):
    """The audio encoder a description names. `checkpoint_dir` replaces a Wav2Vec2 description's folder (an
    exported model carries its own copy). Motion datasets written before descriptions were dicts recorded the
    encoder's repr: a log-mel one is rebuilt, a Wav2Vec2 one needs a new encoding."""
    if isinstance(description, str):
        if description.startswith("LogMelEncoder"):
            return make_audio_encoder("log_mel")
        raise ValueError(f"audio encoder {description!r} is recorded without its options; re-encode the motion "
                         "dataset with this version of vasa_jax.data.encode_motion")
    options = {k: v for k, v in description.items() if k not in ("kind", "feature_dim")}
    if checkpoint_dir is not None and description.get("kind") == "wav2vec2":
        options["checkpoint_dir"] = checkpoint_dir
    encoder = make_audio_encoder(description.get("kind"), **options)
    if "feature_dim" in description and encoder.feature_dim != description["feature_dim"]:
        raise ValueError(f"audio encoder {description}: rebuilt with {encoder.feature_dim}-d features, recorded "
                         f"{description['feature_dim']}")
    return encoder
