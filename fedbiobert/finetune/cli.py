"""`python -m fedbiobert.finetune`: fine-tune a model on a NER or classification folder and score it.

    python -m fedbiobert.finetune --data ../shared/data/ner/ncbi_disease --model runs/pt/round3 \\
        --seeds 1,2,3 --output results.json

Bad input (files, options, models) ends with one line naming the value and exit status 2; the
output is written atomically, so a failed run leaves nothing behind. Under torchrun, `--mode
federated` spreads the silos over the processes (rank 0 evaluates and writes).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fedbiobert.atomic import write_json_atomically
from fedbiobert.constants import SERVER_OPTIMIZERS
from fedbiobert.config.options import parse_bool  # True/False (1/0, yes/no), as the engine's options
from fedbiobert.finetune.aggregation import AGGREGATIONS
from fedbiobert.finetune.errors import InputError
from fedbiobert.finetune.fedlora import ALGORITHMS, LORA_DEFAULT_LR, check_algorithm_options, lora_settings
from fedbiobert.finetune.federated import ProcessContext
from fedbiobert.finetune.modeling import TASKS
from fedbiobert.finetune.output import results_table, summarize, summary_names
from fedbiobert.finetune.probe import FeatureCache
from fedbiobert.finetune.run import PROBE_LR, detect_task, load_task_data, run_once
from fedbiobert.finetune.silos import MAX_SILOS, SPLITS

logger = logging.getLogger(__name__)
# the same in every seed's record (sizes of what is exchanged): copied to the top of the output
COMMUNICATION_KEYS = ("aggregation", "bytes_up_per_round", "bytes_down_per_round", "bytes_up_per_silo",
                      "bytes_down_per_silo", "full_model_bytes_per_silo", "communication_vs_full_model")
PROG = "fedbiobert-finetune"


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of a fine-tuning run except --model (shared with fedbiobert.finetune.exports)."""
    data = parser.add_argument_group("task and data")
    data.add_argument("--data", required=True, help="NER folder (train.tsv, devel.tsv, test.tsv) or "
                      "classification folder (train.csv, test.csv with label,text)")
    data.add_argument("--task", choices=("auto", *TASKS), default="auto", help="default: from the folder's files")
    data.add_argument("--max_train_sentences", type=int, help="use the first N training sentences/rows")
    data.add_argument("--max_test_sentences", type=int, help="use the first N dev and test sentences/rows")
    data.add_argument("--dev_ratio", type=float, default=0.1, help="share of train held out when there is no dev file")
    size = parser.add_argument_group("model for --model none (random initialisation)")
    size.add_argument("--tokenizer", help="vocab.txt or HF tokenizer folder (default with a model folder: its own)")
    size.add_argument("--arch", choices=("bert", "roberta"), default="bert")
    size.add_argument("--hidden_size", type=int, default=128)
    size.add_argument("--num_hidden_layers", type=int, default=4)
    size.add_argument("--num_attention_heads", type=int, default=2)
    size.add_argument("--intermediate_size", type=int, default=512)
    train = parser.add_argument_group("training")
    train.add_argument("--mode", choices=("centralized", "federated"), default="centralized")
    train.add_argument("--epochs", type=int, default=3, help="centralized: epochs (at most; early stopping)")
    train.add_argument("--rounds", type=int, default=3, help="federated: FedAvg rounds (at most; early stopping)")
    train.add_argument("--local_epochs", type=int, default=1, help="federated: epochs per silo per round")
    train.add_argument("--n_clients", type=int, default=4, help=f"federated: silos (1..{MAX_SILOS})")
    train.add_argument("--split", choices=SPLITS, default="random", help="federated: how silos are drawn")
    train.add_argument("--dirichlet_alpha", type=float, default=0.5, help="label skew of --split dirichlet")
    train.add_argument("--participation_ratio", type=float, default=1.0, help="share of silos per round")
    train.add_argument("--probe", type=parse_bool, nargs="?", const=True, default=False, metavar="True|False",
                       help="frozen-encoder probe: train only the task head (NER: the token classifier; "
                       "classification: the classifier and BERT's pooler) on fixed encoder features, the "
                       "encoder in eval mode. Cheap, and more sensitive to what pre-training put in the encoder")
    train.add_argument("--lr", type=float, help="peak learning rate (default 5e-5, 2e-5 for hidden >= 768; "
                       f"with --probe {PROBE_LR:g}: a head alone wants a much higher rate, 1e-3 to 1e-2)")
    _add_federated_optimisation(train)
    _add_lora(parser.add_argument_group("federated LoRA (--algorithm fedlora; fedlora.py, aggregation.py)"))
    train.add_argument("--batch_size", type=int, default=32)
    train.add_argument("--max_len", type=int, default=128, help="sub-tokens per example, specials included")
    train.add_argument("--group_by_length", type=int, default=0, metavar="K",
                       help="batch examples of similar length: windows of K batches of the shuffled training set, "
                       "each sorted by length (less padding, faster steps; 0: off, plain shuffle)")
    train.add_argument("--warmup_ratio", type=float, default=0.1)
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--patience", type=int, default=2, help="stop after N dev evaluations without gain (0: never)")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--seeds", help="comma-separated seeds (e.g. 1,2,3): mean and std over them")
    train.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model folder (e.g. OUT/round3) or none")
    parser.add_argument("--output", help="write the results as JSON to this file")
    add_finetune_arguments(parser)
    return parser


