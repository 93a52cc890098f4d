"""Writing and reading talking-head videos: H.264 mp4 with the speech muxed in, and decoding of any container and
codec FFmpeg reads (h264, hevc, mpeg4, ...) resampled to a fixed frame rate (PyAV, which bundles FFmpeg and libx264,
so no system FFmpeg is needed).

`write_mp4` is atomic: it encodes into a hidden temporary file beside the target and renames it only when the
file is complete, so a failure (or a kill) never leaves a partial OUT.mp4 behind.
"""

import fractions
import os
from typing import Iterable, Iterator, Optional

import numpy as np

VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int = 25,
              audio: Optional[np.ndarray] = None, sample_rate: int = 16000, crf: int = 18) -> str:
    """Encode frames (uint8 [H, W, 3] each, RGB; an array [T, H, W, 3] or any iterable, e.g. a stream) as H.264
    (yuv420p, so H and W must be even) at `fps`, plus `audio` (mono float32 in [-1, 1]) as AAC when given.
    Returns the path. Raises ValueError for frames of the wrong shape or type; nothing is left at `path` then."""
    import av

    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, f".{name}.partial.mp4")
    try:
        with av.open(partial, mode="w", format="mp4") as container:
            video = None
            if audio is not None:
                audio_stream = container.add_stream(AUDIO_CODEC, rate=int(sample_rate), layout="mono")
            count = 0
            for frame in frames:
                frame = np.asarray(frame)
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
                if video is None:
                    height, width = frame.shape[:2]
                    if height % 2 or width % 2:
                        raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {width}x{height}")
                    video = container.add_stream(VIDEO_CODEC, rate=int(fps))
                    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                    video.options = {"crf": str(crf)}
                elif frame.shape[:2] != (video.height, video.width):
                    raise ValueError(f"frame {count} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"the first was {video.width}x{video.height}")
                container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                count += 1
            if video is None:
                raise ValueError("no frames to write")
            container.mux(video.encode())
            if audio is not None:
                _mux_audio(container, audio_stream, np.asarray(audio, np.float32), int(sample_rate))
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return path


def _mux_audio(container, stream, audio: np.ndarray, sample_rate: int, chunk: int = 1024):
    import av

    if audio.ndim != 1:
        raise ValueError(f"audio must be mono [N], got shape {audio.shape}")
    samples = np.clip(audio, -1.0, 1.0)
    for start in range(0, len(samples), chunk):
        piece = samples[start : start + chunk]
        frame = av.AudioFrame.from_ndarray(piece[None], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = fractions.Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def read_mp4(path: str | os.PathLike) -> dict:
    """Decode a video file: {"frames": uint8 [T, H, W, 3], "fps", "audio": float32 [N] (first channel) or None,
    "sample_rate", "audio_duration": seconds from the container (AAC decoding adds up to one 1024-sample frame
    of padding to the decoded samples; the container's duration does not)}."""
    result = {"audio": None, "sample_rate": None, "audio_duration": None}
    with _open(path) as container:
        rate = container.streams.video[0].average_rate
        result["fps"] = float(rate) if rate else None
        result["frames"] = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with _open(path) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            result["sample_rate"] = stream.rate
            if stream.duration is not None:
                result["audio_duration"] = float(stream.duration * stream.time_base)
            result["audio"] = decode_audio_stream(container)[0][:, 0]
    return result


def decode_audio_stream(container):
    """The first audio stream as float32 samples [N, C] in [-1, 1] (integer PCM scaled by its full range) and
    the time of its first frame in seconds (None without frames). A damaged stream ends at its last good frame."""
    import av

    stream = container.streams.audio[0]
    parts, start = [], None
    try:
        for frame in container.decode(stream):
            if start is None:
                start = frame.time
            samples = frame.to_ndarray()  # planar [C, N] or packed [1, N * C]
            samples = samples.T if frame.format.is_planar else samples.reshape(-1, len(frame.layout.channels))
            if np.issubdtype(samples.dtype, np.integer):
                samples = samples / float(np.iinfo(samples.dtype).max + 1)
            parts.append(samples.astype(np.float32))
    except av.error.FFmpegError:
        pass
    channels = len(stream.layout.channels) if stream.layout else 1
    return (np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)), start


class VideoError(ValueError):
    """A video file that cannot be read: missing, empty, not a video, or damaged."""


def _open(path):
    import av

    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise VideoError(f"{path}: not a readable video ({error})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    return container


def probe_video(path) -> dict:
    """Container facts without decoding: {"codec", "width", "height", "fps" (average rate, or None),
    "duration" (seconds, or None), "audio_streams"}."""
    with _open(path) as container:
        stream = container.streams.video[0]
        duration = None
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        return {
            "codec": stream.codec_context.name, "width": stream.codec_context.width,
            "height": stream.codec_context.height, "fps": float(stream.average_rate) if stream.average_rate else None,
            "duration": duration, "audio_streams": len(container.streams.audio),
        }


def iter_video_frames(path, fps: float = 25.0) -> Iterator[np.ndarray]:
    """Decode the first video stream and resample it to `fps` (uint8 RGB frames [H, W, 3]): output frame k shows
    the source frame on screen at time k / fps after the first frame, so variable frame rates come out regular.
    The count is the number of output instants before the last source frame ends (duration * fps, rounded up).
    A damaged stream ends at its last decodable frame; an unreadable file raises VideoError."""
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        default_duration = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / fps
        start, previous, previous_time, emitted = None, None, None, 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                time = frame.time if frame.time is not None else index * default_duration
                if start is None:
                    start = time
                # Every output instant before this frame's time shows the previous frame.
                while previous is not None and start + emitted / fps < time - 1e-6:
                    yield previous
                    emitted += 1
                previous, previous_time = frame.to_ndarray(format="rgb24"), time
        except av.error.FFmpegError:
            pass  # a truncated or damaged stream: keep what decoded
        if previous is None:
            raise VideoError(f"{path}: no decodable video frames")
        end = previous_time + default_duration
        while start + emitted / fps < end - 1e-6:
            yield previous
            emitted += 1


def read_video_audio(path, sample_rate: int = 16000) -> Optional[np.ndarray]:
    """The first audio stream as mono float32 at `sample_rate`, aligned to the first video frame (leading audio is
    cut, late-starting audio is padded with silence), or None when the file has no audio stream."""
    from vasa_jax.audio import to_mono

    with _open(path) as container:
        if not container.streams.audio:
            return None
        video_start = container.streams.video[0].start_time
        video_start = float(video_start * container.streams.video[0].time_base) if video_start is not None else 0.0
        samples, audio_start = decode_audio_stream(container)
        if not len(samples):
            return np.zeros((0,), np.float32)
        waveform = to_mono(samples, container.streams.audio[0].rate, sample_rate)
    if audio_start is None:
        audio_start = video_start
    offset = int(round((audio_start - video_start) * sample_rate))
    if offset > 0:
        waveform = np.concatenate([np.zeros(offset, np.float32), waveform])
    elif offset < 0:
        waveform = waveform[-offset:]
    return waveform
