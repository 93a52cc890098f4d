"""Bilinear / trilinear grid sampling with PyTorch ``grid_sample`` semantics.

The face-vid2vid style motion field warps a 3D appearance volume with a dense
sampling grid, so this op sits on the hot path of every generator step.  Both
public functions reproduce ``torch.nn.functional.grid_sample(mode="bilinear")``
(values *and* gradients) for ``padding_mode`` in ``{"zeros", "border"}`` and
both ``align_corners`` settings, in channels-last layout.

Implementation notes (all measured on XLA:CPU, see
``benchmarks/bench_grid_sample.py``):

* Each example's input is flattened to a ``[prod(spatial), C]`` row table and
  every corner tap becomes one row gather with a precomputed flat index; the
  sampler is ``jax.vmap``-ed over the batch.  The vmapped gathers and scatters
  carry the batch as an explicit batching dimension, which the SPMD
  partitioner splits like any batch axis: under a batch-sharded mesh every
  example is sampled on its own device with no cross-device traffic.  (An
  earlier version folded the batch into one ``[B * prod(spatial), C]`` table
  with per-example row offsets; to the partitioner those indices could point
  anywhere, so every device all-gathered the whole batch's input and the
  backward all-reduced input-sized gradient tables.  It was not faster: see
  ``benchmarks/bench_grid_sample.py --batch``.)
* Out-of-range taps are handled by clamping the index (so the gather is always
  in bounds) and zeroing the tap's weight.  Torch applies the same bounds
  test in "border" mode (a coordinate clamped to ``size - 1`` has a
  zero-weight tap at ``size``), so one code path serves both modes.
* A ``jax.custom_vjp`` supplies the backward pass: the input gradient is a
  scatter-add of weighted cotangent rows and the grid gradient is computed
  analytically from the per-corner weight derivatives.  Plain autodiff of the
  forward was ~3-5x slower.
* The forward is a single loop fusion (gathers + weighted sum) writing the
  output directly; it needs no temporaries.
* The backward processes the points in chunks with ``lax.scan``.  Done in one
  shot, XLA:CPU materialises 2**n gathered ``[N, C]`` arrays and as many
  scatter-update arrays: >100 MiB of fresh temporaries per call at
  16x64x64x32, whose page faulting dominated the runtime.  Per chunk the
  temporaries are ~MiB-sized, reused and cache resident (2-3x faster).
* Interpolation weights are always computed in float32, whatever the input
  dtype: a bfloat16 pixel coordinate near 60 only resolves steps of 0.25.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp

__all__ = ["grid_sample_2d", "grid_sample_3d"]

_PADDING_MODES = ("zeros", "border")

# Points per backward scan chunk are chosen so that one [chunk, C] float32 block holds
# about 2**17 elements (0.5 MiB): large enough to amortise the per-iteration
# overhead, small enough that per-chunk temporaries stay cache resident.
_CHUNK_ELEMENTS = 2**17
_MIN_CHUNK = 256


# ---------------------------------------------------------------------------
# Per-point tap computation.
# ---------------------------------------------------------------------------


def _axis_taps(coord, size, align_corners, padding_mode):
    """The two interpolation taps of every point along one spatial axis.

    Args:
      coord: [P] float32 normalised coordinates (nominally in [-1, 1]).
      size: extent of the spatial axis this coordinate indexes.
      align_corners: torch's ``align_corners`` flag.
      padding_mode: "zeros" or "border".

    Returns:
      (idx0, idx1, w0, w1, dw0, dw1, dscale): int32 tap indices clamped into
      [0, size - 1]; tap weights (zero for out-of-range taps); derivatives of
      those weights w.r.t. the unnormalised pixel coordinate; and
      d(pixel) / d(coord) per point (zero where "border" clamping is active).
    """
    if align_corners:
        scale = 0.5 * (size - 1)
        pix = (coord + 1.0) * scale
    else:
        scale = 0.5 * size
        pix = ((coord + 1.0) * size - 1.0) * 0.5

    if padding_mode == "border":
        # Mirrors torch's clip_coordinates_set_grad: gradient passes on the
        # closed interval [0, size - 1] and is zero strictly outside it.
        inside = (pix >= 0.0) & (pix <= size - 1.0)
        pix = jnp.clip(pix, 0.0, size - 1.0)
        dscale = jnp.where(inside, scale, 0.0).astype(jnp.float32)
    else:
        # Beyond [-2, size + 1] both taps are out of range whatever the exact
        # value, so clamping changes no weight; it only keeps the float->int
        # conversion below defined for huge or infinite coordinates.
        pix = jnp.clip(pix, -2.0, size + 1.0)
        dscale = jnp.full_like(pix, scale)

    pix0 = jnp.floor(pix)
    frac = pix - pix0
    i0 = pix0.astype(jnp.int32)
    i1 = i0 + 1
    valid0 = ((i0 >= 0) & (i0 < size)).astype(jnp.float32)
    valid1 = ((i1 >= 0) & (i1 < size)).astype(jnp.float32)
    return (
        jnp.clip(i0, 0, size - 1),
        jnp.clip(i1, 0, size - 1),
        (1.0 - frac) * valid0,
        frac * valid1,
        -valid0,
        valid1,
        dscale,
    )


def _corners(coords, spatial_shape, align_corners, padding_mode):
    """Enumerates the 2**n corner taps of every sample point.

    Args:
      coords: [P, n] float32 normalised coordinates ordered (x, y[, z]), i.e.
        coordinate ``a`` indexes spatial dim ``n - 1 - a``.
      spatial_shape: the n spatial extents, outermost (D or H) first.

    Returns:
      corners: per corner a tuple (rows [P] int32, weight [P] f32,
        [(w_a, dw_a) for each coordinate axis a]).
      dscales: per coordinate axis, [P] d(pixel) / d(coord).
    """
    n = len(spatial_shape)
    strides = [1] * n
    for d in range(n - 2, -1, -1):
        strides[d] = strides[d + 1] * spatial_shape[d + 1]

    axes, dscales = [], []
    for a in range(n):
        dim = n - 1 - a
        i0, i1, w0, w1, dw0, dw1, dscale = _axis_taps(
            coords[:, a], spatial_shape[dim], align_corners, padding_mode
        )
        axes.append(((i0 * strides[dim], w0, dw0), (i1 * strides[dim], w1, dw1)))
        dscales.append(dscale)

    corners = []
    for choice in itertools.product((0, 1), repeat=n):
        taps = [axes[a][c] for a, c in enumerate(choice)]
        rows = functools.reduce(lambda x, y: x + y, [t[0] for t in taps])
        weight = functools.reduce(lambda x, y: x * y, [t[1] for t in taps])
        corners.append((rows, weight, [(t[1], t[2]) for t in taps]))
    return corners, dscales


def _exact_barrier(x):
    """Identity that XLA:CPU cannot fold into a YNNPACK (library) fusion.

    ``reduce_precision`` to the dtype's own exponent/mantissa widths is
    bit-exact, but YNNPACK fusions do not support it, so it pins the
    producer chain of ``x`` into an ordinary loop fusion that writes ``x``.
    Purely a performance device; results are unchanged.
    """
    finfo = jnp.finfo(x.dtype)
    return jax.lax.reduce_precision(x, exponent_bits=finfo.nexp, mantissa_bits=finfo.nmant)


def _gather_rows(table, rows):
    # Every index was clamped into the table in _axis_taps, so
    # promise_in_bounds lets XLA drop its own clamping / fill logic.
    return table.at[rows].get(mode="promise_in_bounds")


# ---------------------------------------------------------------------------
# Forward and chunked backward over the flat row table.
# ---------------------------------------------------------------------------


def _chunk_size(num_points, channels):
    target = max(_MIN_CHUNK, _CHUNK_ELEMENTS // max(channels, 1))
    chunk = 1 << (target.bit_length() - 1)  # round down to a power of two
    return min(chunk, num_points)


def _split_chunks(x, chunk):
    """[P, ...] -> [ceil(P / chunk), chunk, ...], zero padded at the end."""
    num_chunks = -(-x.shape[0] // chunk)
    pad = num_chunks * chunk - x.shape[0]
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(num_chunks, chunk, *x.shape[1:])


def _interpolate(table, coords, spatial_shape, align_corners, padding_mode):
    """Samples ``table`` [R, C] at [P, n] ``coords``; returns [P, C] in table dtype.

    The forward runs unchunked: it is a single loop fusion (gathers + weighted
    sum) that writes the output directly and needs no temporaries.
    """
    corners, _ = _corners(coords, spatial_shape, align_corners, padding_mode)
    out = None
    for rows, weight, _ in corners:
        term = weight[:, None] * _gather_rows(table, rows).astype(jnp.float32)
        out = term if out is None else out + term
    return out.astype(table.dtype)


def _backward_chunk(
    table, coords, g, d_table, spatial_shape, align_corners, padding_mode
):
    """Backward for one chunk; accumulates into float32 ``d_table``.

    Returns (d_table, d_coords [P, n] float32).
    """
    n = len(spatial_shape)
    corners, dscales = _corners(coords, spatial_shape, align_corners, padding_mode)

    # d_table: each corner row receives weight * g.
    for rows, weight, _ in corners:
        d_table = d_table.at[rows].add(weight[:, None] * g, mode="promise_in_bounds")

    # d_coords: out = sum_k prod_a w_{a,k} v_k, hence
    #   d out / d pix_a = S_a := sum_k dw_{a,k} prod_{b != a} w_{b,k} v_k
    # and d loss / d pix_a = <g, S_a>.  Contracting with g once per axis
    # (n reductions instead of 2**n per-corner dot products) is cheaper.
    s_axes = [None] * n
    for rows, _, axis_w in corners:
        v = _gather_rows(table, rows).astype(jnp.float32)
        for a in range(n):
            coef = axis_w[a][1]
            for b in range(n):
                if b != a:
                    coef = coef * axis_w[b][0]
            term = coef[:, None] * v
            s_axes[a] = term if s_axes[a] is None else s_axes[a] + term
    # reduce_precision (a bit-exact no-op, see _exact_barrier) keeps each
    # g * S_a product in a plain loop fusion; otherwise XLA:CPU hands the
    # whole broadcast-multiply-add chain to a YNNPACK fusion, measured
    # ~1.5x slower than reducing the dense products.
    d_coords = jnp.stack(
        [jnp.sum(_exact_barrier(g * s_axes[a]), axis=-1) * dscales[a] for a in range(n)],
        axis=-1,
    )
    return d_table, d_coords


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _sample_flat(table, coords, spatial_shape, align_corners, padding_mode):
    """One example: table [R, C]; coords [P, n] -> [P, C] (table dtype)."""
    out = _interpolate(
        table, coords.astype(jnp.float32), spatial_shape, align_corners, padding_mode
    )
    # Without the barrier a downstream reduction or dot (e.g. a loss) can
    # swallow the weighted sum into a YNNPACK fusion, forcing all 2**n
    # gathered [P, C] arrays to be materialised (100s of MiB, several times
    # slower); with it the gathers and sum stay one parallel loop fusion.
    return _exact_barrier(out)


def _sample_flat_fwd(table, coords, spatial_shape, align_corners, padding_mode):
    out = _sample_flat(table, coords, spatial_shape, align_corners, padding_mode)
    # Save only the inputs: tap indices/weights are cheap to recompute, while
    # storing them would cost 2**n * P * 8 bytes.
    return out, (table, coords)


def _sample_flat_bwd(spatial_shape, align_corners, padding_mode, residuals, g):
    table, coords = residuals
    num_points, n = coords.shape
    channels = table.shape[-1]
    coords32 = coords.astype(jnp.float32)
    g = g.astype(jnp.float32)
    d_table = jnp.zeros(table.shape, jnp.float32)

    chunk = _chunk_size(num_points, channels)
    if chunk == num_points:
        d_table, d_coords = _backward_chunk(
            table, coords32, g, d_table, spatial_shape, align_corners, padding_mode
        )
    else:
        # Padded points carry a zero cotangent, so the rows they touch receive
        # exactly zero; their coordinate gradients are sliced off below.
        def step(acc, xs):
            return _backward_chunk(
                table, xs[0], xs[1], acc, spatial_shape, align_corners, padding_mode
            )

        xs = (_split_chunks(coords32, chunk), _split_chunks(g, chunk))
        d_table, d_coords = jax.lax.scan(step, d_table, xs)
        d_coords = d_coords.reshape(-1, n)[:num_points]
    return d_table.astype(table.dtype), d_coords.astype(coords.dtype)


_sample_flat.defvjp(_sample_flat_fwd, _sample_flat_bwd)


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def _check_inputs(name, x, grid, n, padding_mode):
    if padding_mode not in _PADDING_MODES:
        raise ValueError(
            f"{name}: padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}"
        )
    in_axes = "B, D, H, W, C" if n == 3 else "B, H, W, C"
    grid_axes = f"B, Do, Ho, Wo, {n}" if n == 3 else f"B, Ho, Wo, {n}"
    if x.ndim != n + 2:
        raise ValueError(
            f"{name}: input must have rank {n + 2} [{in_axes}], got shape {tuple(x.shape)}"
        )
    if grid.ndim != n + 2 or grid.shape[-1] != n:
        raise ValueError(
            f"{name}: grid must have shape [{grid_axes}], got shape {tuple(grid.shape)}"
        )
    if grid.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name}: batch size of input ({x.shape[0]}) and grid ({grid.shape[0]}) differ"
        )
    if not jnp.issubdtype(grid.dtype, jnp.floating):
        raise ValueError(f"{name}: grid must be floating point, got dtype {grid.dtype}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name}: input must be floating point, got dtype {x.dtype}")
    if any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"{name}: input has an empty axis, shape {tuple(x.shape)}")


# jit here makes eager (un-jitted) calls one compiled program instead of ~100
# op-by-op dispatches; inside an outer jit it is simply inlined.
@functools.partial(jax.jit, static_argnames=("n", "align_corners", "padding_mode"))
def _grid_sample(x, grid, n, align_corners, padding_mode):
    batch = x.shape[0]
    spatial_shape = tuple(int(s) for s in x.shape[1 : n + 1])
    channels = x.shape[-1]
    out_spatial = grid.shape[1 : n + 1]
    rows_per_example = functools.reduce(lambda a, b: a * b, spatial_shape)
    points_per_example = functools.reduce(lambda a, b: a * b, out_spatial, 1)
    if rows_per_example >= 2**31:
        raise ValueError("grid_sample: input too large for int32 row indices")

    # One example per sampler call, mapped over the batch: the gathers and
    # scatters then carry the batch as an explicit batching dimension, which
    # the SPMD partitioner splits like any batch axis, so a batch-sharded warp
    # stays on its devices (a table of the whole batch with per-example row
    # offsets looked global to it: every device all-gathered every volume).
    table = x.reshape(batch, rows_per_example, channels)
    coords = grid.reshape(batch, points_per_example, n)
    sample = lambda t, c: _sample_flat(t, c, spatial_shape, align_corners, padding_mode)
    out = jax.vmap(sample)(table, coords)
    return out.reshape(batch, *out_spatial, channels)


def grid_sample_3d(volume, grid, *, align_corners=False, padding_mode="zeros"):
    """Trilinear sampling of a channels-last volume (torch ``grid_sample``, 5-D).

    Args:
      volume: [B, D, H, W, C] floating array (float32 or bfloat16).
      grid: [B, Do, Ho, Wo, 3] sampling locations; the last axis is (x, y, z)
        in normalised [-1, 1] coordinates, where x indexes W, y indexes H and
        z indexes D.  Points outside [-1, 1] follow ``padding_mode``.
      align_corners: if True, -1 and 1 are the centres of the corner voxels;
        if False, the outer edges of the corner voxels (torch semantics).
      padding_mode: "zeros" (out-of-range taps contribute 0) or "border"
        (coordinates are clamped into the volume).

    Returns:
      [B, Do, Ho, Wo, C] array with the dtype of ``volume``.  Differentiable
      w.r.t. ``volume`` and ``grid``, with the same gradients as torch.

    Raises:
      ValueError: on an unknown ``padding_mode`` or inconsistent shapes.
    """
    volume = jnp.asarray(volume)
    grid = jnp.asarray(grid)
    _check_inputs("grid_sample_3d", volume, grid, 3, padding_mode)
    return _grid_sample(
        volume, grid, n=3, align_corners=bool(align_corners), padding_mode=padding_mode
    )


def grid_sample_2d(image, grid, *, align_corners=False, padding_mode="zeros"):
    """Bilinear sampling of a channels-last image (torch ``grid_sample``, 4-D).

    Args:
      image: [B, H, W, C] floating array (float32 or bfloat16).
      grid: [B, Ho, Wo, 2] sampling locations (x, y) in normalised [-1, 1]
        coordinates, x indexing W and y indexing H.
      align_corners: see :func:`grid_sample_3d`.
      padding_mode: "zeros" or "border", see :func:`grid_sample_3d`.

    Returns:
      [B, Ho, Wo, C] array with the dtype of ``image``.

    Raises:
      ValueError: on an unknown ``padding_mode`` or inconsistent shapes.
    """
    image = jnp.asarray(image)
    grid = jnp.asarray(grid)
    _check_inputs("grid_sample_2d", image, grid, 2, padding_mode)
    return _grid_sample(
        image, grid, n=2, align_corners=bool(align_corners), padding_mode=padding_mode
    )
