"""The pixel judge (`vasa_jax.models.judge.FrameJudge`): training, saving, loading and reading frames.

Training frames are synthetic heads of the dataset's TRAIN identities rendered with every label drawn independently
per frame (head pose, gaze, eye openness, mouth opening, emotion). In the synthetic clips the speakers nod with their
speech, so a judge trained on clips could read the mouth off the head's pitch; here no label predicts another, and
the judge must look at the mouth to read the mouth. Blur, noise and contrast augmentation teach it to read the
softer frames a generator renders. Validation frames are drawn the same way from the TEST identities, which neither
the judge nor stage 1 ever trains on.

  python -m vasa_jax.judge --workdir runs/judge [--resolution 64] [--num_steps 1500]
"""

import dataclasses
import json
import os
import time
from typing import Dict

import numpy as np

from vasa_jax import storage
from vasa_jax.data import synthetic
from vasa_jax.models.judge import OUTPUT_SCALES, OUTPUTS, FrameJudge

PARAMS_FILE = "judge.npz"
INFO_FILE = "judge.json"


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    resolution: int = 64
    dataset_seed: int = 0  # the synthetic dataset whose train (test) identities give the training (validation) frames
    num_identities: int = 240
    frames_per_identity: int = 40
    num_val_identities: int = 16
    num_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    # Largest Gaussian blur sigma of the augmentation, in pixels at 64 x 64: enough for a soft rendering, not so much
    # that it erases the eyes (at 1.2 the judge could not learn eye openness or gaze at all).
    max_blur: float = 0.4
    max_noise: float = 0.03


def random_states(rng: np.random.Generator, count: int) -> synthetic.FrameState:
    """`count` frame states with every label independent: pose uniform over the synthetic clips' ranges, mouth,
    eyes and gaze as `synthetic.random_expression` draws them, a random emotion."""
    u = rng.uniform
    emotion = np.zeros((count, len(synthetic.EMOTIONS)), np.float32)
    kind = rng.integers(len(synthetic.EMOTIONS), size=count)
    weight = np.where(kind > 0, u(0.6, 1.0, count), 1.0)
    emotion[:, 0] = 1.0 - weight
    emotion[np.arange(count), kind] += weight
    return synthetic.FrameState(
        yaw=u(-35, 35, count), pitch=u(-20, 20, count), roll=u(-15, 15, count),
        tx=u(-0.08, 0.08, count), ty=u(-0.06, 0.06, count), scale=np.exp(u(-0.12, 0.12, count)),
        emotion=emotion, **synthetic.random_expression(rng, count),
    )


def state_labels(states: synthetic.FrameState) -> np.ndarray:
    """The judge's targets [N, len(OUTPUTS)] of frame states, in natural units (openings, degrees)."""
    batch = states.as_batch()
    return np.stack([batch[name] for name in OUTPUTS], -1).astype(np.float32)


def render_set(config: JudgeConfig, identity_ids, seed: int):
    """(frames uint8 [N, S, S, 3], labels float32 [N, len(OUTPUTS)]) of `frames_per_identity` random states per
    identity."""
    frames, labels = [], []
    for identity_id in identity_ids:
        rng = np.random.default_rng([seed, int(identity_id)])
        states = random_states(rng, config.frames_per_identity)
        identity = synthetic.get_identity(int(identity_id), config.dataset_seed)
        frames.append(synthetic.render_frames(identity, states, config.resolution))
        labels.append(state_labels(states))
    return np.concatenate(frames), np.concatenate(labels)


