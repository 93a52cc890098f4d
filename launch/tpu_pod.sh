#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every host; jax.distributed.initialize() discovers the
# coordinator and process ids from the TPU metadata (VASA_DISTRIBUTED=1 asks the trainer to call it).
#
#   launch/tpu_pod.sh TPU_NAME ZONE gs://bucket/runs/stage1 configs/stage1.py [--config.x.y=v ...]
#
# The repository must already be on every host as ~/vasa_jax (e.g. `gcloud compute tpus tpu-vm scp --recurse
# --worker=all`). SETUP=1 first installs it on every host with launch/setup_host.sh: the pinned requirements, jax's
# TPU build at the pinned version, and gcsfs for the gs:// workdir, where every host reads and writes the same
# checkpoints, TensorBoard events and samples (vasa_jax.storage). DRY_RUN=1 prints the gcloud commands.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: [SETUP=1] $0 TPU_NAME ZONE WORKDIR CONFIG [overrides...]" >&2
  exit 2
fi
tpu=$1 zone=$2 workdir=$3 config=$4
shift 4
run() { if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi; }
on_every_host() { run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }

if [ "${SETUP:-0}" = 1 ]; then
  on_every_host "cd vasa_jax && launch/setup_host.sh tpu --gcs"
fi
# One batch axis over every chip of the slice ((-1, 1): data x fsdp); --config.train.compute_dtype=bfloat16 for
# the MXU's bfloat16 throughput.
on_every_host "cd vasa_jax && VASA_DISTRIBUTED=1 python3 -m vasa_jax.train --config=$config --workdir=$workdir \
--config.mesh.shape='(-1,1)' $*"
