#!/usr/bin/env bash
# Make RULER's synthetic task files with NVIDIA RULER's own generator (scripts/data/prepare.py), so that our
# agent can be scored on RULER's exact task definitions and our own generators can be checked against them.
#
# Usage: scripts/make_ruler_samples.sh --tokenizer DIR --out DIR [options]
#
#   --tokenizer DIR   a tokenizer folder: a Hugging Face one (tokenizer.json) is used as it is; one of ours
#                     (SentencePiece tokenizer.model, e.g. runs/quickstart/tokenizer) is wrapped as a
#                     transformers LlamaTokenizer with no dummy prefix, checked to cut text exactly as
#                     SentencePiece does, since RULER counts tokens with transformers' AutoTokenizer.
#   --out DIR         files go to DIR/{length}/{task}/validation.jsonl (RULER's layout, one folder per length).
#   --lengths "L ..." max_seq_length of each file set, in tokens (default: 1024 4096 16384 65536).
#   --tasks "T ..."   tasks of RULER's scripts/synthetic.yaml
#                     (default: niah_single_1 niah_multikey_2 niah_multivalue niah_multiquery vt).
#   --samples N       rows per file (default 500, RULER's own default).
#   --seed N          RULER's --random_seed (default 42, RULER's own default).
#   --haystack TYPE   noise|needle: make the niah tasks whose haystack is Paul Graham's essays use TYPE
#                     instead (niah_single_2/3, niah_multikey_1, niah_multivalue, niah_multiquery), so they
#                     can be made offline. The folders keep RULER's task names: keep such data apart.
#   --template TYPE   RULER's --model_template_type (default: base, no chat template; our evaluation applies
#                     the checkpoint's own). Any other type of RULER's scripts/data/template.py also works.
#   --json FILE       (repeatable) a data file RULER reads from scripts/data/synthetic/json/, placed there
#                     under its own name: PaulGrahamEssays.json (essay haystacks), squad.json (qa_1),
#                     hotpotqa.json (qa_2). scripts/fetch_eval_data.sh {essays|squad|hotpotqa} fetches them.
#   --nltk-data DIR   an NLTK data folder holding tokenizers/punkt_tab, which RULER needs to cut essays into
#                     sentences. NLTK downloads it from its own hub, not from a package registry: where that
#                     hub cannot be reached, the essay tasks cannot be made without this folder.
#   --ruler DIR       a RULER checkout to use (default: HEAD of the mirror at $RULER_MIRROR, else a fresh
#                     clone of https://github.com/NVIDIA/RULER). It is copied, never changed.
#   --venv DIR        the Python environment RULER runs in (default /tmp/ruler-venv; made on first use with
#                     the packages below, from PyPI). PYTHON picks the interpreter that creates it.
#
# RULER retries a sample forever when the task's smallest prompt does not fit the length: vt below 1024 tokens
# is refused here for that reason, and qa_1 did not finish at 1024 tokens with the quickstart's tokenizer.
#
# RULER's prepare.py keeps a file that already has --samples rows (and prints that it skipped it), so a rerun
# only makes what is missing; delete a file to remake it with other options. Errors in RULER's task scripts
# are only printed by prepare.py: this script checks each file's row count instead and shows RULER's log.
#
# Example (offline, with the quickstart's tokenizer):
#   scripts/make_ruler_samples.sh --tokenizer runs/quickstart/tokenizer --out /tmp/ruler-data \
#       --lengths "1024 4096" --samples 8 --haystack noise
#   python -m memagent_jax.evaluate --checkpoint NAME=DIR --data '/tmp/ruler-data/1024/*/validation.jsonl'
#   (a checkpoint trained with shorter questions than niah_multiquery's, up to ~60 tokens, needs
#   --max_question_tokens 64)
set -euo pipefail

RULER_MIRROR="${RULER_MIRROR:-/work/.mirror/NVIDIA+RULER/repo}"
RULER_URL="https://github.com/NVIDIA/RULER"
# What RULER's data scripts import (prepare.py, synthetic/*.py, tokenizer.py for the hf type); sentencepiece
# and protobuf let transformers read a SentencePiece model.
PACKAGES=(wonderwords nltk tqdm pyyaml tenacity numpy transformers sentencepiece protobuf)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

TOKENIZER="" OUT="" RULER="" NLTK_DATA_DIR="" HAYSTACK="" TEMPLATE="base"
LENGTHS="1024 4096 16384 65536"
TASKS="niah_single_1 niah_multikey_2 niah_multivalue niah_multiquery vt"
SAMPLES=500 SEED=42 VENV="/tmp/ruler-venv"
JSON_FILES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --tokenizer|--out|--ruler|--lengths|--tasks|--samples|--seed|--haystack|--template|--json|--nltk-data|--venv)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --tokenizer) TOKENIZER="$2" ;; --out) OUT="$2" ;; --ruler) RULER="$2" ;; --lengths) LENGTHS="$2" ;;
        --tasks) TASKS="$2" ;; --samples) SAMPLES="$2" ;; --seed) SEED="$2" ;; --haystack) HAYSTACK="$2" ;;
        --template) TEMPLATE="$2" ;; --json) JSON_FILES+=("$2") ;; --nltk-data) NLTK_DATA_DIR="$2" ;;
        --venv) VENV="$2" ;;
      esac
      shift 2 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# ---- Check every input before anything is built.
