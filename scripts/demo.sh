#!/usr/bin/env bash
# Set up (if needed) and run a small FedBioBERT pre-training demo on the shared biomedical corpus:
# 3 processes (1 server, 2 client processes), 4 silos (one per source file group), 3 rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
DATA_DIR="${FEDBIOBERT_DATA:-../shared/data/pretrain}"
OUT="${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}"
.venv/bin/torchrun --standalone --nproc_per_node 3 run.py \
    --arch bert --num_client_encoder 2 --num_server_encoder 2 \
    --hidden_size 128 --num_attention_heads 2 --intermediate_size 512 \
    --n_clients 4 --participation_ratio 0.5 --n_comm_rounds 3 --n_local_rounds 1 \
    --num_batch 20 --batch_size 8 --max_len 128 \
    --partition_data by_file --data_dir "$DATA_DIR" --output_dir "$OUT"
.venv/bin/python -m fedbiobert.report "$OUT"
