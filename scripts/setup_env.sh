#!/usr/bin/env bash
# Create .venv (once) and install FedBioBERT with its test tools. Safe to run again.
# torch is installed first and pinned: on a CPU-only machine `pip install torch==2.13.0` takes the
# CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${FEDBIOBERT_TORCH:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
STAMP=.venv/.fedbiobert-installed
if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
    .venv/bin/python -m pip install --quiet -e ".[test]"
    touch "$STAMP"
fi
