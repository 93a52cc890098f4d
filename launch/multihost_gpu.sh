#!/usr/bin/env bash
# Train on several GPU hosts: run this script on every host with the same COORDINATOR (host:port of process 0),
# NUM_PROCESSES and a distinct PROCESS_ID. jax.distributed.initialize() reads them from the environment.
#
#   COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 launch/multihost_gpu.sh /shared/runs/stage1 configs/stage1.py
#
# WORKDIR must be a filesystem that every host sees (orbax writes one checkpoint from all processes).
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
exec python -m vasa_jax.train --config="$config" --workdir="$workdir" "$@"
