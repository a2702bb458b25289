#!/usr/bin/env bash
# Fetch HotpotQA dev (distractor setting) for RULER-HQA: scripts/fetch_eval_data.sh does the work.
# Usage: scripts/fetch_hotpotqa.sh [CACHE_DIR]; prints the path of hotpotqa.json.
exec "$(dirname "$0")/fetch_eval_data.sh" hotpotqa "$@"
