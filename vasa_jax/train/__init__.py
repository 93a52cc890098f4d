"""Training: `python -m vasa_jax.train --config=configs/stage1.py --workdir=DIR`."""

from vasa_jax.train.loop import train

__all__ = ["train"]
