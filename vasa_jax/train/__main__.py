"""Command line: python -m vasa_jax.train --config=configs/stage1.py[:variant] --workdir=DIR [--config.x.y=v]."""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a config file, optionally with :variant.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and samples: a local "
                                "path, a file:// URL or an object store's (gs://, s3://, az://, hf://).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every checkpoint step at INFO
    import jax

    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("VASA_DISTRIBUTED"):
        # Multi-host. On Cloud TPU and SLURM jax discovers everything; elsewhere the coordinator comes from
        # JAX_COORDINATOR_ADDRESS and the process count and id from JAX_NUM_PROCESSES / JAX_PROCESS_ID.
        counts = {
            key: int(os.environ[env])
            for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
            if env in os.environ
        }
        jax.distributed.initialize(**counts)
    from vasa_jax import storage
    from vasa_jax.train.loop import train
    from vasa_jax.train.metrics import NonFiniteLossError

    try:
        train(_CONFIG.value, _WORKDIR.value)
    except (NonFiniteLossError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    workdir = storage.location(_WORKDIR.value)
    parts = [name + "/" for name in ("samples", "tensorboard", "checkpoints")
             if storage.isdir(storage.join(workdir, name))]
    print(f"done; outputs in {workdir} ({', '.join(parts)})")


if __name__ == "__main__":
    app.run(main)