def _add_federated_optimisation(group) -> None:
    """The pre-training engine's server optimisers and kept silo optimisers (server_optimizer.py)."""
    group.add_argument("--server_optimizer", choices=SERVER_OPTIMIZERS, default="fedavg",
                       help="federated: how the round's average is taken (fedavg: replaces the model; fedavgm, "
                       "fedadam, fedyogi: FedOpt's server step on the pseudo-gradient)")
    group.add_argument("--server_lr", type=float, default=1.0, help="federated: the server optimiser's rate")
    group.add_argument("--server_momentum", type=float, default=0.9, help="federated: fedavgm's momentum")
    group.add_argument("--server_beta1", type=float, default=0.9, help="federated: fedadam/fedyogi first moment")
    group.add_argument("--server_beta2", type=float, default=0.99, help="federated: fedadam/fedyogi second moment")
    group.add_argument("--server_tau", type=float, default=1e-3, help="federated: fedadam/fedyogi adaptivity")
    group.add_argument("--keep_silo_optimizer", type=parse_bool, nargs="?", const=True, default=False,
                       metavar="True|False", help="federated: each silo keeps its AdamW moments across rounds")


def _add_lora(group) -> None:
    group.add_argument("--algorithm", choices=ALGORITHMS, default="fedavg", help="federated: fedavg exchanges the "
                       "whole model (or a probe's head); fedlora trains and exchanges LoRA adapters on the frozen "
                       f"--model (and the task head), default --lr {LORA_DEFAULT_LR:g}")
    group.add_argument("--aggregation", choices=AGGREGATIONS, default="weighted", help="federated: weighted "
                       "(examples-weighted mean: Fed-MedLoRA with fedlora), adaptive (weights exp(1 - validation "
                       "loss) on the dev split: Fed-MedLoRA+), exact (fedlora: the mean of the products B A, "
                       "folded into the base each round)")
    group.add_argument("--lora_rank", type=int, default=8, help="fedlora: adapter rank r")
    group.add_argument("--lora_alpha", type=float, default=16.0, help="fedlora: scaling alpha (update x alpha / r)")
    group.add_argument("--lora_dropout", type=float, default=0.05, help="fedlora: dropout on the adapter's input")
    group.add_argument("--lora_targets", default="query,value", help="fedlora: encoder-layer linear modules to "
                       "adapt, comma-separated name suffixes (query, key, value, attention.output.dense, "
                       "intermediate.dense, output.dense; dense: all three)")
    group.add_argument("--lora_exchange_head", type=parse_bool, nargs="?", const=True, default=True,
                       metavar="True|False", help="fedlora: train and exchange the task head (False: the head "
                       "stays its seeded initialisation, the same on every silo)")


