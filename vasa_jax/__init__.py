"""vasa_jax: an open, trainable reimplementation of VASA-1 in JAX/Flax."""

__version__ = "0.1.0"
