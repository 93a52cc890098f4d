"""The stage-1 training step on data x fsdp meshes of fake CPU devices: per-device memory and cross-device traffic
at one example per device, for several mesh sizes.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/bench_sharded_step.py \
      [--variant tiny] [--devices 2,4,8] [--per_device 1] [--remat]

Compiles the jitted step (as `vasa_jax.train.loop` does) on a mesh of `(n / 2) x 2` devices (data x fsdp) with a
global batch of n x per_device, and prints from the compiled program: per-device argument, output and temporary
bytes (`memory_analysis`), FLOPs per step (`cost_analysis`, whole program per device), and the elements every
collective moves, split into the largest single transfer. With the batch sharded and every example's work on its
device, the temporaries and the traffic stay flat as the mesh grows; a step that gathers the batch grows with it.
`--remat` compiles the step with `train.remat` (each network call's activations recomputed in the backward pass):
the temporaries against a run without it give rematerialisation's saving. Nothing runs: only compilation (minutes
per mesh on a CPU; the feature networks are randomly initialised, their values do not matter here).
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import stage1 as stage1_config  # noqa: E402
from vasa_jax.train import checkpointing, loop, sharding  # noqa: E402


def compiled_step(config, num_devices):
    task = loop.make_task(config)
    mesh = sharding.make_mesh((num_devices // 2, 2), ("data", "fsdp"), devices=jax.devices()[:num_devices])
    state, state_shardings = loop.abstract_sharded_state(task, config, mesh)
    frozen = jax.eval_shape(task.load_frozen)
    frozen_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), frozen)
    frozen = checkpointing.abstract_with_shardings(frozen, frozen_shardings)
    step = loop.compile_train_step(task, mesh, state_shardings, frozen_shardings)
    batch = jax.eval_shape(lambda: next(task.train_iterator(0, 1)))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh)),
                         batch)
    return step.lower(state, batch, frozen).compile()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny", help="configs/stage1.py variant")
    parser.add_argument("--devices", default="2,4,8")
    parser.add_argument("--per_device", type=int, default=1)
    parser.add_argument("--remat", action="store_true", help="compile with train.remat")
    args = parser.parse_args()
    print(f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} devices); "
          f"configs/stage1.py:{args.variant}; "
          f"{args.per_device} example(s) per device; remat {args.remat}")
    print(f"{'mesh':>6} {'batch':>6} {'args MiB':>9} {'out MiB':>8} {'temp MiB':>9} {'GFLOP':>8} "
          f"{'moved M':>8} {'largest':>9} {'compile s':>10}")
    for n in (int(d) for d in args.devices.split(",")):
        config = stage1_config.get_config(args.variant)
        config.data.batch_size = n * args.per_device
        config.train.remat = args.remat
        config.feature_nets.allow_random_init = True
        start = time.perf_counter()
        compiled = compiled_step(config, n)
        seconds = time.perf_counter() - start
        memory = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        moved = [int(np.prod(shape)) for _, _, shape in sharding.collectives(compiled.as_text())]
        mib = lambda b: b / 2**20
        print(f"{n // 2}x2".rjust(6), f"{config.data.batch_size:6d} {mib(memory.argument_size_in_bytes):9.1f} "
              f"{mib(memory.output_size_in_bytes):8.1f} {mib(memory.temp_size_in_bytes):9.1f} "
              f"{cost.get('flops', float('nan')) / 1e9:8.2f} {sum(moved) / 1e6:8.3f} {max(moved, default=0):9d} "
              f"{seconds:10.0f}", flush=True)
    print("args/out/temp: per device; GFLOP: per device per step (XLA's count); moved: million elements over all "
          "collectives per device program; largest: elements of the largest single transfer")


if __name__ == "__main__":
    main()
