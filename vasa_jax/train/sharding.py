"""Device mesh and parameter shardings from the config.

Parameters carry logical axis names (`nn.with_logical_partitioning`); the config's `sharding_rules` map them to mesh
axes. A dimension that the mesh axis does not divide evenly stays replicated on that axis (small heads such as the
3-channel RGB projection cannot be split over an fsdp axis of 2), so every rule can be written once for all sizes.
"""

import contextlib
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vasa_jax.models import layers

BATCH_AXES = ("data", "fsdp")


def make_mesh(shape: Sequence[int], axes: Sequence[str], devices=None) -> Mesh:
    """A mesh of `shape` over `devices` (default all); one entry of -1 takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} may contain at most one -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh shape {tuple(shape)}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {len(devices)}")
    return jax.make_mesh(
        tuple(shape),
        tuple(axes),
        axis_types=(jax.sharding.AxisType.Auto,) * len(axes),
        devices=devices,
    )


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[name] for name in names])) if names else 1
        fitted.append(axes if names and dim % size == 0 else None)
    return P(*fitted)


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for the *unboxed* version of a pytree of (possibly logically boxed) abstract arrays."""
    logical = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(logical, tuple(tuple(rule) for rule in rules))
    abstract = nn.unbox(abstract_boxed)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh)),
        mesh_specs,
        abstract,
        is_leaf=lambda x: isinstance(x, P),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split along their leading axis over every data-parallel mesh axis (data and fsdp)."""
    return NamedSharding(mesh, P(tuple(a for a in BATCH_AXES if a in mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble this process's slice of the batch into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules: Sequence[tuple[str, Any]]):
    """Tracing inside this context binds the models' activation constraints (`layers.batch_sharded`): the mesh is
    set and the logical rules are the config's parameter rules plus the batch rule (activations' leading axis over
    the batch mesh axes, as the batches themselves are split). On a single device it binds nothing: there is
    nothing to keep apart, and the constraints would cost fusions (measured: the tiny stage-1 step on one CPU
    device took 4.6-5.4 s with them and 3.4-4.2 s without, beside a test run)."""
    if mesh.size == 1:
        yield
        return
    batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(tuple(tuple(r) for r in rules) + ((layers.BATCH, batch_axes),)):
        yield


COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def collectives(hlo_text: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """The cross-device transfers of a compiled program (`jax.jit(...).lower(...).compile().as_text()`): one
    (kind, dtype, shape) per array each collective moves (a combined collective moves several)."""
    kinds = "|".join(COLLECTIVES)
    found = []
    for line in hlo_text.splitlines():
        match = re.match(rf"\s*(?:ROOT )?%\S+ = (.*?) ({kinds})(?:-start)?\(", line)
        if match:
            for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
                found.append((match.group(2), dtype, tuple(int(d) for d in dims.split(",") if d)))
    return found


def sharded_fraction(state: Any) -> float:
    """Fraction of the state's bytes that live in arrays split over more than one device (a check that large
    parameters really are sharded)."""
    total = sharded = 0
    for leaf in jax.tree.leaves(state):
        nbytes = leaf.size * leaf.dtype.itemsize
        total += nbytes
        if not leaf.sharding.is_fully_replicated:
            sharded += nbytes
    return sharded / max(total, 1)
