#!/usr/bin/env bash
# Fetch SQuAD v2 dev for RULER's qa_1: scripts/fetch_eval_data.sh does the work.
# Usage: scripts/fetch_squad.sh [CACHE_DIR]; prints the path of squad.json.
exec "$(dirname "$0")/fetch_eval_data.sh" squad "$@"
