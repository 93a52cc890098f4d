r"""Stage 2: the motion diffusion transformer, trained on a motion dataset (python -m vasa_jax.data.encode_motion).

Variants (`--config=configs/stage2.py:VARIANT`):
  (none)     VASA-1's network: 8 layers, width 512, 8 heads; windows of W=50 frames with K=10 context frames.
  synthetic  a half-size network (4 layers, width 256) for motion datasets encoded from the synthetic heads.
  tiny       2 layers, width 64, W=25, K=5: trains on a 2-core CPU in minutes (tests and the quickstart).
  real       VASA-1's network on a motion dataset encoded from prepared real video
             (python -m vasa_jax.data.encode_motion --prepared=DIR): the conditions are the preparation's labels.
  real_tiny  the tiny network on such a dataset, with batches and evaluation sized for a handful of clips (CPU checks).

Run:
  python -m vasa_jax.train --config=configs/stage2.py --workdir=runs/stage2 --config.data.root=MOTION_DATASET
The motion, audio and emotion dimensions come from the dataset's manifest.json.
"""

import ml_collections


def get_config(variant: str = ""):
    config = ml_collections.ConfigDict()
    config.task = "stage2"
    config.seed = 0
    config.model = dict(window=50, context=10, width=512, num_layers=8, num_heads=8, mlp_ratio=4)
    config.diffusion = dict(
        num_train_steps=1000,  # T (VASA does not give it)
        schedule="cosine",
    )
    # Training-time condition dropout (VASA: 0.1 each, 0.5 for the previous window) and audio-tail truncation.
    config.condition_dropout = dict(
        audio=0.1,
        gaze=0.1,
        distance=0.1,
        emotion=0.1,
        previous=0.5,
        audio_tail=0.1,  # probability of cutting the tail of the window's audio
        audio_tail_max_fraction=0.5,  # the longest cut, as a fraction of the window
    )
    # Sampling defaults (VASA: 50 steps; guidance audio 0.5, gaze 1.0).
    config.sampling = dict(num_steps=50, guidance=dict(audio=0.5, gaze=1.0))
    config.optimizer = dict(
        learning_rate=1e-4,
        end_learning_rate=1e-6,
        warmup_steps=1000,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=1e-2,
        grad_clip_norm=1.0,
    )
    config.data = dict(
        root="",  # the motion dataset folder
        batch_size=64,
        seed=0,
        num_threads=4,
        stride=0,  # window start spacing in frames; 0 means W // 2
        eval_windows=256,
        eval_split="test",  # the split the held-out x0 error is measured on
    )
    config.mesh = dict(shape=(-1, 1), axes=("data", "fsdp"))
    config.sharding_rules = (("mlp", "fsdp"), ("embed", None), ("conv_in", None), ("conv_out", "fsdp"))
    config.train = dict(
        num_steps=300_000,
        log_every=100,
        eval_every=5000,
        checkpoint_every=5000,
        sample_every=10**9,  # stage 2 has no image samples
        keep_checkpoints=3,
        # "bfloat16": the transformer's arithmetic in bfloat16, float32 parameters, optimizer state and loss
        # (vasa_jax.ops.precision; attention logits and LayerNorm statistics stay float32); evaluation float32.
        compute_dtype="float32",
    )
    if variant in ("", "real"):
        pass
    elif variant == "synthetic":
        config.model.update(width=256, num_layers=4)
        config.data.batch_size = 32
        config.train.update(num_steps=20_000, eval_every=1000, checkpoint_every=1000)
    elif variant in ("tiny", "real_tiny"):
        config.model.update(window=25, context=5, width=64, num_layers=2, num_heads=4)
        config.diffusion.num_train_steps = 100
        config.optimizer.update(learning_rate=1e-3, warmup_steps=50)
        config.data.update(batch_size=16, num_threads=2, eval_windows=64)
        config.train.update(num_steps=500, log_every=50, eval_every=250, checkpoint_every=250)
        if variant == "real_tiny":  # a few prepared clips: windows every 5 frames, small batches
            config.data.update(batch_size=8, stride=5, eval_windows=32)
    else:
        raise ValueError(f"unknown stage-2 config variant {variant!r}; expected '', 'synthetic', 'tiny', 'real' or "
                         "'real_tiny'")
    return config
