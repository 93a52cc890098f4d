"""Stage-2 speed: training samples per second and milliseconds of compute per generated second of motion.

  python benchmarks/bench_stage2.py [--variant tiny|""] [--batch_size 64] [--steps 20]

Builds a small ground-truth motion dataset (synthetic, no stage 1 needed), times jitted training steps of the
chosen DiT config (compile excluded), then times sliding-window generation of 20 s of audio features with 50 and
10 DDIM steps (audio and gaze guidance on: 3 network passes per step, batched into one call).
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import stage2 as stage2_config  # noqa: E402
from vasa_jax.audio import LogMelEncoder  # noqa: E402
from vasa_jax.data import motion, synthetic  # noqa: E402
from vasa_jax.data.encode_motion import build  # noqa: E402
from vasa_jax.sampling import Controls, MotionSampler  # noqa: E402
from vasa_jax.train import loop, sharding  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="bench_stage2_")
    data = synthetic.SyntheticConfig(num_identities=8, num_test_identities=1, clips_per_identity=2,
                                     frames_per_clip=100, resolution=32)
    build(root, motion.ground_truth_motion, LogMelEncoder(), data, {"source": "synthetic"}, log=lambda _: None)
    config = stage2_config.get_config(args.variant)
    config.data.update(root=root, batch_size=args.batch_size, num_threads=1)
    task = loop.make_task(config)
    mesh = sharding.make_mesh((-1, 1), ("data", "fsdp"))
    state, shardings = loop.create_sharded_state(task, config, mesh)
    step = loop.compile_train_step(task, mesh, shardings, {})
    batch = sharding.global_batch(next(task.train_iterator(0, 1)), mesh)
    state, metrics = step(state, batch, {})
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch, {})
    jax.block_until_ready(metrics)
    per_step = (time.perf_counter() - start) / args.steps
    c = task.model_cfg
    print(f"device {jax.devices()[0].device_kind} x{len(jax.devices())}; DiT {c.num_layers} layers, width {c.width}, "
          f"W={c.window}, K={c.context}")
    print(f"training: {per_step * 1000:.1f} ms/step at batch {args.batch_size} = {args.batch_size / per_step:.0f} "
          f"windows/s = {args.batch_size * c.window / per_step:.0f} motion frames/s")

    stats = motion.read_json(os.path.join(root, motion.STATS))
    sampler = MotionSampler(task.model_cfg, jax.device_get(state["params"]["dit"]), stats)
    frames = int(args.seconds * 25)
    audio = np.random.default_rng(0).normal(size=(frames, c.audio_dim)).astype(np.float32)
    for num_steps in (50, 10):
        sampler.sample(audio[: c.window], num_steps=num_steps, controls=Controls(gaze=np.zeros(2)))  # compile
        start = time.perf_counter()
        sampler.sample(audio, num_steps=num_steps, controls=Controls(gaze=np.zeros(2)))
        elapsed = time.perf_counter() - start
        print(f"generation, {num_steps} DDIM steps: {elapsed / args.seconds * 1000:.1f} ms per second of motion "
              f"({frames / elapsed:.0f} frames/s)")


if __name__ == "__main__":
    main()
