"""The option table of a run: every option's flag, default, meaning and accepted values (`Config`),
the values derived from them (the parsers of structured option values are in `parsers.py`).

Booleans are written `True`/`False` as in the original FedBioBERT code.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from fedbiobert.config.parsers import (AGGREGATE_WEIGHTINGS, FAULT_KINDS, ConfigError, _require,  # noqa: F401
                                       parse_bool, parse_fl_aggregate, parse_gpu_ids, parse_injections)
from fedbiobert.config.lora import LoraSettings, parse_targets
from fedbiobert.constants import (ARCHS, DEFAULT_SERVER_LR, EXCHANGE_DTYPES, HEAD_PLACEMENTS, PARTITION_SCHEMES,
                                  SERVER_OPTIMIZERS)

SERVER_SCHEDULES = ("auto", "parallel", "sequential")
CLIENT_SEEDS = ("distinct", "shared")
SERVER_OUTPUTS = ("auto", "full", "masked")
COMM_DTYPES = ("fp32", "bf16", "fp16")
PRECISIONS = ("fp32", "bf16", "fp16")  # compute dtype of the forwards (fedbiobert/precision.py)
# Flags of the original (image-oriented) code that mean nothing for text: accepted, then ignored.
IGNORED_FLAGS = ("pn_normalize", "complex_arch", "world_conf")
# Options of a launcher that reach run.py in the original commands (`--hostfile` written after run.py;
# `--local_rank`, which the DeepSpeed launcher appends): accepted, then ignored (LOCAL_RANK is read).
LAUNCHER_FLAGS = ("hostfile", "local_rank")
BACKENDS = ("auto", "nccl", "gloo")


def _opt(default: Any, help: str | Callable[[], str], aliases: tuple[str, ...] = (), choices: Sequence = (),
         group: str = "run", fold_case: bool = False):
    """An option: `help` may be a function (a text made when asked); `fold_case`: its value is lower-cased."""
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices,
                                            "group": group, "fold_case": fold_case})


def field_help(config_field: dataclasses.Field) -> str:
    """An option's help text (--algorithm's is made from the registry when asked)."""
    text = config_field.metadata["help"]
    return text() if callable(text) else text


# --- the algorithm registry, read lazily ----------------------------------------------------------
# An algorithm owns its rules (fedbiobert/algorithms/base.py) and config asks the registry for them.
# fedbiobert.algorithms is imported when they are first needed, not at the top of this module: it
# imports fedbiobert.config (a cycle otherwise), torch and transformers, and config must stay importable
# without them (fedbiobert.launcher, the report and the bench import it first).
def algorithm_rules(name: str, module: str | None = None) -> type:
    """The Algorithm class of --algorithm NAME (after importing --algorithm_module MODULE, which registers
    it); ConfigError when no such algorithm is registered."""
    from fedbiobert.algorithms import algorithm_class
    return algorithm_class(name, module)


def registered_algorithms() -> dict[str, type]:
    """name -> Algorithm class, every algorithm registered so far."""
    from fedbiobert.algorithms import REGISTRY
    return REGISTRY


class _RegisteredNames(Sequence):
    """--algorithm's choices: the registry's names when read (an --algorithm_module adds its own)."""

    def __getitem__(self, index):
        return tuple(registered_algorithms())[index]

    def __len__(self) -> int:
        return len(registered_algorithms())

    def __iter__(self):
        return iter(tuple(registered_algorithms()))


def _algorithm_help() -> str:
    return "; ".join(f"{name} ({rules.summary})" for name, rules in registered_algorithms().items())


@dataclass(frozen=True)
class Config:
    # --- what is trained -------------------------------------------------------------------
    algorithm: str = _opt("fedbiobert", _algorithm_help, choices=_RegisteredNames(), group="model")
    algorithm_module: str | None = _opt(None, "a module of yours (dotted path, importable from the working "
                                        "directory or PYTHONPATH) imported before the options are checked: it "
                                        "registers an algorithm with fedbiobert.algorithms.register, for "
                                        "--algorithm to name (see fedbiobert/algorithms/base.py)", group="model")
    # any case: the original README writes `--arch Roberta`
    arch: str = _opt("bert", "model family (in any case)", choices=ARCHS, group="model", fold_case=True)
    num_client_encoder: int = _opt(6, "encoder layers on the client (the cut)", group="model")
    num_server_encoder: int = _opt(6, "encoder layers on the server", group="model")
    hidden_size: int = _opt(768, "hidden size of a freshly initialised model", group="model")
    num_attention_heads: int = _opt(12, "attention heads of a fresh model", group="model")
    intermediate_size: int = _opt(3072, "feed-forward size of a fresh model", group="model")
    vocab_size: int = _opt(30522, "vocabulary size when a tokenizer is trained on the corpus", group="model")
    init_from: str | None = _opt(None, "start from this HF model folder instead of random weights",
                                 group="model")
    tokenizer: str | None = _opt(None, "a vocab.txt or HF tokenizer folder; default: train one on the corpus",
                                 group="model")
    head_placement: str = _opt("client", "where the final MLM head runs: client (labels never leave the silo)"
                               " or server (labels of masked positions are sent; no reply needed)",
                               choices=HEAD_PLACEMENTS, group="model")
    tie_decoders: bool | None = _opt(None, "the final MLM head's decoder is the word-embedding matrix, as in BERT "
                                     "(the auxiliary head's always is): one vocabulary matrix in memory and in the "
                                     "model exchange. Needs the final head with the embeddings (not --head_placement "
                                     "server). Default: tied where it can be, unless an --init_from decoder differs "
                                     "from its embeddings", group="model")
    lora_rank: int = _opt(0, "train LoRA adapters of this rank on the frozen --init_from model instead of every "
                          "weight (with the MLM heads, and the embeddings if --lora_train_embeddings): only what "
                          "trains is exchanged at the round's end; exports merge the adapters. 0: off. "
                          "docs/lora.md", group="model")
    lora_alpha: float = _opt(16.0, "LoRA scaling alpha (the update is B A x alpha / rank)", group="model")
    lora_dropout: float = _opt(0.05, "dropout on the LoRA adapters' input", group="model")
    lora_targets: str = _opt("query,value", "encoder-layer linear modules that get adapters, comma-separated name "
                             "suffixes (query, key, value, attention.output.dense, intermediate.dense, output.dense; "
                             "dense: all three)", group="model")
    lora_train_embeddings: bool = _opt(False, "with --lora_rank: the embeddings (and the decoders tied to them) "
                                       "train and are exchanged too", group="model")
    server_output: str = _opt("auto", "head on the client: what the server sends back each step, its last hidden "
                              "states at every position (full: FedBERT as published, four activation-sized "
                              "transfers per step) or at the masked positions only (masked: the same loss and "
                              "gradients in about --mlm_probability of the bytes); auto: full for fedbert, masked "
                              "for fedbiobert", choices=SERVER_OUTPUTS, group="model")
    # --- federation -------------------------------------------------------------------------
    n_clients: int | None = _opt(None, "silos (default: 4; 1 for --algorithm centralized)",
                                 group="federation")
    participation_ratio: float = _opt(1.0, "fraction of clients sampled each round, in (0, 1]",
                                      group="federation")
    n_comm_rounds: int = _opt(10, "communication rounds", group="federation")
    n_local_rounds: int = _opt(1, "local rounds per communication round", group="federation")
    num_batch: int = _opt(100, "batches per client per local round", group="federation")
    fedavg_embedding_head: bool = _opt(True, "average embeddings and MLM heads too (False: they stay"
                                       " private to each client)", group="federation")
    fedavg_server_model: bool = _opt(True, "average the server replicas each round", group="federation")
    fl_aggregate: str = _opt("scheme=federated_average", "aggregation: scheme=federated_average"
                             "[,weighting=samples|uniform]", group="federation")
    server_optimizer: str | None = _opt(None, "how each averaged part (client parts; the whole model in fedavg; "
                                        "server replicas when there are several) takes the round's average: "
                                        "fedavg replaces it; fedavgm, fedadam, fedyogi step a server optimiser on "
                                        "the pseudo-gradient (round-start weights - average), as in FedOpt (Reddi "
                                        "et al. 2021) (default, as measured: fedadam from a random initialisation; "
                                        "fedavg with --init_from, and for centralized)", choices=SERVER_OPTIMIZERS,
                                        group="federation")
    server_lr: float | None = _opt(None, "the server optimiser's learning rate (default: 0.03 for fedadam and "
                                   "fedyogi, measured; 1 for fedavgm, FedAvg plus momentum)", group="federation")
    server_momentum: float = _opt(0.9, "fedavgm's momentum", group="federation")
    server_beta1: float = _opt(0.9, "fedadam/fedyogi: first-moment decay", group="federation")
    server_beta2: float = _opt(0.99, "fedadam/fedyogi: second-moment decay", group="federation")
    server_tau: float = _opt(1e-3, "fedadam/fedyogi: adaptivity (added to the root of the second moment)",
                             group="federation")
    keep_silo_optimizer: bool = _opt(False, "each silo keeps its own AdamW moments from one round to the next "
                                     "(saved with its private state; never averaged: they describe one silo's "
                                     "data); False: a fresh optimiser each round, as FedAvg does", group="federation")
    keep_server_optimizer: bool = _opt(False, "a server replica keeps its AdamW moments across rounds (one party "
                                       "owns them; replicas' moments are not averaged). Off by default: a fresh "
                                       "AdamW each round learned faster in the measured runs (docs/federated-"
                                       "optimisation.md)", group="federation")
    num_device: int | None = _opt(None, "server processes, the first ranks (default: 1 for fedbiobert and "
                                  "fedbert, 0 for fedavg and centralized)", aliases=("num_servers",),
                                  group="federation")
    server_schedule: str = _opt("auto", "fedbert: one server replica per client process (parallel) or one "
                                "shared server that client processes take turns with (sequential); auto: parallel "
                                "when the world has a server per client process, else sequential",
                                choices=SERVER_SCHEDULES, group="federation")
    client_seeds: str = _opt("distinct", "distinct: each silo its own sampling/masking/dropout seeds; shared: "
                             "the same for every silo (controlled experiments)", choices=CLIENT_SEEDS,
                             group="federation")
    comm_dtype: str = _opt("fp32", "dtype of activations and gradients on the wire", choices=COMM_DTYPES,
                           group="federation")
    activation_noise: float = _opt(0.0, "split algorithms: standard deviation of Gaussian noise added to every "
                                   "element of the hidden states a client sends (after --activation_clip); the "
                                   "client's own loss uses them un-noised. 0: off. What it costs and buys: "
                                   "docs/privacy.md", group="federation")
    activation_clip: float = _opt(0.0, "split algorithms: scale each token's sent hidden vector to L2 norm at most "
                                  "this before the noise (the noise multiplier is then activation_noise / "
                                  "activation_clip). 0: off", group="federation")
    exchange_dtype: str = _opt("int8", "how each silo sends its change since the round started in the model "
                               "exchange, and the aggregate comes back: fp32 as is; bf16; fp16 or int8 with a scale "
                               "per row (fedbiobert/codec.py; averaged in fp32). Measured in docs/model-exchange.md",
                               choices=EXCHANGE_DTYPES, group="federation")
    exchange_error_feedback: bool = _opt(True, "carry what --exchange_dtype lost to the sender's next round (each "
                                         "silo's upload and the aggregate's download)", group="federation")
    min_clients: int = _opt(1, "a round completes only if at least this many sampled clients report a usable "
                            "update; otherwise the run stops at the last checkpoint", group="federation")
    on_nonfinite: str = _opt("stop", "a client whose loss or update is NaN/inf: stop the run, or skip_client "
                             "(its update is left out of the average)", choices=("stop", "skip_client"),
                             group="federation")
    silo_timeout: float | None = _opt(None, "seconds a sampled client may spend on its local training in a round; "
                                      "one still training then is cut off at its next step and left out of the "
                                      "round (a straggler), like a client that fails", group="federation")
    inject_fault: str | None = _opt(None, "chaos testing: CLIENT:ROUND:KIND[,...] with KIND nan (the update is "
                                    "poisoned after training), error (the client raises after its first step) or "
                                    "stall (it stalls past --silo_timeout); 1-based rounds. Rehearses "
                                    "--on_nonfinite, --silo_timeout and --min_clients", group="federation")
    inject_nan_update: str | None = _opt(None, "chaos testing: CLIENT:ROUND[,...] is --inject_fault "
                                         "CLIENT:ROUND:nan", group="federation")
    max_inflight: int = _opt(4, "batches a client may run ahead of its server (client-head mode)",
                             group="federation")
    server_recompute: bool = _opt(False, "fedbiobert, head on the client: keep each batch's inputs and weights "
                                  "and run its server forward again when the GRAD comes, instead of keeping its "
                                  "graph (much less memory for one more forward per batch)", group="federation")
    # --- optimisation -------------------------------------------------------------------
    batch_size: int = _opt(16, "sequences per batch", group="optim")
    max_len: int = _opt(128, "tokens per sequence (packed blocks)", group="optim")
    lr: float = _opt(5e-4, "peak learning rate (AdamW)", group="optim")
    end_lr: float = _opt(1e-6, "learning rate at the end of the polynomial decay", group="optim")
    warmup_ratio: float = _opt(0.06, "fraction of steps of linear warm-up", group="optim")
    weight_decay: float = _opt(0.01, "AdamW weight decay", group="optim")
    head_warmup_steps: int = _opt(0, "steps (global, from the run's start) during which only the MLM heads "
                                  "train and the embeddings and encoder layers stay frozen: a warm start's new "
                                  "heads first learn to read the encoder instead of back-propagating noise "
                                  "into it", group="optim")
    body_lr_ratio: float = _opt(1.0, "learning rate of the embeddings and encoder layers over the heads' "
                                "(after --head_warmup_steps)", group="optim")
    max_grad_norm: float = _opt(1.0, "clip gradient norm per optimizer step (0: no clipping)", group="optim")
    precision: str = _opt("fp32", "compute precision of every forward (autocast; master weights, optimizer and "
                          "losses stay fp32): bf16; fp16 (CUDA only, with a dynamic loss scaler); fp32 (on CUDA "
                          "its matmuls use TF32). Independent of --comm_dtype", choices=PRECISIONS, group="optim")
    mlm_probability: float = _opt(0.15, "fraction of tokens masked", group="optim")
    manual_seed: int = _opt(42, "seed of everything", group="optim")
    same_seed_process: bool = _opt(True, "every process seeds its RNG with manual_seed (False: seed + rank)",
                                   group="optim")
    # --- data -----------------------------------------------------------------------------
    data_dir: str = _opt("../shared/data/pretrain", "a .txt/.jsonl file or a folder of them", group="data")
    data: str | None = _opt(None, "a corpus mix by name, as in the original (e.g. wikitext-pubmed): the files of "
                            "--data_dir whose names contain any of its '-'-separated words (default: every file)",
                            group="data")
    tot_files: int | None = _opt(None, "use only the first N corpus files (sorted by name, after --data)",
                                 group="data")
    partition_data: str = _opt("by_file", "how the corpus is split into silos", choices=PARTITION_SCHEMES,
                               group="data")
    dirichlet_alpha: float = _opt(0.5, "concentration of the dirichlet partition", group="data")
    label_suffix: str = _opt(".specialty", "sidecar label file suffix used by --partition_data label",
                             group="data")
    val_ratio: float = _opt(0.01, "fraction of each file's documents held out for validation (whole documents, "
                            "packed apart from the training blocks)", group="data")
    val_blocks: int = _opt(512, "validation blocks evaluated at each round end, drawn from every file's held-out "
                           "documents in proportion (0: no validation). 512 blocks of 128 tokens put the loss's "
                           "standard error near 0.5%%; summary.json reports it", group="data")
    cache_dir: str | None = _opt(None, "tokenizer and token cache (default ~/.cache/fedbiobert)", group="data")
    num_workers: int = _opt(0, "data-loader worker processes per client process", group="data")
    pin_memory: bool = _opt(False, "pin batches in memory (CUDA)", group="data")
    # --- output and resume -------------------------------------------------------------------
    output_dir: str = _opt("runs/fedbiobert", "where metrics, exports and checkpoints go",
                           aliases=("checkpoint_save_dir",), group="output")
    from_checkpoint: bool = _opt(False, "resume from output_dir/checkpoint", group="output")
    from_checkpoint_round: int | None = _opt(None, "resume after round K instead (output_dir/checkpoint/round{K}.pt)",
                                             group="output")
    keep_exports: int | None = _opt(None, "keep only the last N round{k}/ exports and their round states "
                                    "(--from_checkpoint_round can resume only from those; default: keep all)",
                                    group="output")
    stop_after_round: int | None = _opt(None, "exit cleanly after this round (e.g. to fit a job time limit); "
                                        "continue later with --from_checkpoint True", group="output")
    log_every: int = _opt(5, "log a line every this many steps when not on a terminal", group="output")
    # --- devices and transport ----------------------------------------------------------------
    on_cuda: bool = _opt(False, "use CUDA GPUs and NCCL", group="device")
    gpu_ids: str | None = _opt(None, "comma-separated GPU id per local process (e.g. 0,1,2), or per rank of the "
                               "world (e.g. 0,0,1,2,3: server and first client share GPU 0); default: LOCAL_RANK",
                               group="device")
    backend: str = _opt("auto", "backend of payloads and collectives: auto (nccl with --on_cuda True, else gloo); "
                        "headers always travel over gloo", choices=BACKENDS, group="device")
    wan_bandwidth_mbps: float | None = _opt(None, "emulate a wide-area network of this many Mbit/s between each "
                                            "silo and its server (off by default)", aliases=("link_bandwidth_mbps",),
                                            group="device")
    wan_latency_ms: float = _opt(0.0, "one-way latency of the emulated wide-area network, in ms",
                                 aliases=("link_latency_ms",), group="device")
    comm_timeout: float = _opt(600.0, "seconds any wait for a peer may take", group="device")
    round_timeout: float = _opt(86400.0, "seconds a process that finished its part of a round may wait for the "
                                "others at the round end (a round-sized bound: one process may have drawn no silo, "
                                "another several)", group="device")
    num_threads: int | None = _opt(None, "torch CPU threads per process (default: the CPUs this process may run "
                                   "on, its affinity, / local processes; an srun task's --cpus-per-task at most)",
                                   group="device")
    mmap_threshold_mb: float = _opt(0.0, "host allocations of at least this many MB get their own mmap, returned "
                                    "to the system when freed: the least memory, but slower on CPU (glibc; at most "
                                    "32; 0 keeps glibc's dynamic threshold)", group="device")
    malloc_trim_seconds: float = _opt(30.0, "every this many seconds, give glibc's free heap memory back to the "
                                      "system (malloc_trim), so resident memory does not creep up with steps "
                                      "(0: never)", group="device")

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.n_clients is None:  # implied by the algorithm, as --num_device is
            object.__setattr__(self, "n_clients", self.rules.default_n_clients)
        if self.server_optimizer is None:  # measured (docs/federated-optimisation.md): FedAdam from a random
            # init, where it closes the averaged parts' gap; FedAvg from --init_from, where FedAdam cost MLM loss
            adam = self.rules.exchanges_model and not self.init_from
            object.__setattr__(self, "server_optimizer", "fedadam" if adam else "fedavg")
        if self.server_lr is None:  # each optimiser's own scale: an adaptive step is not an update's multiple
            object.__setattr__(self, "server_lr", DEFAULT_SERVER_LR[self.server_optimizer])

    @property
    def rules(self) -> type:
        """The Algorithm class of --algorithm: its rules (class attributes and classmethods)."""
        return algorithm_rules(self.algorithm, self.algorithm_module)

    @property
    def lora(self) -> LoraSettings | None:
        """The LoRA settings (config/lora.py), None when every weight trains (--lora_rank 0)."""
        if not self.lora_rank:
            return None
        return LoraSettings(self.lora_rank, self.lora_alpha, self.lora_dropout, parse_targets(self.lora_targets))

    @property
    def is_split(self) -> bool:
        return self.rules.is_split

    @property
    def final_head_with_embeddings(self) -> bool:
        """The final MLM head runs where the word embeddings do (so its decoder can be tied to them)."""
        return not self.is_split or self.head_placement == "client"

    @property
    def num_servers(self) -> int:
        if self.num_device is not None:
            return self.num_device
        return self.rules.default_num_servers

    @property
    def wan(self) -> dict | None:
        """The emulated wide-area network, or None when there is none."""
        if self.wan_bandwidth_mbps is None and not self.wan_latency_ms:
            return None
        return {"bandwidth_mbps": self.wan_bandwidth_mbps, "latency_ms": self.wan_latency_ms}

    @property
    def num_layers(self) -> int:
        return self.num_client_encoder + self.num_server_encoder

    @property
    def aggregate_weighting(self) -> str:
        return parse_fl_aggregate(self.fl_aggregate)["weighting"]

    @property
    def server_sends_full_output(self) -> bool:
        """Head on the client: the server's OUTPUT (and the client's GRAD) cover every position."""
        if self.server_output == "auto":
            return self.rules.full_server_output
        return self.server_output == "full"

    @property
    def wire_dtype(self):
        import torch
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.comm_dtype]

    @property
    def fault_injections(self) -> dict[tuple[int, int], str]:
        """(silo_id, 0-based round) -> fault kind, from --inject_fault and --inject_nan_update."""
        return {**parse_injections(self.inject_nan_update, "--inject_nan_update", default_kind="nan"),
                **parse_injections(self.inject_fault, "--inject_fault")}

    @property
    def gpu_id_list(self) -> list[int] | None:
        return parse_gpu_ids(self.gpu_ids)

    @property
    def steps_per_round(self) -> int:
        """Optimizer steps one silo takes in one communication round."""
        return self.n_local_rounds * self.num_batch

    @property
    def total_steps(self) -> int:
        return self.n_comm_rounds * self.steps_per_round

    @property
    def last_round(self) -> int:
        """Rounds this invocation trains up to (1-based, inclusive)."""
        return self.stop_after_round or self.n_comm_rounds

    @property
    def clients_per_round(self) -> int:
        return max(1, round(self.n_clients * self.participation_ratio))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


BOOL_FIELDS = {f.name for f in dataclasses.fields(Config) if f.type in ("bool", bool, "bool | None")}
