#!/usr/bin/env bash
# Runs a training config on several GPU hosts, one process per host (each sees all its GPUs).
#
#   HOSTS="gpu-a gpu-b" launch/gpu_hosts.sh CONFIG [--config.key=value ...]
#
# The first host is the coordinator (port $PORT, default 8476). Every process gets JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID (memagent_jax/parallel/cluster.py) over ssh; the repository must be at
# $REPO_DIR on every host (default: this directory's parent, same path everywhere). Logs: $LOG_DIR/host-N.log.
# DRY_RUN=1 checks the config here and prints the ssh commands instead of running them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

if [[ $# -lt 1 || -z "${HOSTS:-}" ]]; then
  echo "usage: HOSTS=\"host1 host2 ...\" $0 CONFIG [--config.key=value ...]" >&2
  exit 2
fi
config="$1"; shift
read -r -a hosts <<< "$HOSTS"
port="${PORT:-8476}"
repo_dir="${REPO_DIR:-$(cd "$here/.." && pwd)}"
log_dir="${LOG_DIR:-logs}"

check_config "$config" "$@"
overrides=""
for override in "$@"; do
  overrides+=" $(printf '%q' "$override")"
done
[[ "$DRY_RUN" == "1" ]] || mkdir -p "$log_dir"
pids=()
for rank in "${!hosts[@]}"; do
  host="${hosts[$rank]}"
  remote="cd $repo_dir && JAX_COORDINATOR_ADDRESS=${hosts[0]}:$port JAX_NUM_PROCESSES=${#hosts[@]}"
  remote+=" JAX_PROCESS_ID=$rank $PYTHON -m memagent_jax.train --config=$config$overrides"
  if [[ "$DRY_RUN" == "1" ]]; then
    run ssh "$host" "$remote"
  else
    ssh "$host" "$remote" > "$log_dir/host-$rank.log" 2>&1 &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
