"""Motion generation with a trained stage-2 model: DDIM with classifier-free guidance over sliding windows.

Audio of any length is cut into consecutive windows of W frames. Each window is generated conditioned on its own
audio and on the last K frames (motion and audio) of the window before it; the first window has a null context.
The last window's missing audio frames are marked invalid (the network was trained with truncated audio tails)
and its extra frames are dropped. One compiled function serves every window (fixed shapes), so audio length
never triggers a recompile.
"""

import dataclasses
from typing import Iterable, Iterator, Mapping, Optional

import jax
import numpy as np

from vasa_jax.models import diffusion
from vasa_jax.models.stage2 import CONDITIONS, MotionDiT, Stage2ModelConfig


@dataclasses.dataclass(frozen=True)
class Controls:
    """The optional controls of one generation. None means 'not given': that condition is nulled."""

    gaze: Optional[np.ndarray] = None  # (theta, phi) in degrees
    distance: Optional[float] = None  # normalised head distance, in the dataset's units (not standardised)
    emotion: Optional[np.ndarray] = None  # emotion offset vector


def distance_range(stats: Mapping[str, np.ndarray]) -> tuple:
    """(low, high): the head distances a stage 2 may be asked for, those of its train clips (datasets written
    before the range was recorded: mean +- 3 std)."""
    if "distance_min" in stats:
        return float(np.min(stats["distance_min"])), float(np.max(stats["distance_max"]))
    mean, std = float(np.mean(stats["distance_mean"])), float(np.mean(stats["distance_std"]))
    return mean - 3 * std, mean + 3 * std


def check_controls(controls: Controls, stats: Mapping[str, np.ndarray]) -> None:
    """ValueError for a control outside what this model was trained on: a head distance outside the range of its
    training clips (the condition network never saw it: the motion it would give is arbitrary)."""
    if controls.distance is not None:
        low, high = distance_range(stats)
        distance = float(np.asarray(controls.distance, np.float64).reshape(-1)[0])
        if not low <= distance <= high:
            raise ValueError(f"distance {distance:g}: outside the head distances the model was trained on "
                             f"[{low:.4g}, {high:.4g}]")


class MotionSampler:
    """Generates motion [T, M] (in the dataset's units) from audio features [T, A] (in the encoder's units)."""

    def __init__(self, model_cfg: Stage2ModelConfig, params, stats: Mapping[str, np.ndarray]):
        self.cfg = model_cfg
        self.params = params
        self.stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
        self.abar = diffusion.alphas_cumprod(model_cfg.num_train_steps, model_cfg.schedule)
        self.model = MotionDiT(model_cfg)
        self._window_fns = {}

    @classmethod
    def from_trained(cls, stage2) -> "MotionSampler":
        """From a trained model read by `vasa_jax.checkpoints.load_stage2`."""
        return cls(stage2.model_cfg, stage2.params, stage2.stats)

    def _window_fn(self, num_steps: int, guidance: tuple):
        key = (num_steps, guidance)
        if key not in self._window_fns:
            scales = dict(guidance)
            apply = lambda x, t, c, k: self.model.apply({"params": self.params}, x, t, c, k)
            shape = (1, self.cfg.window, self.cfg.motion_dim)
            self._window_fns[key] = jax.jit(
                lambda rng, conditions, keep: diffusion.ddim_sample(
                    apply, rng, shape, conditions, keep, self.abar, num_steps, scales
                )[0]
            )
        return self._window_fns[key]

    def windows(self, audio: np.ndarray, **kwargs) -> Iterator[np.ndarray]:
        """Yield the motion of each window [<= W, M] for audio features [T, A], one window at a time."""
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 2 or audio.shape[1] != self.cfg.audio_dim:
            raise ValueError(f"expected audio features [T, {self.cfg.audio_dim}], got {audio.shape}")
        w = self.cfg.window
        return self.windows_from_chunks((audio[s : s + w] for s in range(0, len(audio), w)), **kwargs)

    def windows_from_chunks(
        self,
        audio_chunks: Iterable[np.ndarray],
        controls: Controls = Controls(),
        num_steps: int = 50,
        guidance: Mapping[str, float] = (("audio", 0.5), ("gaze", 1.0)),
        seed: int = 0,
        null_audio: bool = False,
    ) -> Iterator[np.ndarray]:
        """The streaming path: audio features arrive window by window (chunks of W frames [W, A], the last one
        possibly shorter) and the motion of each window [<= W, M] is yielded as soon as it is generated."""
        cfg, s = self.cfg, self.stats
        check_controls(controls, s)
        guidance = tuple(sorted(dict(guidance).items()))
        unknown = sorted(set(dict(guidance)) - set(CONDITIONS))
        if unknown:
            raise ValueError(f"guidance for unknown conditions {unknown}; conditions: {list(CONDITIONS)}")
        window_fn = self._window_fn(int(num_steps), guidance)
        w, k = cfg.window, cfg.context
        keep = {name: np.ones((1,), bool) for name in CONDITIONS}
        keep["audio"][:] = not null_audio
        globals_ = {}
        for name, value, width in (("gaze", controls.gaze, 2), ("distance", controls.distance, 1),
                                   ("emotion", controls.emotion, cfg.emotion_dim)):
            keep[name][:] = value is not None
            vec = np.zeros((width,), np.float32) if value is None else np.asarray(value, np.float32).reshape(width)
            if name == "gaze" and value is not None:
                vec = np.deg2rad(vec)
            if name == "distance" and value is not None:
                vec = (vec - s["distance_mean"]) / s["distance_std"]
            globals_[name] = vec[None]
        previous_motion = np.zeros((1, k, cfg.motion_dim), np.float32)
        previous_audio = np.zeros((1, k, cfg.audio_dim), np.float32)
        keep["previous"][:] = False
        rng = jax.random.key(seed)
        for index, chunk in enumerate(audio_chunks):
            chunk = np.asarray(chunk, np.float32)
            if chunk.ndim != 2 or chunk.shape[1] != cfg.audio_dim or not 0 < len(chunk) <= w:
                raise ValueError(f"expected an audio feature chunk [1..{w}, {cfg.audio_dim}], got {chunk.shape}")
            n = len(chunk)
            padded = np.zeros((1, w, cfg.audio_dim), np.float32)
            padded[0, :n] = (chunk - s["audio_mean"]) / s["audio_std"]
            conditions = {
                "audio": padded,
                "audio_valid": (np.arange(w) < n)[None],
                "previous_motion": previous_motion,
                "previous_audio": previous_audio,
                **globals_,
            }
            generated = np.asarray(window_fn(jax.random.fold_in(rng, index), conditions, dict(keep)))
            previous_motion = generated[None, n - k : n] if n >= k else _shift_in(previous_motion, generated[:n])
            previous_audio = padded[:, n - k : n] if n >= k else _shift_in(previous_audio, padded[0, :n])
            keep["previous"][:] = True
            yield generated[:n] * s["motion_std"] + s["motion_mean"]

    def sample(self, audio: np.ndarray, **kwargs) -> np.ndarray:
        """All windows of `windows(...)` joined: motion [T, M] for audio features [T, A]."""
        parts = list(self.windows(audio, **kwargs))
        if not parts:
            return np.zeros((0, self.cfg.motion_dim), np.float32)
        return np.concatenate(parts)


def _shift_in(context: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The last K frames of (context followed by frames), for windows shorter than K."""
    k = context.shape[1]
    return np.concatenate([context[0], frames])[-k:][None]
