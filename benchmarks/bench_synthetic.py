"""Benchmark: procedural synthetic talking heads (vasa_jax.data.synthetic), pure numpy on CPU.

Reports
  * the time to generate a dataset of ``--clips`` clips x ``--seconds`` s at 64x64
    (identities, per-frame states, speech audio and rendering of every frame);
  * rendering throughput (frames/s) of whole clips at 64, 256 and 512 (and 128);
  * the grain stage-1 source: items/s (three frames rendered per item, cold clip cache).

Usage:
  python benchmarks/bench_synthetic.py [--clips 100] [--seconds 4] [--resolutions 64,128,256,512]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from vasa_jax.data import synthetic as S  # noqa: E402


def _dataset(num_clips: int, seconds: float, resolution: int, fps: int = 25):
    frames = int(round(seconds * fps))
    t0 = time.perf_counter()
    t_states = t_render = 0.0
    checksum = 0
    for c in range(num_clips):
        a = time.perf_counter()
        ident = S.sample_identity(c // 4)
        clip = S.make_clip(c % 4, ident, frames, fps)
        b = time.perf_counter()
        video = S.render_clip(clip, resolution)
        t_states += b - a
        t_render += time.perf_counter() - b
        checksum += int(video[:, ::16, ::16].sum())
    return time.perf_counter() - t0, t_states, t_render, num_clips * frames, checksum


def _throughput(resolution: int, frames: int, supersample=None):
    clip = S.make_clip(0, S.sample_identity(0), frames)
    S.render_clip(clip, resolution, supersample=supersample)  # warm caches
    t0 = time.perf_counter()
    S.render_clip(clip, resolution, supersample=supersample)
    return frames / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--resolutions", default="64,128,256,512")
    parser.add_argument("--source-items", type=int, default=200)
    args = parser.parse_args()

    total, t_states, t_render, nframes, _ = _dataset(args.clips, args.seconds, 64)
    print(f"dataset: {args.clips} clips x {args.seconds:g} s at 64x64 = {nframes} frames")
    print(f"  total {total:.2f} s  (states+audio {t_states:.2f} s, rendering {t_render:.2f} s, "
          f"{t_render / nframes * 1e3:.2f} ms/frame, {nframes / total:.0f} frames/s overall)")
    print()
    print(f"{'resolution':>10} {'supersample':>11} {'frames/s':>10} {'ms/frame':>9}")
    for res in [int(r) for r in args.resolutions.split(",") if r]:
        frames = {64: 200, 128: 100}.get(res, 50 if res <= 256 else 20)
        configs = [None, 1] if res <= 128 else [None]
        for ss in configs:
            fps = _throughput(res, frames, ss)
            ss_eff = ss if ss is not None else (2 if res <= 128 else 1)
            print(f"{res:>10} {ss_eff:>11} {fps:>10.1f} {1e3 / fps:>9.2f}")
    print()
    cfg = S.SyntheticConfig(num_identities=1000, clips_per_identity=4, resolution=64)
    src = S.SyntheticStage1Source(cfg, "train")
    rng = np.random.default_rng(0)
    idx = rng.integers(len(src), size=args.source_items)
    src[int(idx[0])]
    t0 = time.perf_counter()
    for i in idx:
        src[int(i)]
    dt = time.perf_counter() - t0
    print(f"SyntheticStage1Source(64x64, random indices, cold clip cache): {len(idx) / dt:.1f} items/s "
          f"({dt / len(idx) * 1e3:.2f} ms/item)")


if __name__ == "__main__":
    main()
