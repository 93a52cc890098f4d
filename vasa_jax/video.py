"""Writing and reading talking-head videos: H.264 mp4 with the speech muxed in (PyAV, which bundles FFmpeg and
libx264, so no system FFmpeg is needed).

`write_mp4` is atomic: it encodes into a hidden temporary file beside the target and renames it only when the
file is complete, so a failure (or a kill) never leaves a partial OUT.mp4 behind.
"""

import fractions
import os
from typing import Iterable, Optional

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
    import av

    result = {"audio": None, "sample_rate": None, "audio_duration": None}
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        rate = container.streams.video[0].average_rate
        result["fps"] = float(rate) if rate else None
        result["frames"] = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(os.fspath(path)) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            result["sample_rate"] = stream.rate
            if stream.duration is not None:
                result["audio_duration"] = float(stream.duration * stream.time_base)
            parts = []
            for frame in container.decode(audio=0):
                samples = frame.to_ndarray()
                parts.append(samples[0] if frame.format.is_planar else samples.reshape(-1, frame.layout.nb_channels)[:, 0])
            result["audio"] = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,), np.float32)
    return result