def _check_federated_optimisation(options) -> None:
    _require(0 < options.server_lr <= 100, f"--server_lr {options.server_lr} (accepted: 0 < rate <= 100)")
    for name in ("server_momentum", "server_beta1", "server_beta2"):
        value = getattr(options, name)
        _require(0 <= value < 1, f"--{name} {value} (accepted: 0 <= value < 1)")
    _require(options.server_tau > 0, f"--server_tau {options.server_tau} (accepted: > 0)")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def check_options(options) -> list[int]:
    """InputError naming the first bad value; returns the seeds to run."""
    _require(1 <= options.n_clients <= MAX_SILOS, f"--n_clients {options.n_clients} (accepted: 1..{MAX_SILOS})")
    _require(0 < options.participation_ratio <= 1, f"--participation_ratio {options.participation_ratio} "
             "(accepted: 0 < ratio <= 1)")
    _require(options.dirichlet_alpha > 0, f"--dirichlet_alpha {options.dirichlet_alpha} (accepted: > 0)")
    for name in ("epochs", "rounds", "local_epochs", "batch_size", "max_train_sentences", "max_test_sentences"):
        value = getattr(options, name)
        _require(value is None or value >= 1, f"--{name} {value} (accepted: an integer >= 1)")
    _require(options.max_len >= 8, f"--max_len {options.max_len} (accepted: >= 8)")
    _require(0 < options.dev_ratio < 1, f"--dev_ratio {options.dev_ratio} (accepted: 0 < ratio < 1)")
    _require(0 <= options.warmup_ratio < 1, f"--warmup_ratio {options.warmup_ratio} (accepted: 0 <= ratio < 1)")
    _require(options.lr is None or options.lr > 0, f"--lr {options.lr} (accepted: > 0)")
    _require(options.patience >= 0, f"--patience {options.patience} (accepted: >= 0)")
    _require(options.group_by_length >= 0, f"--group_by_length {options.group_by_length} (accepted: 0 (off) or a "
             "number of batches >= 1)")
    _check_federated_optimisation(options)
    check_algorithm_options(options)
    if options.seeds is None:
        return [options.seed]
    try:
        seeds = [int(part) for part in options.seeds.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--seeds {options.seeds!r} (accepted: comma-separated integers, e.g. 1,2,3)") from None
    _require(bool(seeds), f"--seeds {options.seeds!r} (accepted: comma-separated integers, e.g. 1,2,3)")
    return seeds


def process_context(options) -> ProcessContext:
    """One process, or (under torchrun with --mode federated) the engine's collectives over gloo."""
    from fedbiobert.comm.collectives import Collectives
    from fedbiobert.comm.groups import init_distributed
    from fedbiobert.comm.launch_env import launch_info_from_env
    from fedbiobert.finetune.federated import build_topology
    launch = launch_info_from_env()
    if launch.world_size == 1:
        return ProcessContext()
    _require(options.mode == "federated", f"--mode {options.mode} runs in one process (accepted under "
             "torchrun: --mode federated)")
    _require(options.n_clients >= launch.world_size, f"--n_clients {options.n_clients} is fewer than the "
             f"{launch.world_size} processes (accepted: at least one silo per process)")
    import torch
    topology = build_topology(options.n_clients, options.participation_ratio, options.seed, launch.world_size)
    collectives = Collectives(init_distributed(launch, topology, False, 1800.0), torch.device("cpu"))
    return ProcessContext(launch.rank, launch.world_size, collectives.sum_clients, collectives.broadcast_from_rank0)


def finetune(options, context: ProcessContext = ProcessContext()) -> dict:
    """Run every seed; the result record (mean/std over seeds) on rank 0, {} elsewhere."""
    seeds = check_options(options)
    data = Path(options.data)
    task = detect_task(data) if options.task == "auto" else options.task
    task_data = load_task_data(task, data, options.max_train_sentences, options.max_test_sentences, options.dev_ratio)
    cache = FeatureCache() if options.probe else None  # a probe's encoder runs once for all seeds
    runs = [run_once(options, task_data, seed, context, cache) for seed in seeds]
    if context.rank != 0:
        return {}
    mean, std = summarize(runs, summary_names(task))
    return {"task": task, "data": str(data), "mode": options.mode, "model": str(options.model),
            "probe": bool(options.probe), "algorithm": options.algorithm,
            "lora": lora_settings(options).record() if options.algorithm == "fedlora" else None,
            "n_clients": options.n_clients if options.mode == "federated" else 1,
            "epochs": options.epochs if options.mode == "centralized" else None,
            "rounds": options.rounds if options.mode == "federated" else None,
            "local_epochs": options.local_epochs if options.mode == "federated" else None,
            "seed": seeds[0] if len(seeds) == 1 else seeds, "seeds": seeds, "world_size": context.world_size,
            **{key: runs[0][key] for key in COMMUNICATION_KEYS if key in runs[0]},
            **mean, "std": std, "mean": mean, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    from fedbiobert.logs import setup_logging
    options = build_parser().parse_args(argv)
    setup_logging(int(os.environ.get("RANK", 0)))
    try:
        if options.threads:
            import torch
            torch.set_num_threads(options.threads)
        context = process_context(options)
        record = finetune(options, context)
        if record and options.output:
            write_json_atomically(options.output, record, parents=True)  # --output may name a new folder
    except InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(2)
    if record:
        print(results_table(record))
        if options.output:
            print(f"results written to {options.output}")
