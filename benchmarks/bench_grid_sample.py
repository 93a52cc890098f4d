"""Benchmark: vasa_jax grid_sample_3d vs torch.nn.functional.grid_sample on CPU.

Times forward and forward+backward (gradients w.r.t. volume and grid of
``sum(out * cotangent)``) for a full-resolution face-vid2vid style warp:
volume [B, 16, 64, 64, C] sampled at a [B, 16, 64, 64, 3] grid of random
points in [-1.1, 1.1] (B = --batch, default 1).  Reports the median over ``--repeats`` runs after a
warmup, in milliseconds.

Usage:
  python benchmarks/bench_grid_sample.py [--repeats 10] [--sizes 32,96] [--batch 1]
      [--autodiff]   # also time plain autodiff through the forward
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vasa_jax.ops import warp  # noqa: E402


def _median_ms(fn, repeats, warmup_s=1.0):
    # Warm up for a fixed wall time rather than a fixed count: the first few
    # hundred ms after compilation are consistently slower (allocator and
    # page-cache warm-up), which would otherwise skew short runs.
    fn()
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _autodiff_grid_sample_3d(volume, grid, align_corners, padding_mode):
    """Same forward math as grid_sample_3d, unchunked, differentiated by autodiff."""
    b, d, h, w, c = volume.shape
    sample = lambda table, coords: warp._interpolate(
        table, coords, (d, h, w), align_corners, padding_mode)
    out = jax.vmap(sample)(volume.reshape(b, -1, c), grid.reshape(b, -1, 3).astype(jnp.float32))
    return out.reshape(*grid.shape[:4], c)


def bench_size(channels, repeats, spatial=(16, 64, 64), autodiff=False,
               align_corners=False, padding_mode="zeros", batch=1):
    rng = np.random.default_rng(0)
    vol_np = rng.standard_normal((batch, *spatial, channels)).astype(np.float32)
    grid_np = rng.uniform(-1.1, 1.1, (batch, *spatial, 3)).astype(np.float32)
    cot_np = rng.standard_normal((batch, *spatial, channels)).astype(np.float32)
    rows = []

    # --- JAX ---------------------------------------------------------------
    vol, grid, cot = map(jnp.asarray, (vol_np, grid_np, cot_np))
    variants = {"jax": warp.grid_sample_3d}
    if autodiff:
        variants["jax-autodiff"] = lambda v, g, **kw: _autodiff_grid_sample_3d(
            v, g, kw["align_corners"], kw["padding_mode"])
    for name, fn in variants.items():
        kw = dict(align_corners=align_corners, padding_mode=padding_mode)
        fwd = jax.jit(lambda v, g, fn=fn: fn(v, g, **kw))

        def loss(v, g, c, fn=fn):
            return jnp.sum(fn(v, g, **kw) * c)

        # The cotangent is an argument (not a closure) so it is not baked into
        # the executable as a constant.
        fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        t_f = _median_ms(lambda: fwd(vol, grid).block_until_ready(), repeats)
        t_fb = _median_ms(lambda: jax.block_until_ready(fwd_bwd(vol, grid, cot)), repeats)
        rows.append((name, t_f, t_fb))

    # --- torch (NCDHW layout, default thread count) --------------------------
    tv = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol_np, -1, 1)))
    tg = torch.from_numpy(grid_np)
    tc = torch.from_numpy(np.ascontiguousarray(np.moveaxis(cot_np, -1, 1)))

    def t_fwd():
        with torch.no_grad():
            torch.nn.functional.grid_sample(
                tv, tg, mode="bilinear", padding_mode=padding_mode,
                align_corners=align_corners)

    def t_fwd_bwd():
        v = tv.detach().requires_grad_(True)
        g = tg.detach().requires_grad_(True)
        out = torch.nn.functional.grid_sample(
            v, g, mode="bilinear", padding_mode=padding_mode,
            align_corners=align_corners)
        torch.autograd.grad((out * tc).sum(), (v, g))

    rows.append(("torch", _median_ms(t_fwd, repeats), _median_ms(t_fwd_bwd, repeats)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", type=str, default="32,96",
                        help="comma-separated channel counts C of the volume")
    parser.add_argument("--autodiff", action="store_true",
                        help="also time plain autodiff (no custom_vjp)")
    parser.add_argument("--padding-mode", default="zeros", choices=("zeros", "border"))
    parser.add_argument("--align-corners", action="store_true")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)

    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"(threads={torch.get_num_threads()}), padding_mode={args.padding_mode}, "
          f"align_corners={args.align_corners}, repeats={args.repeats}")
    header = f"{'volume':<22} {'impl':<13} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd x':>7} {'f+b x':>7}"
    print(header)
    print("-" * len(header))
    for c in (int(s) for s in args.sizes.split(",")):
        rows = bench_size(c, args.repeats, autodiff=args.autodiff,
                          align_corners=args.align_corners, padding_mode=args.padding_mode,
                          batch=args.batch)
        torch_f, torch_fb = rows[-1][1], rows[-1][2]
        for name, t_f, t_fb in rows:
            print(f"{str([args.batch, 16, 64, 64, c]):<22} {name:<13} {t_f:9.2f} {t_fb:11.2f} "
                  f"{torch_f / t_f:7.2f} {torch_fb / t_fb:7.2f}")
    print("speedup columns = torch time / impl time (>1 means faster than torch)")


if __name__ == "__main__":
    main()
