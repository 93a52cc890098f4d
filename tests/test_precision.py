"""Mixed precision (`vasa_jax.ops.precision`) and the trainer's FLOPs and utilisation figures."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vasa_jax.models.layers import GroupNorm
from vasa_jax.ops import precision
from vasa_jax.train import metrics


class ConvNormHead(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(GroupNorm(16)(nn.Conv(16, (3, 3))(x)))
        return nn.Dense(4)(x.mean(axis=(1, 2)))


def test_cast_floating_leaves_integers_booleans_and_keys():
    tree = {"w": jnp.ones(3), "n": jnp.arange(3), "b": jnp.array([True]), "key": jax.random.key(0), "s": 1.5}
    cast = precision.cast_floating(tree, jnp.bfloat16)
    assert cast["w"].dtype == jnp.bfloat16
    assert cast["n"].dtype == tree["n"].dtype and cast["b"].dtype == jnp.bool_
    assert jax.dtypes.issubdtype(cast["key"].dtype, jax.dtypes.prng_key) and cast["s"] == 1.5
    with pytest.raises(ValueError, match="unknown compute dtype 'float16'"):
        precision.compute_dtype("float16")


def test_mixed_apply_computes_in_bfloat16_and_returns_float32_gradients():
    module = ConvNormHead()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables = module.init(jax.random.key(1), x)
    loss = lambda params, dtype: jnp.sum(precision.mixed_apply(module, {"params": params}, dtype, x) ** 2)

    exact = module.apply(variables, x)
    np.testing.assert_array_equal(precision.mixed_apply(module, variables, jnp.float32, x), exact)
    mixed = precision.mixed_apply(module, variables, jnp.bfloat16, x)
    assert mixed.dtype == jnp.float32
    error = float(jnp.abs(mixed - exact).max() / jnp.abs(exact).max())
    assert 0 < error < 3e-2, error  # bfloat16 rounding: not the float32 result, but close to it

    grads = jax.grad(loss)(variables["params"], jnp.bfloat16)
    exact_grads = jax.grad(loss)(variables["params"], jnp.float32)
    assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    flat, flat_exact = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (grads, exact_grads))
    cosine = flat @ flat_exact / np.linalg.norm(flat) / np.linalg.norm(flat_exact)
    assert cosine > 0.999, cosine

    # The convolution really runs in bfloat16: the lowered program convolves bfloat16 operands.
    lowered = jax.jit(lambda p: precision.mixed_apply(module, {"params": p}, jnp.bfloat16, x)).lower(
        variables["params"]).as_text()
    assert any("convolution" in line and "bf16" in line for line in lowered.splitlines())


def test_flops_and_utilisation_come_from_the_compiled_program(capsys):
    a = jnp.ones((64, 128))
    compiled = jax.jit(lambda x, y: x @ y).lower(a, a.T).compile()
    assert metrics.compiled_flops(compiled) == pytest.approx(2 * 64 * 128 * 64, rel=0.05)
    assert metrics.peak_flops_per_second("NVIDIA H100 80GB HBM3") == 989e12
    assert metrics.peak_flops_per_second("NVIDIA H100 PCIe") == 756e12
    assert metrics.peak_flops_per_second("TPU v5 lite") == 197e12
    assert metrics.peak_flops_per_second("cpu") is None

    writer = metrics.MetricWriter("unused", num_steps=10, batch_size=4, enabled=False)
    writer.set_step_flops(2e12, 1e15)
    writer.enabled = True  # print the progress line without opening TensorBoard files
    writer.write_scalars = lambda *args, **kwargs: None
    writer.progress(1, {"loss": 1.0})
    writer._last_time -= 0.5  # two steps of 2 TFLOP in half a second: 8 TFLOP/s of a 1000 TFLOP/s peak
    writer.progress(3, {"loss": 0.5})
    line = capsys.readouterr().out.splitlines()[-1]
    assert "8 TFLOP/s per device" in line and "MFU 0.8%" in line, line
