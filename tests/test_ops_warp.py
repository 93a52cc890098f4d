"""grid_sample_2d / grid_sample_3d against torch.nn.functional.grid_sample."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from vasa_jax.ops import grid_sample_2d, grid_sample_3d
from vasa_jax.ops import warp

MODES = [
    (padding_mode, align_corners)
    for padding_mode in ("zeros", "border")
    for align_corners in (False, True)
]

# (input shape channels-last, output spatial shape); non-cubic, C=1 and C>1,
# B=1 and B=2, output grid shape different from the input.
SHAPES_3D = [
    ((1, 3, 4, 5, 1), (2, 3, 4)),
    ((2, 4, 3, 6, 3), (3, 5, 2)),
]
SHAPES_2D = [
    ((1, 5, 7, 1), (4, 3)),
    ((2, 6, 4, 3), (5, 6)),
]


def _torch_reference(x, grid, cot, padding_mode, align_corners):
    """Forward output and (d_x, d_grid) of sum(out * cot) via torch autograd."""
    import torch

    # channels-last -> channels-first for torch
    xt = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
    gt = torch.tensor(grid, requires_grad=True)
    out = torch.nn.functional.grid_sample(
        xt, gt, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
    )
    (out * torch.tensor(np.moveaxis(cot, -1, 1))).sum().backward()
    return (
        np.moveaxis(out.detach().numpy(), 1, -1),
        np.moveaxis(xt.grad.numpy(), 1, -1),
        gt.grad.numpy(),
    )


def _jax_value_and_grads(fn, x, grid, cot, padding_mode, align_corners):
    def f(x, grid):
        return fn(x, grid, align_corners=align_corners, padding_mode=padding_mode)

    @jax.jit
    def run(x, grid, cot):
        out, vjp = jax.vjp(f, x, grid)
        return (out,) + vjp(cot)

    return [np.asarray(a) for a in run(x, grid, cot)]


def _random_case(seed, in_shape, out_spatial, lo=-1.3, hi=1.3):
    rng = np.random.default_rng(seed)
    n = len(in_shape) - 2
    x = rng.standard_normal(in_shape).astype(np.float32)
    grid = rng.uniform(lo, hi, (in_shape[0], *out_spatial, n)).astype(np.float32)
    cot = rng.standard_normal((in_shape[0], *out_spatial, in_shape[-1])).astype(np.float32)
    return x, grid, cot


def _compare(fn, x, grid, cot, padding_mode, align_corners):
    out, dx, dgrid = _jax_value_and_grads(fn, x, grid, cot, padding_mode, align_corners)
    t_out, t_dx, t_dgrid = _torch_reference(x, grid, cot, padding_mode, align_corners)
    assert out.shape == t_out.shape
    np.testing.assert_allclose(out, t_out, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dx, t_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgrid, t_dgrid, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding_mode,align_corners", MODES)
@pytest.mark.parametrize("shape_idx", range(len(SHAPES_3D)))
def test_grid_sample_3d_matches_torch(shape_idx, padding_mode, align_corners):
    in_shape, out_spatial = SHAPES_3D[shape_idx]
    x, grid, cot = _random_case(shape_idx, in_shape, out_spatial)
    _compare(grid_sample_3d, x, grid, cot, padding_mode, align_corners)


@pytest.mark.parametrize("padding_mode,align_corners", MODES)
@pytest.mark.parametrize("shape_idx", range(len(SHAPES_2D)))
def test_grid_sample_2d_matches_torch(shape_idx, padding_mode, align_corners):
    in_shape, out_spatial = SHAPES_2D[shape_idx]
    x, grid, cot = _random_case(10 + shape_idx, in_shape, out_spatial)
    _compare(grid_sample_2d, x, grid, cot, padding_mode, align_corners)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_chunked_backward_path_matches_torch(monkeypatch, padding_mode):
    """Forces the lax.scan chunked backward (incl. a padded last chunk)."""
    monkeypatch.setattr(warp, "_CHUNK_ELEMENTS", 16)
    monkeypatch.setattr(warp, "_MIN_CHUNK", 4)
    # Each of the 2 examples has 3*5*5 = 75 points -> 19 chunks of 4 points
    # (16 / C=4), the last one padded.
    x, grid, cot = _random_case(7, (2, 3, 4, 5, 4), (3, 5, 5))
    _compare(grid_sample_3d, x, grid, cot, padding_mode, False)

    def loss(v, g):
        return jnp.sum(grid_sample_3d(v, g, padding_mode=padding_mode) * cot)

    assert "scan" in str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, grid))


def test_identity_grid_reproduces_input():
    """align_corners=True grid at voxel centres samples the voxels exactly."""
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((1, 3, 4, 5, 2)).astype(np.float32)
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, 3), np.linspace(-1, 1, 4), np.linspace(-1, 1, 5), indexing="ij"
    )
    grid = np.stack([x, y, z], -1)[None].astype(np.float32)
    out = grid_sample_3d(vol, grid, align_corners=True)
    np.testing.assert_allclose(np.asarray(out), vol, atol=1e-6)


def test_bfloat16_inputs():
    x, grid, _ = _random_case(3, (1, 3, 4, 5, 2), (2, 3, 4))
    x16 = jnp.asarray(x, jnp.bfloat16)
    g16 = jnp.asarray(grid, jnp.bfloat16)
    f = jax.jit(lambda v, g: grid_sample_3d(v, g, padding_mode="border"))
    out = f(x16, g16)
    assert out.dtype == jnp.bfloat16
    # Same inputs upcast: weights are computed in float32 either way, so the
    # only difference is the final rounding of the output to bfloat16.
    out32 = f(x16.astype(jnp.float32), g16.astype(jnp.float32))
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(out32), rtol=1e-2, atol=1e-2
    )

    dv, dg = jax.jit(
        jax.grad(lambda v, g: jnp.sum(grid_sample_3d(v, g).astype(jnp.float32)), (0, 1))
    )(x16, g16)
    assert dv.dtype == jnp.bfloat16 and dg.dtype == jnp.bfloat16
    assert dv.shape == x.shape and dg.shape == grid.shape
    assert np.all(np.isfinite(np.asarray(dv, np.float32)))
    assert np.all(np.isfinite(np.asarray(dg, np.float32)))


def test_far_out_of_range_points_are_zero():
    x = np.ones((1, 2, 3, 4, 1), np.float32)
    grid = np.array([1e6, -1e6, np.inf], np.float32).reshape(1, 1, 1, 1, 3)
    grid = np.broadcast_to(grid, (1, 1, 1, 2, 3)).copy()
    assert np.all(np.asarray(grid_sample_3d(x, grid)) == 0.0)


@pytest.mark.parametrize(
    "fn,x_shape,grid_shape,kwargs,match",
    [
        (grid_sample_3d, (1, 2, 3, 4, 1), (1, 2, 2, 2, 3), {"padding_mode": "reflection"}, "padding_mode"),
        (grid_sample_3d, (2, 3, 4, 1), (1, 2, 2, 2, 3), {}, "rank"),
        (grid_sample_3d, (1, 2, 3, 4, 1), (1, 2, 2, 2, 2), {}, "grid"),
        (grid_sample_3d, (1, 2, 3, 4, 1), (2, 2, 2, 2, 3), {}, "batch"),
        (grid_sample_2d, (1, 3, 4, 1), (1, 2, 2, 3), {}, "grid"),
        (grid_sample_2d, (1, 3, 4, 1), (1, 2, 2), {}, "grid"),
        (grid_sample_2d, (1, 3, 4, 1), (1, 2, 2, 2), {"padding_mode": "nope"}, "padding_mode"),
    ],
)
def test_invalid_arguments_raise(fn, x_shape, grid_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(np.zeros(x_shape, np.float32), np.zeros(grid_shape, np.float32), **kwargs)


@pytest.mark.parametrize("ndim", [2, 3])
def test_batch_sharded_sampling_moves_nothing_between_devices(monkeypatch, ndim):
    """With the batch split over 8 devices, the forward and the backward (input and grid gradients, through the
    chunked scan) compile to programs without a single collective: every example is sampled on its own device.
    (Folding the batch into one row table, as before, all-gathered the whole batch's input to every device and
    all-reduced input-sized gradient tables.)"""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from vasa_jax.train import sharding

    mesh = sharding.make_mesh((8,), ("data",))
    split = NamedSharding(mesh, P("data"))
    spatial = (4, 32, 32)[-ndim:]
    x = jax.ShapeDtypeStruct((8, *spatial, 16), jnp.float32, sharding=split)
    grid = jax.ShapeDtypeStruct((8, *spatial, ndim), jnp.float32, sharding=split)
    sample = grid_sample_3d if ndim == 3 else grid_sample_2d
    monkeypatch.setattr(warp, "_CHUNK_ELEMENTS", 2**12)  # 256 points per chunk: the backward takes the scan
    forward = jax.jit(sample, out_shardings=split)
    backward = jax.jit(jax.grad(lambda x, g: jnp.sum(sample(x, g) ** 2), argnums=(0, 1)), out_shardings=(split, split))
    for name, fn in (("forward", forward), ("backward", backward)):
        moved = sharding.collectives(fn.lower(x, grid).compile().as_text())
        assert moved == [], f"{name} moves {moved}"


def test_activation_pins_bind_on_a_mesh_and_not_on_one_device():
    """`layers.batch_sharded` constrains a block's output to the batch split inside the trainer's activation
    context on a multi-device mesh, and adds nothing on a single device (where the constraints only cost fusions)."""
    from vasa_jax.models import layers
    from vasa_jax.train import sharding

    def constraints(devices):
        mesh = sharding.make_mesh((devices, 1), ("data", "fsdp"), devices=jax.devices()[:devices])

        def block(x):
            with sharding.activation_context(mesh, ()):
                return layers.batch_sharded(jnp.tanh(x))

        text = jax.jit(block).lower(jnp.ones((8, 4, 4, 2))).as_text()
        return text.count("sharding_constraint") + text.count("@Sharding")

    assert constraints(2) > 0
    assert constraints(1) == 0
