#!/usr/bin/env bash
# Train on several GPU hosts: run this script on every host with the same COORDINATOR (host:port of process 0),
# NUM_PROCESSES and a distinct PROCESS_ID. jax.distributed.initialize() reads them from the environment.
#
#   COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 launch/multihost_gpu.sh /shared/runs/stage1 configs/stage1.py
#
# Install each host first with `launch/setup_host.sh cuda13` (or cuda12; add --gcs for a gs:// workdir). WORKDIR
# must be a place every host sees, a shared filesystem or an object store's URL (orbax writes one checkpoint from
# all processes). DRY_RUN=1 prints the command.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: COORDINATOR=host:port NUM_PROCESSES=N PROCESS_ID=i $0 WORKDIR CONFIG [overrides...]" >&2
  exit 2
fi
workdir=$1 config=$2
shift 2
export JAX_COORDINATOR_ADDRESS="${COORDINATOR:?set COORDINATOR=host:port}"
export JAX_NUM_PROCESSES="${NUM_PROCESSES:?set NUM_PROCESSES}"
export JAX_PROCESS_ID="${PROCESS_ID:?set PROCESS_ID}"
command=(python3 -m vasa_jax.train --config="$config" --workdir="$workdir" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES=$JAX_NUM_PROCESSES" \
       "JAX_PROCESS_ID=$JAX_PROCESS_ID ${command[*]}"
  exit 0
fi
exec "${command[@]}"
