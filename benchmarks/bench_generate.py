"""Generation speed: renderer frames/s, full-pipeline frames/s (50 and 10 DDIM steps), streaming latency, memory.

  python benchmarks/bench_generate.py [--stage1 tiny|256|512] [--stage2 tiny|synthetic|vasa] [--seconds 10]
      [--render_batch 8]

Speed does not depend on the weights, so both networks are randomly initialised at the chosen sizes (stage 1:
configs/stage1.py variants, "256" being the default; stage 2: configs/stage2.py variants, "vasa" being VASA-1's
8-layer, 512-wide DiT) on log-mel audio features. Compile time is excluded (a warm-up call first) and reported
separately. Streaming latency is the time from the first audio chunk to the first rendered frames when the audio
is already there (compute latency), plus the audio a first window needs (W frames and the feature look-ahead),
which a live stream must wait for. Peak memory is the process's maximum resident set size.
"""

import argparse
import os
import resource
import sys
import time

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import stage1 as stage1_config  # noqa: E402
from configs import stage2 as stage2_config  # noqa: E402
from vasa_jax.audio import SAMPLE_RATE, make_audio_encoder  # noqa: E402
from vasa_jax.generate import POSE_DIM, TalkingHeadPipeline  # noqa: E402
from vasa_jax.models.stage1 import FaceLatentModel, Stage1ModelConfig  # noqa: E402
from vasa_jax.models.stage2 import MotionDiT, Stage2ModelConfig, example_inputs  # noqa: E402
from vasa_jax.sampling import MotionSampler  # noqa: E402


def build_pipeline(stage1_variant: str, stage2_variant: str, render_batch: int) -> TalkingHeadPipeline:
    config1 = stage1_config.get_config("" if stage1_variant == "256" else stage1_variant)
    config1.feature_nets.allow_random_init = True
    model1 = FaceLatentModel(Stage1ModelConfig.from_config(config1.model))
    size = model1.cfg.image_size
    image = np.zeros((1, size, size, 3), np.float32)
    params1 = nn.unbox(jax.jit(lambda key: model1.init(key, image, image))(jax.random.key(0))["params"])
    encoder = make_audio_encoder("log_mel")
    config2 = stage2_config.get_config("" if stage2_variant == "vasa" else stage2_variant)
    cfg2 = Stage2ModelConfig.from_config({
        **dict(config2.model), **dict(config2.diffusion), "motion_dim": POSE_DIM + 3 * model1.cfg.num_keypoints,
        "audio_dim": encoder.feature_dim, "emotion_dim": 8})
    params2 = nn.unbox(MotionDiT(cfg2).init(jax.random.key(1), *example_inputs(cfg2))["params"])
    m, a = cfg2.motion_dim, cfg2.audio_dim
    stats = {"motion_mean": np.zeros(m), "motion_std": np.full(m, 0.1), "audio_mean": np.zeros(a),
             "audio_std": np.ones(a), "distance_mean": np.zeros(1), "distance_std": np.ones(1)}
    # The benchmark's portrait is noise: no face to find, so the centred square.
    return TalkingHeadPipeline(model1, params1, MotionSampler(cfg2, params2, stats), encoder, render_batch,
                               crop="center")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage1", default="tiny", choices=["tiny", "256", "512"])
    parser.add_argument("--stage2", default="tiny", choices=["tiny", "synthetic", "vasa"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--render_batch", type=int, default=8)
    args = parser.parse_args()

    pipeline = build_pipeline(args.stage1, args.stage2, args.render_batch)
    cfg2, size = pipeline.sampler.cfg, pipeline.resolution
    print(f"device {jax.devices()[0].device_kind}; stage 1 {args.stage1} ({size}x{size}), stage 2 {args.stage2} "
          f"({cfg2.num_layers} layers, width {cfg2.width}, W={cfg2.window}); render batch {args.render_batch}")
    rng = np.random.default_rng(0)
    portrait = rng.random((size, size, 3)).astype(np.float32)
    speech = (0.1 * rng.normal(size=int(args.seconds * SAMPLE_RATE))).astype(np.float32)
    frames_total = int(args.seconds * 25)

    started = time.perf_counter()
    source = pipeline.encode_source(portrait)
    motion = np.zeros((frames_total, cfg2.motion_dim), np.float32)
    jax.block_until_ready(pipeline.render(source, motion[: args.render_batch]))
    print(f"compile (encoder + renderer): {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    pipeline.render(source, motion)
    elapsed = time.perf_counter() - started
    print(f"renderer: {frames_total / elapsed:.1f} frames/s ({elapsed / frames_total * 1000:.1f} ms/frame)")

    for num_steps in (50, 10):
        started = time.perf_counter()
        pipeline.generate(portrait, speech[: SAMPLE_RATE * 2], num_steps=num_steps)  # compile this step count
        compile_s = time.perf_counter() - started
        started = time.perf_counter()
        video = pipeline.generate(portrait, speech, num_steps=num_steps)
        elapsed = time.perf_counter() - started
        print(f"full pipeline, {num_steps} DDIM steps: {len(video.frames) / elapsed:.1f} frames/s "
              f"(first call with compile {compile_s:.1f} s)")
        chunk = SAMPLE_RATE // 25  # 40 ms chunks
        stream = pipeline.stream(portrait, (speech[i : i + chunk] for i in range(0, len(speech), chunk)),
                                 num_steps=num_steps)
        next(stream)
        print(f"streaming, {num_steps} steps: first frames {pipeline.last_stream_latency * 1000:.0f} ms after the "
              f"first chunk (audio already there); a live stream also waits for {cfg2.window / 25:.2f} s of "
              f"speech + at most {pipeline.audio_encoder.context.lookahead_seconds:.2f} s feature look-ahead")
        stream.close()
    media = os.environ.get("VASA_MEDIA_DIR")
    if media:  # face detection and crop of a real photo, once per video (crop="face", the default)
        from vasa_jax.generate import load_image, portrait_crop

        photo = load_image(os.path.join(media, "images", "hallo_ref6.jpg"))
        portrait_crop(photo, size)
        started = time.perf_counter()
        portrait_crop(photo, size)
        print(f"face detection + crop of a {photo.shape[1]}x{photo.shape[0]} photo: "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
