"""Mixed precision: float32 parameters, optimizer state and losses; the networks' arithmetic in a compute dtype.

The policy is applied at each network call (`mixed_apply`): the call's float parameters and float inputs are cast to
the compute dtype, its float outputs back to float32. So the losses are computed in float32, and the gradients reach
the float32 parameters in float32 (the transpose of a cast is a cast back). Inside the networks the places where
bfloat16's 8-bit mantissa is not enough compute in float32 on their own, whatever the compute dtype: warp coordinates
and flows, keypoint geometry, softmax masks and attention logits (`jax.nn.dot_product_attention` accumulates them in
float32), normalisation statistics (flax reduces them in float32), and sigmoid/softmax output heads.

With the compute dtype float32 every function here is the identity: the default path is bit-for-bit the
unmixed one.
"""

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str):
    """The jnp dtype of a config's compute-dtype name ("float32" or "bfloat16")."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; expected one of {COMPUTE_DTYPES}")
    return jnp.dtype(name)


def cast_floating(tree, dtype):
    """`tree` with its floating-point leaves cast to `dtype` (integer, boolean and key leaves unchanged)."""
    dtype = jnp.dtype(dtype)

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def mixed_apply(module, variables, dtype, *args, **kwargs):
    """`module.apply(variables, *args, **kwargs)` computed in `dtype`: the float "params" collection and the float
    positional arguments cast to `dtype`, the float outputs (a mutable collection's updates included) returned in
    float32. Other collections (BatchNorm's running statistics) and the keyword arguments (method, mutable, flags)
    pass unchanged."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return module.apply(variables, *args, **kwargs)
    variables = {name: cast_floating(value, dtype) if name == "params" else value for name, value in variables.items()}
    outputs = module.apply(variables, *cast_floating(args, dtype), **kwargs)
    return cast_floating(outputs, jnp.float32)
