#!/usr/bin/env bash
# Install the project on one host of a TPU pod or GPU cluster: the pinned requirements, then jax's build for the
# accelerator at the jax version requirements.txt pins, so that every host runs the same jax as the tests.
#
#   launch/setup_host.sh tpu|cuda12|cuda13|cpu [--gcs]
#
# --gcs also installs gcsfs, through which etils.epath serves gs:// workdirs (orbax's checkpoint arrays go through
# TensorStore, which reads gs:// itself). DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: $0 tpu|cuda12|cuda13|cpu [--gcs]"
accelerator=${1:-}
case "$accelerator" in
  tpu|cuda12|cuda13|cpu) ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
gcs=0
case "${2:-}" in
  "") ;;
  --gcs) gcs=1 ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
jax_version=$(sed -n 's/^jax==\([^ ;#]*\).*/\1/p' requirements.txt)
if [ -z "$jax_version" ]; then
  echo "requirements.txt pins no jax version" >&2
  exit 1
fi
run() { if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi; }

run python3 -m pip install -r requirements.txt
if [ "$accelerator" != cpu ]; then
  run python3 -m pip install "jax[$accelerator]==$jax_version"
fi
if [ "$gcs" = 1 ]; then
  run python3 -m pip install gcsfs
fi