def _augment(images, rng, config: JudgeConfig):
    """Random per-example Gaussian blur, contrast, brightness and noise, [B, S, S, 3] in [0, 1] (jax)."""
    import jax
    import jax.numpy as jnp

    b, size = images.shape[0], images.shape[1]
    k_blur, k_contrast, k_bright, k_noise, k_level = jax.random.split(rng, 5)
    sigma = jax.random.uniform(k_blur, (b,), maxval=config.max_blur * size / 64) + 1e-3
    taps = jnp.arange(-3, 4, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(-1, keepdims=True)  # [B, 7]
    padded = jnp.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
    rows = sum(kernel[:, i, None, None, None] * padded[:, i : i + size] for i in range(7))
    blurred = sum(kernel[:, i, None, None, None] * rows[:, :, i : i + size] for i in range(7))
    contrast = jax.random.uniform(k_contrast, (b, 1, 1, 1), minval=0.85, maxval=1.15)
    brightness = jax.random.uniform(k_bright, (b, 1, 1, 1), minval=-0.06, maxval=0.06)
    mean = blurred.mean(axis=(1, 2, 3), keepdims=True)
    level = jax.random.uniform(k_level, (b, 1, 1, 1), maxval=config.max_noise)
    noisy = (blurred - mean) * contrast + mean + brightness + level * jax.random.normal(k_noise, blurred.shape)
    return jnp.clip(noisy, 0.0, 1.0)


class Judge:
    """A trained judge: `read(frames)` gives each of OUTPUTS per frame in natural units."""

    def __init__(self, params, config: JudgeConfig, info: Dict = None):
        import jax

        self.params, self.config, self.info = params, config, dict(info or {})
        self.resolution = config.resolution
        model = FrameJudge()
        self._apply = jax.jit(lambda p, x: model.apply({"params": p}, x))

    def read(self, frames: np.ndarray, batch_size: int = 256) -> Dict[str, np.ndarray]:
        """frames uint8 [T, S, S, 3] (S = the judge's resolution) -> {output name: float64 [T]}."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.resolution, self.resolution, 3):
            raise ValueError(f"the judge reads frames [T, {self.resolution}, {self.resolution}, 3], "
                             f"got {frames.shape}")
        out = []
        for start in range(0, len(frames), batch_size):
            chunk = frames[start : start + batch_size]
            n = len(chunk)
            if n < batch_size:  # one compiled shape
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
            out.append(np.asarray(self._apply(self.params, chunk.astype(np.float32) / 255.0))[:n])
        readings = np.concatenate(out).astype(np.float64) / np.asarray(OUTPUT_SCALES)
        return {name: readings[:, i] for i, name in enumerate(OUTPUTS)}

    def save(self, directory: str) -> None:
        from flax import traverse_util

        os.makedirs(directory, exist_ok=True)
        flat = traverse_util.flatten_dict(self.params, sep="/")
        storage.save_npz(os.path.join(directory, PARAMS_FILE), {k: np.asarray(v) for k, v in flat.items()})
        storage.write_json(os.path.join(directory, INFO_FILE),
                          dict(self.info, config=dataclasses.asdict(self.config), outputs=list(OUTPUTS)))

    @classmethod
    def load(cls, directory: str) -> "Judge":
        from flax import traverse_util

        params_path, info_path = os.path.join(directory, PARAMS_FILE), os.path.join(directory, INFO_FILE)
        for path in (params_path, info_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no trained judge here (python -m vasa_jax.judge --workdir "
                                        f"{directory} trains one)")
        with open(info_path) as f:
            info = json.load(f)
        if info.get("outputs") != list(OUTPUTS):
            raise ValueError(f"{directory}: the judge reads {info.get('outputs')}, this code expects {list(OUTPUTS)}")
        with np.load(params_path) as data:
            params = traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep="/")
        config = JudgeConfig(**info.pop("config"))
        info.pop("outputs")
        return cls(params, config, info)


def validate(judge: Judge, frames: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Pearson correlation and mean absolute error of each reading against the true labels."""
    from vasa_jax.evaluate import pearson

    readings = judge.read(frames)
    result = {}
    for index, name in enumerate(OUTPUTS):
        result[f"r_{name}"] = pearson(readings[name], labels[:, index])
        result[f"mae_{name}"] = float(np.mean(np.abs(readings[name] - labels[:, index])))
    return result


def train_judge(config: JudgeConfig, directory: str = None, log=print) -> Judge:
    """Render the training and validation frames, train the judge, validate it, and save it to `directory`
    (when given)."""
    import jax
    import jax.numpy as jnp
    import optax

    started = time.time()
    data = synthetic.SyntheticConfig(seed=config.dataset_seed, num_identities=config.num_identities,
                                     num_test_identities=config.num_val_identities)
    frames, labels = render_set(config, synthetic.identity_ids(data, "train"), config.seed)
    val_frames, val_labels = render_set(config, synthetic.identity_ids(data, "test"), config.seed + 1)
    log(f"judge: {len(frames)} training frames rendered ({time.time() - started:.0f} s)")

    model = FrameJudge()
    scales = jnp.asarray(OUTPUT_SCALES, jnp.float32)
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, config.resolution, config.resolution, 3)))["params"]
    warmup = min(100, max(config.num_steps // 10, 1))
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(config.num_steps, warmup + 1),
                                                  1e-5)
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, targets, rng):
        images = _augment(images.astype(jnp.float32) / 255.0, rng, config)

        def loss_fn(p):
            return jnp.mean(jnp.abs(model.apply({"params": p}, images) - targets * scales))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(config.seed)
    for index in range(config.num_steps):
        batch = rng.integers(len(frames), size=config.batch_size)
        params, opt_state, loss = step(params, opt_state, frames[batch], labels[batch],
                                       jax.random.fold_in(jax.random.key(config.seed), index))
        if (index + 1) % 500 == 0:
            log(f"judge step {index + 1}/{config.num_steps}: loss {float(loss):.4f}")
    judge = Judge(jax.device_get(params), config)
    judge.info = {"validation": validate(judge, val_frames, val_labels), "seconds": time.time() - started}
    log("judge validation on test identities: " + ", ".join(
        f"{k}={v:.3g}" for k, v in judge.info["validation"].items() if k.startswith("r_")))
    if directory:
        judge.save(directory)
    return judge


def load_or_train(directory: str, config: JudgeConfig = JudgeConfig(), log=print) -> Judge:
    """The judge saved in `directory`, or a new one trained and saved there."""
    if os.path.isfile(os.path.join(directory, PARAMS_FILE)) and os.path.isfile(os.path.join(directory, INFO_FILE)):
        return Judge.load(directory)
    return train_judge(config, directory, log=log)


def main(argv):
    del argv
    from absl import flags

    values = flags.FLAGS
    config = JudgeConfig(resolution=values.resolution, num_steps=values.num_steps, seed=values.seed)
    train_judge(config, values.workdir)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "where the judge is saved", required=True)
    flags.DEFINE_integer("resolution", 64, "frame size the judge reads (that of the frames it will judge)")
    flags.DEFINE_integer("num_steps", 1500, "training steps")
    flags.DEFINE_integer("seed", 0, "random seed")
    app.run(main)
