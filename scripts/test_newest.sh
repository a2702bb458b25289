#!/usr/bin/env bash
# The suite on the newest releases that setup.py's ranges allow (Python 3.12; jax >= 0.11 needs it), in a
# fresh venv apart from the CPU set of .ci/run. torch has no CPU-only wheel for 3.12 here, so the
# transformers-parity tests that need it skip with the reason.
#   scripts/test_newest.sh [pytest args]      VENV=/tmp/memagent-newest, PYTHON=python3.12 override
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-/tmp/memagent-newest}"
# pyenv's 3.12 where there is one (these machines), else whatever python3.12 is on PATH.
PYTHON="${PYTHON:-$(ls -d ~/.pyenv/versions/3.12.*/bin/python 2>/dev/null | sort -V | tail -1)}"
PYTHON="${PYTHON:-python3.12}"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# No constraints file: the newest release inside each range.
"$VENV/bin/python" -m pip install -q --upgrade -e ".[test]"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|grain|transformers|torch) '
"$VENV/bin/python" -m pytest -q "$@"
