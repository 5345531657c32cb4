#!/usr/bin/env bash
# Set up (if needed) and run a small FedBioBERT pre-training demo on the shared biomedical corpus:
# 3 processes (1 server, 2 client processes), 4 silos (one per source file group), 3 rounds.
#
#   bash scripts/demo.sh [OUTPUT_DIR] [RUN_OPTIONS...]
#
# OUTPUT_DIR defaults to runs/demo-DATE-TIME; RUN_OPTIONS are passed to fedbiobert-run after the demo's
# own and override them (e.g. --data_dir PATH, --n_comm_rounds 5). The corpus is FEDBIOBERT_DATA, else
# ../shared/data/pretrain; it is checked before anything is installed or started.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${FEDBIOBERT_DATA:-../shared/data/pretrain}"
OUT="runs/demo-$(date +%Y%m%d-%H%M%S)"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    OUT="$1"
    shift
fi
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do  # a --data_dir among the options is the corpus
    case "${ARGS[i]}" in
        --data_dir=*) DATA_DIR="${ARGS[i]#--data_dir=}" ;;
        --data_dir) DATA_DIR="${ARGS[i + 1]:-$DATA_DIR}" ;;
    esac
done

has_corpus() {  # a .txt/.jsonl file, or a folder holding one
    if [ -f "$1" ]; then
        case "$1" in *.txt | *.jsonl) return 0 ;; esac
        return 1
    fi
    [ -d "$1" ] && [ -n "$(find "$1" -maxdepth 1 -type f \( -name '*.txt' -o -name '*.jsonl' \) -print -quit)" ]
}

if ! has_corpus "$DATA_DIR"; then
    cat >&2 <<EOF
demo: no corpus at '$DATA_DIR' (looked for a .txt/.jsonl file or a folder of them, from $(pwd))
  Point the demo at one (plain text, one document per line):
      FEDBIOBERT_DATA=/path/to/corpus bash scripts/demo.sh
      bash scripts/demo.sh OUTPUT_DIR --data_dir /path/to/corpus
  The demo's corpus is public biomedical text kept outside the repository (in ../shared/data beside
  it); README.md, section "Data sources", lists each file's source and licence.
EOF
    exit 2
fi

bash scripts/setup_env.sh
.venv/bin/fedbiobert-run --nproc_per_node 3 \
    --arch bert --num_client_encoder 2 --num_server_encoder 2 \
    --hidden_size 128 --num_attention_heads 2 --intermediate_size 512 \
    --n_clients 4 --participation_ratio 0.5 --n_comm_rounds 3 --n_local_rounds 1 \
    --num_batch 20 --batch_size 8 --max_len 128 \
    --partition_data by_file --data_dir "$DATA_DIR" --output_dir "$OUT" "${ARGS[@]}"
# --output_dir among the options wins over OUTPUT_DIR: report on the folder the run wrote
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    case "${ARGS[i]}" in
        --output_dir=* | --checkpoint_save_dir=*) OUT="${ARGS[i]#*=}" ;;
        --output_dir | --checkpoint_save_dir) OUT="${ARGS[i + 1]:-$OUT}" ;;
    esac
done
.venv/bin/python -m fedbiobert.report "$OUT"
