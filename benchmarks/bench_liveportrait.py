"""Benchmark: LivePortrait's renderer in JAX (vasa_jax.models.liveportrait) against the PyTorch modules of the same
layout (mimic-head, requirements-reference.txt), with the same weights, on this machine.

Per frame is what a talking-head stream pays for each output frame once the source photo is encoded: the warping
module (dense motion + warp of the 3D volume) and the SPADE decoder to 512x512, from the source's volume and the
source and driving keypoints. The source encoding (F and M, once per photo) is timed apart. Both sides get the same
published-size networks (the PyTorch ones with their default random initialisation, saved as the published files
and imported), the same thread count, and the median of --repeats runs after a warm-up, the two sides run in
turn (PyTorch's OpenMP threads wait passively, so neither side's idle threads spin on the other's cores);
float32 and bfloat16 (torch: CPU autocast; JAX: parameters and the volume cast, keypoints and the
deformation in float32). FLOPs per frame come from the compiled JAX step's cost analysis.

Usage:
  python benchmarks/bench_liveportrait.py [--repeats 5] [--batches 1,4] [--dtypes float32,bfloat16]
      [--threads 2] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# PyTorch's OpenMP threads otherwise spin for a while after each parallel region, on the cores JAX's run that
# follows needs: interleaved, JAX's frame took 11.3 s against 9.5 s alone (torch 11.5 s against 10.9 s alone);
# with passive waiting 10.0 s (torch 11.0 s). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vasa_jax.models import liveportrait as lp  # noqa: E402
from vasa_jax.ops import precision  # noqa: E402


def median_seconds(torch_fn, jax_fn, repeats):
    """Median seconds of each function over `repeats` runs after a warm-up (and JAX's compilation), the two run in
    turn: a shared machine's speed drifts by tens of percent within minutes, and interleaving gives both sides the
    same conditions (timing one side's runs, then the other's, moved the ratio from 0.94 to 1.28 between rows)."""
    torch_fn()
    jax_fn()
    times = {torch_fn: [], jax_fn: []}
    for _ in range(repeats):
        for fn in (torch_fn, jax_fn):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[torch_fn]), statistics.median(times[jax_fn])


def torch_networks():
    from mimic_head.modules.appearance_feature_extractor import AppearanceFeatureExtractor
    from mimic_head.modules.motion_extractor import MotionExtractor
    from mimic_head.modules.spade_generator import SPADEDecoder
    from mimic_head.modules.warping_network import WarpingNetwork

    cfg = lp.LivePortraitConfig()
    torch.manual_seed(0)
    return {
        "appearance_feature_extractor": AppearanceFeatureExtractor(
            3, cfg.block_expansion, cfg.num_down_blocks, cfg.max_features, cfg.volume_channels, cfg.volume_depth,
            cfg.num_resblocks),
        "motion_extractor": MotionExtractor(num_kp=cfg.num_keypoints, backbone="convnextv2_tiny"),
        "warping_module": WarpingNetwork(
            num_kp=cfg.num_keypoints, block_expansion=cfg.block_expansion, max_features=cfg.max_features,
            num_down_blocks=cfg.num_down_blocks, reshape_channel=cfg.volume_channels, estimate_occlusion_map=True,
            dense_motion_params=dict(block_expansion=cfg.dense_block_expansion, max_features=cfg.dense_max_features,
                                     num_blocks=cfg.dense_num_blocks, reshape_depth=cfg.volume_depth,
                                     compress=cfg.dense_compress)),
        "spade_generator": SPADEDecoder(upscale=cfg.decoder_upscale, max_features=cfg.max_features,
                                        block_expansion=cfg.block_expansion, out_channels=cfg.decoder_out_channels,
                                        num_down_blocks=cfg.num_down_blocks),
    }


def save_with_stitching(networks, folder):
    from mimic_head.modules.stitching_retargeting_network import StitchingRetargetingNetwork as MLP

    for name, module in networks.items():
        torch.save(module.state_dict(), os.path.join(folder, f"{name}.pth"))
    torch.save({"retarget_shoulder": MLP(126, [128, 128, 64], 65).state_dict(),
                "retarget_mouth": MLP(65, [128, 128, 64], 63).state_dict(),
                "retarget_eye": MLP(66, [256, 256, 128, 128, 64], 63).state_dict()},
               os.path.join(folder, "stitching_retargeting_module.pth"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    networks = {name: module.eval() for name, module in torch_networks().items()}
    with tempfile.TemporaryDirectory() as folder:
        save_with_stitching(networks, folder)
        variables = lp.load_liveportrait(folder)
    model = lp.LivePortrait()
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 1, size=(1, 256, 256, 3)).astype(np.float32)
    k = lp.LivePortraitConfig().num_keypoints
    print(f"device: {jax.devices()[0].device_kind}, threads {args.threads}, torch {torch.__version__}, "
          f"jax {jax.__version__}")

    rows = []
    # The source's encoding, once per photo (float32).
    source_t = torch.from_numpy(source).permute(0, 3, 1, 2).contiguous()

    def torch_encode_once():
        with torch.no_grad():
            return networks["appearance_feature_extractor"](source_t), networks["motion_extractor"](source_t)

    encode = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, y: m.encode(y)))
    torch_encode, jax_encode = median_seconds(
        torch_encode_once, lambda: jax.block_until_ready(encode(variables, source)), args.repeats)
    rows.append(dict(work="encode (F + M), once per photo", batch=1, dtype="float32",
                     torch_ms=1e3 * torch_encode, jax_ms=1e3 * jax_encode))

    volume = np.asarray(encode(variables, source)[0])
    for batch in [int(b) for b in args.batches.split(",")]:
        kp_source = rng.uniform(-0.6, 0.6, size=(batch, k, 3)).astype(np.float32)
        kp_driving = (kp_source + rng.normal(0, 0.05, size=kp_source.shape)).astype(np.float32)
        volumes = np.repeat(volume, batch, axis=0)
        for dtype in args.dtypes.split(","):
            jdtype = jnp.dtype(dtype)
            cast = precision.cast_floating(variables, jdtype)
            frame = jax.jit(lambda v, vol, s, d: model.apply(
                v, vol, s, d, method=lambda m, a, b, c: m.render_keypoints(a, b, c)))
            args_j = (cast, jnp.asarray(volumes, jdtype), jnp.asarray(kp_source), jnp.asarray(kp_driving))
            flops = frame.lower(*args_j).compile().cost_analysis()
            flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
            vol_t = torch.from_numpy(volumes).permute(0, 4, 1, 2, 3).contiguous()
            kp_s_t, kp_d_t = torch.from_numpy(kp_source), torch.from_numpy(kp_driving)

            def torch_frame():
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    out = networks["warping_module"](vol_t, kp_driving=kp_d_t, kp_source=kp_s_t)
                    return networks["spade_generator"](out["out"])

            torch_s, jax_s = median_seconds(torch_frame, lambda: jax.block_until_ready(frame(*args_j)), args.repeats)
            rows.append(dict(work="warp + decode, per frame", batch=batch, dtype=dtype,
                             torch_ms=1e3 * torch_s / batch, jax_ms=1e3 * jax_s / batch,
                             gflops_per_frame=flops / batch / 1e9))

    print(f"{'work':34s} {'batch':>5s} {'dtype':>9s} {'torch ms':>10s} {'jax ms':>10s} {'torch/jax':>9s} "
          f"{'GFLOP':>7s}")
    for row in rows:
        print(f"{row['work']:34s} {row['batch']:5d} {row['dtype']:>9s} {row['torch_ms']:10.1f} "
              f"{row['jax_ms']:10.1f} {row['torch_ms'] / row['jax_ms']:9.2f} "
              f"{row.get('gflops_per_frame', float('nan')):7.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
