r"""CAPP: VASA-1's contrastive audio-pose model (`vasa_jax.models.capp`), the CAPP score of `python -m
vasa_jax.evaluate videos --capp=WORKDIR`. Trained on a prepared real-video dataset (python -m vasa_jax.data.prepare).

Variants (`--config=configs/capp.py:VARIANT`):
  (none)     VASA-1's setup: 3 s windows, a 6-layer pose transformer (width 256), log-mel audio features.
  wav2vec2   the same over Wav2Vec2's last hidden layer (VASA-1 starts its audio encoder from Wav2Vec2; here the
             Wav2Vec2 network stays frozen and a transformer is trained on its features); set
             audio.checkpoint_dir to a Hugging Face Wav2Vec2 folder.
  tiny       2 layers of width 64, small batches: trains on a 2-core CPU in minutes (tests, the shared videos).
  synthetic_tiny  the tiny network on the synthetic speakers (their pitch nods with the speech's loudness: a known
             coupling, held-out speakers and speech in the test split).

Run:
  python -m vasa_jax.train --config=configs/capp.py --workdir=runs/capp --config.data.root=PREPARED
"""

import ml_collections


def get_config(variant: str = ""):
    config = ml_collections.ConfigDict()
    config.task = "capp"
    config.seed = 0
    # window: 75 frames = 3 s at 25 fps (VASA-1); pose_dim: yaw, pitch, roll
    config.model = dict(window=75, pose_dim=3, width=256, pose_layers=6, audio_layers=2, num_heads=4, embed_dim=256)
    config.audio = dict(kind="log_mel")  # vasa_jax.audio.make_audio_encoder's kind and options
    config.optimizer = dict(
        learning_rate=3e-4,
        end_learning_rate=1e-6,
        warmup_steps=500,
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    config.data = dict(
        source="prepared",  # or "synthetic" (vasa_jax.data.synthetic's speakers; data.synthetic sizes them)
        root="",  # the --output folder of python -m vasa_jax.data.prepare
        synthetic=dict(num_identities=64, num_test_identities=16, clips_per_identity=4, frames_per_clip=150),
        batch_size=64,  # groups per batch: a contrastive batch of batch_size * group windows
        seed=0,
        num_threads=4,
        stride=25,  # spacing of the groups' first windows, in frames (1 s)
        group=4,  # windows of one clip per item: each other's hard negatives (vasa_jax.data.capp)
        group_spacing=10,  # frames between a group's windows
        # Gaussian noise added to each frame's training pose, degrees: 0 for prepared data (its pose is read from
        # the frames as an evaluation reads it); the synthetic speakers' true pose is smoother than MediaPipe's
        # reading of their rendered frames (frame-to-frame change std 2.0-3.0 degrees against 0.7-1.0, measured).
        pose_jitter_degrees=0.0,
        eval_split="test",
        eval_windows=512,
    )
    config.mesh = dict(shape=(-1, 1), axes=("data", "fsdp"))
    config.sharding_rules = (("mlp", "fsdp"), ("embed", None))
    config.train = dict(
        num_steps=50_000,
        log_every=100,
        eval_every=2000,
        checkpoint_every=2000,
        sample_every=10**9,  # CAPP has no image samples
        keep_checkpoints=3,
    )
    if variant == "":
        pass
    elif variant == "wav2vec2":
        config.audio = dict(kind="wav2vec2", checkpoint_dir="", layer=-1)
    elif variant in ("tiny", "synthetic_tiny"):
        config.model.update(width=64, pose_layers=2, audio_layers=1, embed_dim=64)
        config.optimizer.update(learning_rate=1e-3, warmup_steps=20)
        config.data.update(batch_size=16, num_threads=2, stride=5, eval_windows=64)
        config.train.update(num_steps=300, log_every=25, eval_every=100, checkpoint_every=100)
        if variant == "synthetic_tiny":
            config.data.source = "synthetic"
            config.data.pose_jitter_degrees = 1.5
            config.data.synthetic.update(num_identities=32, num_test_identities=8, clips_per_identity=2)
    else:
        raise ValueError(f"unknown CAPP config variant {variant!r}; expected '', 'wav2vec2', 'tiny' or "
                         "'synthetic_tiny'")
    return config
