"""Training metrics on the host: console progress with rates and ETA, TensorBoard event files, a NaN/Inf guard."""

import io
import math
import time
from typing import Mapping

import numpy as np

from vasa_jax import storage


class NonFiniteLossError(FloatingPointError):
    """Raised when a logged metric is NaN or Inf; training stops instead of writing a poisoned checkpoint."""


def check_finite(metrics: Mapping[str, float], step: int) -> None:
    bad = sorted(name for name, value in metrics.items() if not math.isfinite(float(value)))
    if bad:
        raise NonFiniteLossError(
            f"non-finite values at step {step}: {', '.join(bad)}; stopping (the last checkpoint is intact)"
        )


# Dense bfloat16 peak FLOP/s of one device (vendors' data sheets), by a substring of jax's `device_kind`; the more
# specific names first. Model FLOPs utilisation is reported against these whatever the compute dtype.
PEAK_BF16_FLOPS = (
    ("TPU v6 lite", 918e12),  # v6e
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5", 459e12),  # v5p
    ("TPU v4", 275e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
)


def peak_flops_per_second(device_kind: str) -> float | None:
    """The device's dense bfloat16 peak FLOP/s, or None when it is not in `PEAK_BF16_FLOPS` (CPUs among them)."""
    for name, peak in PEAK_BF16_FLOPS:
        if name in device_kind:
            return peak
    return None


def compiled_flops(compiled) -> float | None:
    """FLOPs of one run of a compiled jax program on one device, from XLA's cost analysis (None if it has none).
    For a program partitioned over a mesh this is one device's share; it counts what runs, so a rematerialised
    step's recomputation is included."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


class MetricWriter:
    """Writes scalars and images to TensorBoard event files under <workdir>/tensorboard (process 0 only) and prints
    a progress line with the step rate, examples per second, the ETA and, once `set_step_flops` gave the step's
    FLOPs, the achieved FLOP/s per device and the model FLOPs utilisation against the device's peak."""

    def __init__(self, workdir: str, num_steps: int, batch_size: int, enabled: bool = True):
        self.enabled = enabled
        self.num_steps = num_steps
        self.batch_size = batch_size
        self.step_flops = None  # per device
        self.peak_flops = None  # per device, per second
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter  # writes event files without TensorFlow

            _register_url_event_files()
            self._writer = SummaryWriter(storage.join(workdir, "tensorboard"))
        self._last_time = None
        self._last_step = None

    def set_step_flops(self, step_flops: float | None, peak_flops: float | None) -> None:
        """One device's FLOPs per training step and its peak FLOP/s (either may be None: unknown)."""
        self.step_flops, self.peak_flops = step_flops, peak_flops
        if self.enabled and step_flops is not None:
            peak = f"; peak {peak_flops / 1e12:.0f} TFLOP/s per device" if peak_flops else ""
            print(f"{step_flops / 1e9:.4g} GFLOP per step per device{peak}", flush=True)

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
            perf = {"steps_per_second": steps_per_s}
            if self.step_flops is not None:
                perf["tflops_per_device"] = steps_per_s * self.step_flops / 1e12
                rate += f", {perf['tflops_per_device']:.3g} TFLOP/s per device"
                if self.peak_flops:
                    perf["mfu"] = steps_per_s * self.step_flops / self.peak_flops
                    rate += f", MFU {perf['mfu']:.1%}"
            self.write_scalars(step, perf, prefix="perf")
        self._last_time, self._last_step = now, step
        if self.enabled:
            shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(scalars.items()))
            print(f"step {step}/{self.num_steps}{rate} | {shown}", flush=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _UrlEventFile:
    """A TensorBoard event file at an object-store URL: the events are kept in memory and each flush uploads the
    whole file through etils.epath (an object cannot be appended to; tensorboardX's own S3 and GCS writers do the
    same, with boto3 or google-cloud-storage, which the project does not install)."""

    def __init__(self, path: str):
        self.path = path
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        storage.write_bytes(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _UrlEventFileFactory:
    def open(self, path: str) -> _UrlEventFile:
        return _UrlEventFile(path)

    def directory_check(self, path: str) -> None:
        storage.makedirs(path)


def _register_url_event_files() -> None:
    """Route tensorboardX's event files at object-store URLs through `_UrlEventFile`."""
    from tensorboardX import record_writer

    for scheme in storage.REMOTE_SCHEMES:
        record_writer.register_writer_factory(scheme, _UrlEventFileFactory())


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
