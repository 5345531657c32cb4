#!/usr/bin/env bash
# Create .venv (once) and install FedBioBERT with its test tools. Safe to run again.
# torch is installed first and pinned: on a CPU-only machine `pip install torch==2.13.0` takes the
# CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
# FEDBIOBERT_TORCH replaces that pip argument list, e.g. for a CUDA 12.6 build on a GPU machine:
#   FEDBIOBERT_TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126' bash scripts/setup_env.sh
# A changed FEDBIOBERT_TORCH (or setup.cfg) reinstalls; PYTHON picks the interpreter of a new .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${FEDBIOBERT_TORCH:-torch==2.13.0}"
read -r -a TORCH_ARGS <<< "$TORCH_SPEC"  # words: a requirement plus pip options such as --index-url
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
STAMP=.venv/.fedbiobert-installed
if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ] || [ "$(cat "$STAMP")" != "$TORCH_SPEC" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "${TORCH_ARGS[@]}"
    .venv/bin/python -m pip install --quiet -e ".[test]"
    printf '%s' "$TORCH_SPEC" > "$STAMP"
fi
