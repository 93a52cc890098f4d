"""Training metrics on the host: console progress with rates and ETA, TensorBoard event files, a NaN/Inf guard."""

import math
import os
import time
from typing import Mapping

import numpy as np


class NonFiniteLossError(FloatingPointError):
    """Raised when a logged metric is NaN or Inf; training stops instead of writing a poisoned checkpoint."""


def check_finite(metrics: Mapping[str, float], step: int) -> None:
    bad = sorted(name for name, value in metrics.items() if not math.isfinite(float(value)))
    if bad:
        raise NonFiniteLossError(
            f"non-finite values at step {step}: {', '.join(bad)}; stopping (the last checkpoint is intact)"
        )


class MetricWriter:
    """Writes scalars and images to TensorBoard event files under <workdir>/tensorboard (process 0 only) and prints
    a progress line with the step rate, examples per second and the ETA."""

    def __init__(self, workdir: str, num_steps: int, batch_size: int, enabled: bool = True):
        self.enabled = enabled
        self.num_steps = num_steps
        self.batch_size = batch_size
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter  # writes event files without TensorFlow

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._last_time = None
        self._last_step = None

    def write_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(f"{prefix}/{name}", float(value), step)
        self._writer.flush()

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.enabled:
            self._writer.add_image(name, image, step, dataformats="HWC")
            self._writer.flush()

    def progress(self, step: int, scalars: Mapping[str, float]) -> None:
        now = time.perf_counter()
        rate = ""
        if self._last_time is not None and step > self._last_step:
            steps_per_s = (step - self._last_step) / (now - self._last_time)
            eta = (self.num_steps - step) / max(steps_per_s, 1e-9)
            rate = f" | {steps_per_s:.2f} steps/s, {steps_per_s * self.batch_size:.1f} ex/s, ETA {_duration(eta)}"
            self.write_scalars(step, {"steps_per_second": steps_per_s}, prefix="perf")
        self._last_time, self._last_step = now, step
        if self.enabled:
            shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(scalars.items()))
            print(f"step {step}/{self.num_steps}{rate} | {shown}", flush=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
