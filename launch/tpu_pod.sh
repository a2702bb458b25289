#!/usr/bin/env bash
# Runs a training config on every worker of a Cloud TPU VM pod slice, one process per worker.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG [--config.key=value ...]
#
# Each worker runs `python -m memagent_jax.train`; JAX finds the coordinator and the worker's id from
# the TPU runtime (memagent_jax/parallel/cluster.py). The repository must be at $REPO_DIR on every worker
# (default ~/memagent_jax), with the package installed. PROJECT sets the gcloud project.
# DRY_RUN=1 checks the config here and prints the gcloud command instead of running it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [--config.key=value ...]" >&2
  exit 2
fi
tpu_name="$1"; zone="$2"; config="$3"; shift 3
repo_dir="${REPO_DIR:-~/memagent_jax}"

check_config "$config" "$@"
train="cd $repo_dir && $PYTHON -m memagent_jax.train --config=$config"
for override in "$@"; do
  train+=" $(printf '%q' "$override")"
done
gcloud_args=(compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" --worker=all --command="$train")
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_args+=(--project="$PROJECT")
fi
run gcloud "${gcloud_args[@]}"
