"""Experiments built on the bench's runner, the warm start and the fine-tuner: one command each.

    python -m fedbiobert.experiments parity --preset small --out runs/parity
    python -m fedbiobert.experiments liu_miller|hilmkil|attention --preset small --out DIR   (docs/experiments.md)
    python -m fedbiobert.experiments lora --preset small --out DIR                           (docs/lora.md)

- `parity_plan.py`: presets, the pre-training runs (bench matrix entries) and the downstream jobs;
- `downstream.py`: one `fedbiobert.finetune` subprocess per model, task and mode;
- `parity_report.py`: results.json, results.md and parity.png, with the comparisons' definitions;
- `parity.py`: the `parity` command (plan, pre-train, fine-tune, report; `--resume`);
- `progress.py`: progress lines;
- `common.py`: what the seed papers' experiments share (options, checks, pre-training budgets and runs, a
  downstream job named by its fine-tuning mode);
- `liu_miller_plan.py`, `liu_miller_report.py`, `liu_miller.py`: Liu & Miller 2020's Table 1 (pre-training
  condition x centralized/federated fine-tuning, NER precision/recall/F1, the paper's pattern);
- `hilmkil_report.py`, `hilmkil.py`: Hilmkil et al. 2021's silo-count sweep (accuracy, rounds to 90%);
- `attention_analysis.py`, `attention_report.py`, `attention.py`: per-head attention entropy, Spearman and
  Jensen-Shannon comparisons between the general model and its continual pre-trainings;
- `lora.py`, `lora_report.py`: LoRA against full weights (federated fine-tuning rules and bytes; pre-training
  loss at equal tokens).
"""
