"""Experiments built on the bench's runner, the warm start and the fine-tuner: one command each.

    python -m fedbiobert.experiments parity --preset small --out runs/parity

- `parity_plan.py`: presets, the pre-training runs (bench matrix entries) and the downstream jobs;
- `downstream.py`: one `fedbiobert.finetune` subprocess per model, task and mode;
- `parity_report.py`: results.json, results.md and parity.png, with the comparisons' definitions;
- `parity.py`: the `parity` command (plan, pre-train, fine-tune, report; `--resume`);
- `progress.py`: progress lines.
"""
