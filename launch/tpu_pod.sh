#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every host; jax.distributed.initialize() discovers the
# coordinator and process ids from the TPU metadata (VASA_DISTRIBUTED=1 asks the trainer to call it).
#
#   launch/tpu_pod.sh TPU_NAME ZONE gs://bucket/runs/stage1 configs/stage1.py [--config.x.y=v ...]
#
# The repository must already be on every host (e.g. `gcloud compute tpus tpu-vm scp --worker=all`), with the
# dependencies installed from requirements.txt plus the jax[tpu] build matching the pinned jax version.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE WORKDIR CONFIG [overrides...]" >&2
  exit 2
fi
tpu=$1 zone=$2 workdir=$3 config=$4
shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd vasa_jax && VASA_DISTRIBUTED=1 python -m vasa_jax.train --config=$config --workdir=$workdir \
   --config.mesh.shape='(-1,1)' $*"