[[ -n "$TOKENIZER" ]] || die "give --tokenizer DIR (see --help)"
[[ -n "$OUT" ]] || die "give --out DIR (see --help)"
[[ -d "$TOKENIZER" ]] || die "--tokenizer $TOKENIZER is not a folder"
[[ -f "$TOKENIZER/tokenizer.json" || -f "$TOKENIZER/tokenizer.model" ]] \
  || die "--tokenizer $TOKENIZER has neither tokenizer.json (Hugging Face) nor tokenizer.model (SentencePiece)"
[[ "$SAMPLES" =~ ^[1-9][0-9]*$ ]] || die "--samples must be a positive integer, got '$SAMPLES'"
[[ "$SEED" =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got '$SEED'"
read -r -a LENGTH_LIST <<< "$LENGTHS"
read -r -a TASK_LIST <<< "$TASKS"
[[ ${#LENGTH_LIST[@]} -gt 0 ]] || die "--lengths is empty"
[[ ${#TASK_LIST[@]} -gt 0 ]] || die "--tasks is empty"
for length in "${LENGTH_LIST[@]}"; do
  # RULER's binary search needs room for the template and the tokens to generate.
  [[ "$length" =~ ^[0-9]+$ && "$length" -ge 256 ]] || die "--lengths: '$length' is not a whole number of tokens >= 256"
  # vt's prompt carries a one-shot example of up to 500 tokens; RULER retries forever when the smallest
  # prompt does not fit, so refuse the lengths where it cannot.
  if [[ " ${TASK_LIST[*]} " == *" vt "* && "$length" -lt 1024 ]]; then
    die "--lengths: vt needs at least 1024 tokens (its one-shot example alone takes up to 500), got $length"
  fi
done
case "$HAYSTACK" in ""|noise|needle) ;; *) die "--haystack must be noise or needle, got '$HAYSTACK'" ;; esac
for file in ${JSON_FILES[@]+"${JSON_FILES[@]}"}; do
  [[ -s "$file" ]] || die "--json $file: no such file (or empty)"
  case "$(basename "$file")" in
    PaulGrahamEssays.json|squad.json|hotpotqa.json) ;;
    *) die "--json $file: RULER reads only PaulGrahamEssays.json, squad.json and hotpotqa.json" ;;
  esac
done
[[ -z "$NLTK_DATA_DIR" || -d "$NLTK_DATA_DIR" ]] || die "--nltk-data $NLTK_DATA_DIR is not a folder"

WORK="$(mktemp -d -t make-ruler-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT  # a signal exits through the EXIT trap too
trap 'exit 143' TERM

# ---- RULER's scripts, copied into WORK: the task table may be edited there (--haystack) and data files
# placed there (--json) without touching the checkout they came from.
if [[ -n "$RULER" ]]; then
  [[ -f "$RULER/scripts/data/prepare.py" ]] || die "--ruler $RULER has no scripts/data/prepare.py"
  cp -r "$RULER/scripts" "$WORK/scripts"
  SOURCE="$RULER ($(git -C "$RULER" rev-parse HEAD 2>/dev/null || echo 'not a git checkout'))"
elif [[ -d "$RULER_MIRROR" ]]; then
  git -C "$RULER_MIRROR" archive HEAD scripts | tar -x -C "$WORK"
  SOURCE="$RULER_URL at $(git -C "$RULER_MIRROR" rev-parse HEAD) (mirror $RULER_MIRROR)"
else
  git clone --quiet --depth 1 "$RULER_URL" "$WORK/clone" >&2
  mv "$WORK/clone/scripts" "$WORK/scripts"
  SOURCE="$RULER_URL at $(git -C "$WORK/clone" rev-parse HEAD)"
fi
DATA_DIR="$WORK/scripts/data"
for file in ${JSON_FILES[@]+"${JSON_FILES[@]}"}; do
  cp "$file" "$DATA_DIR/synthetic/json/"
done

# ---- The environment RULER runs in, apart from ours (RULER's scripts pin nothing; transformers and numpy
# versions of our project's venv stay untouched). A marker file says the install finished.
if [[ ! -f "$VENV/.ruler-packages" ]]; then
  echo "making $VENV (${PACKAGES[*]})" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
  printf '%s\n' "${PACKAGES[@]}" > "$VENV/.ruler-packages"
fi
# prepare.py starts each task script as plain `python`: the venv must come first on PATH.
export PATH="$VENV/bin:$PATH"
export TRANSFORMERS_VERBOSITY=error  # RULER needs no PyTorch; transformers' warning about it is noise
[[ -n "$NLTK_DATA_DIR" ]] && export NLTK_DATA="$NLTK_DATA_DIR"
# prepare.py asks NLTK for punkt and tries to download it when missing; offline that fails in a moment and
# is harmless for tasks that never cut an essay into sentences.

# ---- The task table: RULER's, or a copy whose essay haystacks are replaced.
python - "$DATA_DIR/../synthetic.yaml" "$HAYSTACK" "${TASK_LIST[@]}" <<'PY'
import sys
import yaml
path, haystack, tasks = sys.argv[1], sys.argv[2], sys.argv[3:]
table = yaml.safe_load(open(path))
unknown = [t for t in tasks if t not in table]
if unknown:
    sys.exit(f"error: {', '.join(unknown)} not in RULER's synthetic.yaml (tasks: {', '.join(table)})")
if haystack:
    for name, task in table.items():
        if task["task"] == "niah" and task["args"].get("type_haystack") == "essay":
            task["args"]["type_haystack"] = haystack
    with open(path, "w") as f:
        yaml.safe_dump(table, f, sort_keys=False)
essay = [t for t in tasks if table[t]["args"].get("type_haystack") == "essay"]
if essay:
    import os
    import nltk
    if not os.path.isfile(os.path.join(os.path.dirname(path), "data/synthetic/json/PaulGrahamEssays.json")):
        sys.exit(f"error: {', '.join(essay)} use Paul Graham's essays: give --json PaulGrahamEssays.json "
                 "(scripts/fetch_eval_data.sh essays), or --haystack noise")
    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        sys.exit(f"error: {', '.join(essay)} cut essays into sentences with NLTK's punkt_tab, which is not "
                 "installed: give --nltk-data DIR, or --haystack noise")
PY

# ---- The tokenizer RULER counts with (transformers' AutoTokenizer, RULER's "hf" type).
if [[ -f "$TOKENIZER/tokenizer.json" ]]; then
  HF_TOKENIZER="$TOKENIZER"
else
  # Our SentencePiece models are trained without a dummy prefix (" " is not prepended to the text), so the
  # wrapper must not add one; legacy mode keeps transformers from re-adding it around special tokens.
  HF_TOKENIZER="$WORK/tokenizer"
  python - "$TOKENIZER/tokenizer.model" "$HF_TOKENIZER" <<'PY'
import json, os, shutil, sys
import sentencepiece as spm
from transformers import AutoTokenizer
model, out = sys.argv[1:]
staging = out + ".in"
os.makedirs(staging)
shutil.copy(model, os.path.join(staging, "tokenizer.model"))
config = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_prefix_space": False,
          "add_bos_token": False, "add_eos_token": False,
          "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
with open(os.path.join(staging, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
AutoTokenizer.from_pretrained(staging).save_pretrained(out)
# The saved folder must cut RULER-like text exactly as SentencePiece does, or every length would be off.
hf, sp = AutoTokenizer.from_pretrained(out), spm.SentencePieceProcessor(model_file=model)
text = ("Some special magic numbers are hidden within the following text.\nThe grass is green. The sky is "
        "blue.\nOne of the special magic numbers for ruthless-mill is: 8213375.\nVAR QWERT = 40815\n"
        "VAR ASDFG = VAR QWERT \n  two  spaces, tab\there; 3.14159 and A-B-C?\n")
want, got = sp.encode(text, out_type=str), hf.tokenize(text)
if got != want:
    sys.exit(f"error: the transformers wrapper of {model} cuts text differently from SentencePiece "
             f"({len(got)} vs {len(want)} tokens): {got[:20]} vs {want[:20]}")
PY
fi

# ---- RULER's generator, one (length, task) at a time.
mkdir -p "$OUT"
# Where the files came from, one block per run (a rerun into the same --out adds to what is there).
printf 'lengths: %s\ntasks: %s\nRULER: %s\ntokenizer: %s\ntemplate: %s\nhaystack override: %s\nseed: %s\n\n' \
  "${LENGTH_LIST[*]}" "${TASK_LIST[*]}" "$SOURCE" "$TOKENIZER" "$TEMPLATE" "${HAYSTACK:-none}" "$SEED" \
  >> "$OUT/ruler_source.txt"
for length in "${LENGTH_LIST[@]}"; do
  for task in "${TASK_LIST[@]}"; do
    file="$OUT/$length/$task/validation.jsonl"
    log="$WORK/$length-$task.log"
    start=$SECONDS
    python "$DATA_DIR/prepare.py" --save_dir "$OUT/$length" --benchmark synthetic --task "$task" \
      --tokenizer_path "$HF_TOKENIZER" --tokenizer_type hf --max_seq_length "$length" \
      --model_template_type "$TEMPLATE" --num_samples "$SAMPLES" --random_seed "$SEED" > "$log" 2>&1 \
      || { cat "$log" >&2; die "RULER's prepare.py failed for $task at $length tokens"; }
    rows=$( [[ -f "$file" ]] && wc -l < "$file" || echo 0 )
    if [[ "$rows" -ne "$SAMPLES" ]]; then
      tail -n 40 "$log" >&2
      die "$file has $rows rows, expected $SAMPLES (RULER's log above)"
    fi
    echo "$file: $rows rows ($((SECONDS - start))s)"
  done
done
