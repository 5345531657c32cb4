"""Benchmark harness: FedBioBERT against FedBERT, FedAvg and centralized training on one token budget.

    python -m fedbiobert.bench --quick --out bench/quick [--only fedbiobert-2-2,fedbert-0-4] [--links none,100:5]

Modules, one concern each:
    presets  model size and token budget of each preset (tiny, quick, cpu, gpu)
    matrix   the runs: data-driven entries x link settings -> `RunSpec` (with its run.py flags)
    runner   one `RunSpec` -> a torchrun subprocess -> `RunOutcome` (summary.json, status, error line)
    results  outcome -> one results.json row; speedups; machine description
    report   results.json, results.md, loss_vs_time.png
    __main__ the command line, progress output and exit codes
    memory   host memory per step (`python -m fedbiobert.bench.memory`)
    predict  transfer-bound speed-ups at a given size and network (`python -m fedbiobert.bench.predict`)
    exchange one silo's model-exchange bytes per encoding at a preset's size (`python -m fedbiobert.bench.exchange`)
    init_model a random-init HF folder of a preset's shape, for --init_from runs such as LoRA's
    lora_bytes federated fine-tuning's bytes per round, full-model FedAvg beside fedlora (`... bench.lora_bytes`)
    head     the MLM head's cost on masked positions only (`python -m fedbiobert.bench.head`)
    finetune fine-tuning throughput against a plain HF loop (`python -m fedbiobert.bench.finetune`)
"""
