"""Warm-started comparison of server optimisers: the parity experiment's `small` pre-training runs
(all-MiniLM-L6-v2 from models/minilm-l6, 2 silos x 2 rounds x 20 batches) with extra run options;
prints each run's validation loss per round (docs/federated-optimisation.md).

    .venv/bin/python scripts/fedopt_warm_start.py LABEL [RUN OPTIONS...]
    .venv/bin/python scripts/fedopt_warm_start.py fedavgm --server_optimizer fedavgm --server_lr 2
    RUNS=fedbiobert-3-3 .venv/bin/python scripts/fedopt_warm_start.py fp32 --exchange_dtype fp32   # one run only
"""
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from fedbiobert.bench.runner import RunnerSettings, run_spec
from fedbiobert.experiments.parity_plan import PRESETS, pretraining_specs

label, flags = sys.argv[1], sys.argv[2:]
preset = dataclasses.replace(PRESETS["small"], extra_flags=tuple(flags))
specs = pretraining_specs(preset, Path("models/minilm-l6"), None,
                          os.environ.get("RUNS", "fedbiobert-3-3,fedbiobert-3-3-serverhead,fedbert-0-6,fedavg"))
out = Path(f"runs/fedopt-warm-{label}")
settings = RunnerSettings(out, Path("../shared/data/pretrain"), None, 1800)
for spec in specs:
    started = time.time()
    outcome = run_spec(spec, settings)
    lines = (outcome.run_dir / "metrics.jsonl").read_text().splitlines() if outcome.status == "ok" else []
    rounds = [json.loads(line) for line in lines]
    rounds = [(e["round"], round(e["val_loss"], 4), round(e["val_loss_se"], 4), round(e["seconds"], 1))
              for e in rounds if e["event"] == "round"]
    print(label, spec.name, outcome.status, f"{time.time() - started:.0f}s", rounds, flush=True)
