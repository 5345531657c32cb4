"""Every option of a run: its flag, default, meaning and validation.

`parse_config(argv)` turns a command line (plus an optional YAML/TOML `--config` file whose values
the command line overrides) into a frozen `Config`. `validate_static(config)` checks everything that
can be checked without processes; `validate_world(config, world_size, ...)` checks what depends on
the launch. Both raise `ConfigError` (a ValueError) with one line naming the bad value and what is
accepted, so a run fails before any process trains.

Booleans are written `True`/`False` as in the original FedBioBERT code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbiobert.constants import ARCHS, HEAD_PLACEMENTS, PARTITION_SCHEMES

logger = logging.getLogger(__name__)

ALGORITHMS = ("fedbiobert", "fedbert", "fedavg", "centralized")
SPLIT_ALGORITHMS = ("fedbiobert", "fedbert")  # the others train the full model on clients, with no server
SERVER_SCHEDULES = ("auto", "parallel", "sequential")
CLIENT_SEEDS = ("distinct", "shared")
SERVER_OUTPUTS = ("auto", "full", "masked")
COMM_DTYPES = ("fp32", "bf16", "fp16")
AGGREGATE_WEIGHTINGS = ("samples", "uniform")
# Flags of the original (image-oriented) code that mean nothing for text: accepted, then ignored.
IGNORED_FLAGS = ("pn_normalize", "complex_arch", "world_conf")


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing its usage block on every rank:
    run.py then says the one line once per node."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see run.py --help)")


def _opt(default: Any, help: str, aliases: tuple[str, ...] = (), choices: tuple = (), group: str = "run"):
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices,
                                            "group": group})


@dataclass(frozen=True)
class Config:
    # --- what is trained -------------------------------------------------------------------
    algorithm: str = _opt("fedbiobert", "fedbiobert (local loss, async server); fedbert (split learning that "
                          "waits for the server's gradient every step); fedavg (full model on every client); "
                          "centralized (one process, all data)", choices=ALGORITHMS, group="model")
    arch: str = _opt("bert", "model family", choices=ARCHS, group="model")
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
    server_output: str = _opt("auto", "head on the client: what the server sends back each step, its last hidden "
                              "states at every position (full: FedBERT as published, four activation-sized "
                              "transfers per step) or at the masked positions only (masked: the same loss and "
                              "gradients in about --mlm_probability of the bytes); auto: full for fedbert, masked "
                              "for fedbiobert", choices=SERVER_OUTPUTS, group="model")
    # --- federation -------------------------------------------------------------------------
    n_clients: int | None = _opt(None, "logical clients (silos) (default: 4; 1 for --algorithm centralized)",
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
    # --- optimisation -------------------------------------------------------------------
    batch_size: int = _opt(16, "sequences per batch", group="optim")
    max_len: int = _opt(128, "tokens per sequence (packed blocks)", group="optim")
    lr: float = _opt(5e-4, "peak learning rate (AdamW)", group="optim")
    end_lr: float = _opt(1e-6, "learning rate at the end of the polynomial decay", group="optim")
    warmup_ratio: float = _opt(0.06, "fraction of steps of linear warm-up", group="optim")
    weight_decay: float = _opt(0.01, "AdamW weight decay", group="optim")
    max_grad_norm: float = _opt(1.0, "clip gradient norm per optimizer step (0: no clipping)", group="optim")
    mlm_probability: float = _opt(0.15, "fraction of tokens masked", group="optim")
    manual_seed: int = _opt(42, "seed of everything", group="optim")
    same_seed_process: bool = _opt(True, "every process seeds its RNG with manual_seed (False: seed + rank)",
                                   group="optim")
    # --- data -----------------------------------------------------------------------------
    data_dir: str = _opt("../shared/data/pretrain", "a .txt/.jsonl file or a folder of them", group="data")
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
    gpu_ids: str | None = _opt(None, "comma-separated GPU id per local process, e.g. 0,1,2", group="device")
    link_bandwidth_mbps: float | None = _opt(None, "emulate a WAN link of this many Mbit/s between each client "
                                             "and its server (off by default)", group="device")
    link_latency_ms: float = _opt(0.0, "one-way latency of the emulated link, in ms", group="device")
    comm_timeout: float = _opt(600.0, "seconds any wait for a peer may take", group="device")
    num_threads: int | None = _opt(None, "torch CPU threads per process (default: cores / local processes)",
                                   group="device")

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.n_clients is None:  # implied by the algorithm, as --num_device is
            object.__setattr__(self, "n_clients", 1 if self.algorithm == "centralized" else 4)

    @property
    def is_split(self) -> bool:
        return self.algorithm in SPLIT_ALGORITHMS

    @property
    def num_servers(self) -> int:
        if self.num_device is not None:
            return self.num_device
        return 1 if self.is_split else 0

    @property
    def link(self) -> dict | None:
        if self.link_bandwidth_mbps is None and not self.link_latency_ms:
            return None
        return {"bandwidth_mbps": self.link_bandwidth_mbps, "latency_ms": self.link_latency_ms}

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
            return self.algorithm == "fedbert"
        return self.server_output == "full"

    @property
    def wire_dtype(self):
        import torch
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.comm_dtype]

    @property
    def fault_injections(self) -> dict[tuple[int, int], str]:
        """(client_id, 0-based round) -> fault kind, from --inject_fault and --inject_nan_update."""
        return {**parse_injections(self.inject_nan_update, "--inject_nan_update", default_kind="nan"),
                **parse_injections(self.inject_fault, "--inject_fault")}

    @property
    def gpu_id_list(self) -> list[int] | None:
        return parse_gpu_ids(self.gpu_ids)

    @property
    def steps_per_round(self) -> int:
        """Optimizer steps one logical client takes in one communication round."""
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


BOOL_FIELDS = {f.name for f in dataclasses.fields(Config) if f.type in ("bool", bool)}


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not a boolean (accepted: True or False)")


def parse_fl_aggregate(text: str) -> dict[str, str]:
    """`scheme=federated_average,weighting=samples` -> dict; FedAvg is the only scheme."""
    options = {"scheme": "federated_average", "weighting": "samples"}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in options:
            raise ConfigError(f"--fl_aggregate '{text}' is not understood (accepted: "
                              "scheme=federated_average[,weighting=samples|uniform])")
        options[key] = value
    if options["scheme"] not in ("federated_average", "fedavg"):
        raise ConfigError(f"--fl_aggregate scheme '{options['scheme']}' is not supported "
                          "(accepted: federated_average)")
    if options["weighting"] not in AGGREGATE_WEIGHTINGS:
        raise ConfigError(f"--fl_aggregate weighting '{options['weighting']}' is not supported "
                          f"(accepted: {', '.join(AGGREGATE_WEIGHTINGS)})")
    return options


FAULT_KINDS = ("nan", "error", "stall")


def parse_injections(text: str | None, flag: str, default_kind: str | None = None) -> dict[tuple[int, int], str]:
    """'CLIENT:ROUND:KIND,...' (or 'CLIENT:ROUND,...' with a default kind) -> {(client, 0-based round): kind}."""
    accepted = ("CLIENT:ROUND pairs with ROUND >= 1, e.g. 1:2,3:2" if default_kind else
                f"CLIENT:ROUND:KIND with ROUND >= 1 and KIND one of {', '.join(FAULT_KINDS)}, e.g. 1:2:error")
    faults = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        fields = item.split(":")
        if default_kind is not None and len(fields) == 2:
            fields.append(default_kind)
        if not (len(fields) == 3 and fields[0].isdigit() and fields[1].isdigit() and int(fields[1]) >= 1
                and fields[2] in FAULT_KINDS):
            raise ConfigError(f"{flag} '{text}' is not understood (accepted: {accepted})")
        faults[(int(fields[0]), int(fields[1]) - 1)] = fields[2]
    return faults


def parse_gpu_ids(text: str | None) -> list[int] | None:
    if text is None or str(text).strip() == "":
        return None
    cleaned = str(text).strip().strip("[]")
    try:
        return [int(part) for part in cleaned.replace(" ", ",").split(",") if part]
    except ValueError:
        raise ConfigError(f"--gpu_ids '{text}' is not a list of integers (accepted: e.g. 0,1,2)") from None


# --------------------------------------------------------------------------------------------
# Command line and config file
# --------------------------------------------------------------------------------------------
def _argument_type(config_field: dataclasses.Field):
    annotation = str(config_field.type)
    if config_field.name in BOOL_FIELDS:
        return parse_bool
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: X)' unless the help text already says what the default is."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run.py", description="FedBioBERT: SplitFed pre-training of biomedical BERT/RoBERTa.",
        formatter_class=_HelpFormatter)
    parser.add_argument("--config", help="YAML or TOML file of options; the command line overrides it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for config_field in dataclasses.fields(Config):
        meta = config_field.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flags = [f"--{config_field.name}"] + [f"--{alias}" for alias in meta["aliases"]]
        group.add_argument(*flags, dest=config_field.name, type=_argument_type(config_field),
                           default=config_field.default, help=meta["help"],
                           choices=meta["choices"] or None)
    ignored = parser.add_argument_group("accepted for compatibility, ignored for text")
    for name in IGNORED_FLAGS:
        ignored.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    return parser


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file of option values, keyed by option name."""
    file_path = Path(path)
    _require(file_path.is_file(), f"--config '{path}' does not exist (accepted: a .yaml, .yml or .toml file)")
    _require(file_path.suffix in (".yaml", ".yml", ".toml"),
             f"--config '{path}' has suffix '{file_path.suffix}' (accepted: .yaml, .yml, .toml)")
    values = _parse_config_text(file_path)
    _require(isinstance(values, dict), f"--config '{path}' must hold a mapping of option names to values")
    return _normalise_file_values(values, path)


def _parse_config_text(path: Path) -> Any:
    import tomllib

    import yaml
    try:
        text = path.read_text(encoding="utf-8")
        return (yaml.safe_load(text) or {}) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (ValueError, yaml.YAMLError) as error:  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"--config '{path}' cannot be parsed ({reason}) (accepted: UTF-8 "
                          f"{'TOML' if path.suffix == '.toml' else 'YAML'} mapping option names to values)") from None


def _normalise_file_values(values: dict[str, Any], path: str) -> dict[str, Any]:
    by_alias = {alias: f.name for f in dataclasses.fields(Config) for alias in f.metadata["aliases"]}
    known = {f.name: f for f in dataclasses.fields(Config)}
    normalised = {}
    for key, value in values.items():
        name = by_alias.get(key.lstrip("-"), key.lstrip("-"))
        if name not in known:
            raise ConfigError(f"--config '{path}' has unknown option '{key}' (see run.py --help)")
        if value is not None and not isinstance(value, bool):
            value = _file_value(known[name], key, value, path)
        normalised[name] = value
    return normalised


def _file_value(config_field: dataclasses.Field, key: str, value: Any, path: str) -> Any:
    try:
        return _argument_type(config_field)(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        kinds = {"int": "an integer", "float": "a number"}
        kind = "True or False" if config_field.name in BOOL_FIELDS else kinds.get(
            str(config_field.type).split(" ")[0], "a string")
        raise ConfigError(f"--config '{path}' sets {key} to {value!r} (accepted: {kind})") from None


def parse_config(argv: list[str] | None = None) -> Config:
    """Command line (+ config file) -> Config. ConfigError (one line) on unknown flags or bad values."""
    parser = build_parser()
    first_pass = parser.parse_args(argv)
    if first_pass.config:
        parser.set_defaults(**load_config_file(first_pass.config))
    namespace = vars(parser.parse_args(argv))
    for name in IGNORED_FLAGS:
        if namespace.pop(name) is not None:
            logger.warning("--%s means nothing for text models; ignored", name)
    namespace.pop("config")
    return Config(**namespace)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_static(config: Config) -> None:
    """Checks that need no processes and no files. Raises ConfigError."""
    _validate_choices(config)
    _validate_counts(config)
    _validate_optimisation(config)
    _validate_model_shape(config)
    parse_fl_aggregate(config.fl_aggregate)
    _validate_fault_injection(config)
    _validate_server_output(config)
    parse_gpu_ids(config.gpu_ids)


def _validate_server_output(config: Config) -> None:
    if config.server_output == "auto":
        return
    _require(config.is_split and config.head_placement == "client",
             f"--server_output {config.server_output} applies to split algorithms (fedbiobert, fedbert) with "
             f"--head_placement client only; this run has --algorithm {config.algorithm} --head_placement "
             f"{config.head_placement} (accepted here: auto)")


def _validate_fault_injection(config: Config) -> None:
    if config.silo_timeout is not None:
        _require(config.silo_timeout > 0, f"--silo_timeout {config.silo_timeout} must be positive (seconds)")
    for (client_id, _), kind in config.fault_injections.items():
        _require(client_id < config.n_clients, f"--inject_fault names client {client_id} but --n_clients is "
                 f"{config.n_clients} (clients are numbered from 0)")
        if kind == "stall":
            _validate_stall(config, client_id)


def _validate_stall(config: Config, client_id: int) -> None:
    _require(config.silo_timeout is not None,
             f"--inject_fault {client_id}:ROUND:stall needs --silo_timeout (a stall is what it cuts off)")
    _require(config.silo_timeout < config.comm_timeout,
             f"--inject_fault {client_id}:ROUND:stall stalls for --silo_timeout {config.silo_timeout:g}s, "
             f"which must be under --comm_timeout {config.comm_timeout:g}s (else the server gives up first)")


def _validate_choices(config: Config) -> None:
    """argparse checks choices on the command line only; a --config file value lands here unchecked."""
    for config_field in dataclasses.fields(Config):
        choices, value = config_field.metadata["choices"], getattr(config, config_field.name)
        _require(not choices or value in choices,
                 f"--{config_field.name} '{value}' is not supported (accepted: {', '.join(choices)})")


def _validate_counts(config: Config) -> None:
    for name in ("n_clients", "n_comm_rounds", "n_local_rounds", "num_batch", "batch_size", "max_inflight",
                 "min_clients"):
        value = getattr(config, name)
        _require(value >= 1, f"--{name} {value} must be at least 1")
    _validate_servers(config)
    _require(config.min_clients <= config.clients_per_round,
             f"--min_clients {config.min_clients} exceeds the {config.clients_per_round} clients sampled per round "
             f"(--n_clients {config.n_clients} x --participation_ratio {config.participation_ratio})")
    if config.link_bandwidth_mbps is not None:
        _require(config.link_bandwidth_mbps > 0, f"--link_bandwidth_mbps {config.link_bandwidth_mbps} must be positive")
    _require(config.link_latency_ms >= 0, f"--link_latency_ms {config.link_latency_ms} must be 0 or more")
    _require(0 < config.participation_ratio <= 1,
             f"--participation_ratio {config.participation_ratio} is outside (0, 1]")
    if round(config.n_clients * config.participation_ratio) == 0:
        logger.warning("--participation_ratio %g of --n_clients %d rounds to 0 clients a round; sampling 1 "
                       "client each round", config.participation_ratio, config.n_clients)
    _require(config.num_workers >= 0, f"--num_workers {config.num_workers} must be 0 or more")
    _require(config.val_blocks >= 0, f"--val_blocks {config.val_blocks} must be 0 or more")
    _require(0 <= config.val_ratio < 0.5, f"--val_ratio {config.val_ratio} is outside [0, 0.5)")
    _require(config.comm_timeout > 0, f"--comm_timeout {config.comm_timeout} must be positive")
    _require(config.dirichlet_alpha > 0, f"--dirichlet_alpha {config.dirichlet_alpha} must be positive")
    if config.stop_after_round is not None:
        _require(1 <= config.stop_after_round <= config.n_comm_rounds,
                 f"--stop_after_round {config.stop_after_round} is outside [1, --n_comm_rounds {config.n_comm_rounds}]")
    if config.keep_exports is not None:
        _require(config.keep_exports >= 1, f"--keep_exports {config.keep_exports} must be at least 1 "
                 "(the last round's export is always kept; leave it out to keep every round's)")
    if config.from_checkpoint_round is not None:
        _require(config.from_checkpoint_round >= 1,
                 f"--from_checkpoint_round {config.from_checkpoint_round} must be a round number >= 1")


def _validate_optimisation(config: Config) -> None:
    _require(config.lr > 0 and math.isfinite(config.lr), f"--lr {config.lr} must be a positive number")
    _require(0 <= config.end_lr <= config.lr, f"--end_lr {config.end_lr} is outside [0, lr={config.lr}]")
    _require(0 <= config.warmup_ratio < 1, f"--warmup_ratio {config.warmup_ratio} is outside [0, 1)")
    _require(0 < config.mlm_probability < 1, f"--mlm_probability {config.mlm_probability} is outside (0, 1)")
    _require(config.max_grad_norm >= 0, f"--max_grad_norm {config.max_grad_norm} must be 0 or more")
    _require(config.weight_decay >= 0, f"--weight_decay {config.weight_decay} must be 0 or more")


def _validate_servers(config: Config) -> None:
    if config.is_split:
        _require(config.num_servers >= 1,
                 f"--num_device {config.num_device} must be at least 1 for --algorithm {config.algorithm}")
    else:
        _require(config.num_servers == 0, f"--num_device {config.num_device} must be 0 for --algorithm "
                 f"{config.algorithm} (it has no server processes)")
    if config.algorithm == "centralized":
        _require(config.n_clients == 1, f"--n_clients {config.n_clients} must be 1 for --algorithm centralized "
                 "(one process trains on all the data)")


def _validate_model_shape(config: Config) -> None:
    minimum_client = {"fedbiobert": 1, "fedbert": 0}.get(config.algorithm, 0)
    _require(config.num_client_encoder >= minimum_client,
             f"--num_client_encoder {config.num_client_encoder} must be at least {minimum_client} for "
             f"--algorithm {config.algorithm}" + (" (the auxiliary loss trains client encoder layers)"
                                                  if config.algorithm == "fedbiobert" else ""))
    minimum_server = 1 if config.is_split else 0
    _require(config.num_server_encoder >= minimum_server,
             f"--num_server_encoder {config.num_server_encoder} must be at least {minimum_server} for "
             f"--algorithm {config.algorithm}")
    _require(config.num_layers >= 1, "the model needs at least one encoder layer "
             "(--num_client_encoder + --num_server_encoder)")
    _require(config.max_len >= 8, f"--max_len {config.max_len} must be at least 8")
    if config.init_from is None:
        for name in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
            _require(getattr(config, name) >= 1, f"--{name} {getattr(config, name)} must be at least 1")
        _require(config.hidden_size % config.num_attention_heads == 0,
                 f"--hidden_size {config.hidden_size} is not divisible by "
                 f"--num_attention_heads {config.num_attention_heads}")
    if config.tokenizer is None:
        from fedbiobert.data.tokenizer import MIN_VOCAB_SIZE
        _require(config.vocab_size >= MIN_VOCAB_SIZE, f"--vocab_size {config.vocab_size} is too small to train "
                 f"a tokenizer on the corpus (accepted: at least {MIN_VOCAB_SIZE}, or give --tokenizer)")


def validate_world(config: Config, world_size: int, local_world_size: int, cuda_available: bool) -> None:
    """Checks that depend on how many processes were launched and what devices exist."""
    servers = config.num_servers
    num_client_processes = world_size - servers
    _require(num_client_processes >= 1,
             f"--num_device {servers} server processes leave no client process in a world of "
             f"{world_size} (launch at least {servers + 1} processes)")
    _require(num_client_processes >= servers,
             f"--num_device {servers} server processes but only {num_client_processes} client "
             f"process(es): every server needs at least one client process (world size {world_size})")
    if config.algorithm == "centralized":
        _require(world_size == 1, f"--algorithm centralized runs on 1 process, not {world_size}")
    schedule = server_schedule_for(config, world_size)
    if config.algorithm == "fedbert" and schedule == "parallel":
        _require(num_client_processes == servers,
                 f"fedbert with --server_schedule parallel needs one server replica per client process: "
                 f"--num_device {servers} but {num_client_processes} client processes (world size {world_size}; "
                 f"launch {2 * servers} processes, or use --server_schedule sequential with --num_device 1)")
    if config.algorithm == "fedbert" and schedule == "sequential":
        _require(servers == 1, f"fedbert with --server_schedule sequential has one shared server: "
                 f"--num_device {servers} must be 1" + (
                     f" (or launch {2 * servers} processes for one server per client process)"
                     if config.server_schedule == "auto" else ""))
    _require(num_client_processes <= config.n_clients,
             f"{num_client_processes} client processes but --n_clients {config.n_clients}: a process "
             "would have no silo (launch fewer processes or raise --n_clients)")
    if config.on_cuda:
        _require(cuda_available, "--on_cuda True but CUDA is not available on this machine "
                 "(use --on_cuda False for CPU and gloo)")
    gpu_ids = config.gpu_id_list
    if gpu_ids is not None:
        _require(len(gpu_ids) == local_world_size,
                 f"--gpu_ids '{config.gpu_ids}' has {len(gpu_ids)} id(s) but {local_world_size} processes "
                 "run on this node (give one id per local process)")


def server_schedule_for(config: Config, world_size: int) -> str:
    """--server_schedule with auto resolved for this world: parallel when every client process has a server
    of its own, else sequential (client processes take turns with one server)."""
    if config.server_schedule != "auto":
        return config.server_schedule
    return "parallel" if world_size - config.num_servers == config.num_servers else "sequential"


def resolve_for_world(config: Config, world_size: int) -> Config:
    """The config a run of `world_size` processes uses: fedbert's --server_schedule auto made concrete."""
    if config.algorithm != "fedbert":
        return config
    return dataclasses.replace(config, server_schedule=server_schedule_for(config, world_size))


def validate_paths(config: Config) -> None:
    """Checks of the files the run reads and writes (data, tokenizer, checkpoints, output and cache dirs),
    including the content of every corpus file, so a bad file fails here and not while tokenizing."""
    from fedbiobert.data import check_corpus_files, check_tokenizer, list_corpus_files
    try:
        check_corpus_files(list_corpus_files(config.data_dir), config.label_suffix)
    except ValueError as error:
        raise ConfigError(f"--data_dir: {error}") from None
    _validate_writable_dir("--output_dir", config.output_dir)
    if config.cache_dir is not None:
        _validate_writable_dir("--cache_dir", config.cache_dir)
    if config.tokenizer is not None:
        try:
            check_tokenizer(config.tokenizer)
        except ValueError as error:
            raise ConfigError(f"--tokenizer: {error}") from None
    if config.init_from is not None:
        _validate_init_from(config)
    _validate_resume_paths(config)


def _validate_writable_dir(flag: str, value: str) -> None:
    """A folder the run may create or write into: not a file, under a writable folder."""
    path = Path(value)
    _require(not path.exists() or path.is_dir(), f"{flag} '{value}' exists and is not a directory")
    existing = next(folder for folder in (path.absolute(), *path.absolute().parents) if folder.exists())
    _require(existing.is_dir(), f"{flag} '{value}' cannot be created: '{existing}' is a file, not a directory")
    _require(os.access(existing, os.W_OK | os.X_OK), f"{flag} '{value}' cannot be written: '{existing}' "
             "is not writable (accepted: a folder you can write to)")


def _validate_resume_paths(config: Config) -> None:
    from fedbiobert.checkpoint import has_checkpoint, resume_state_path
    if config.from_checkpoint or config.from_checkpoint_round is not None:
        path = resume_state_path(config.output_dir, config.from_checkpoint_round)
        _require(path.is_file(), f"cannot resume: '{path}' does not exist (train first, or drop "
                 "--from_checkpoint / --from_checkpoint_round)")
    else:
        _require(not has_checkpoint(config.output_dir),
                 f"--output_dir '{config.output_dir}' already holds a trained run; resume it with "
                 "--from_checkpoint True or choose another --output_dir")


def _validate_init_from(config: Config) -> None:
    config_file = Path(config.init_from) / "config.json"
    _require(config_file.is_file(),
             f"--init_from '{config.init_from}' has no config.json (accepted: an HF model folder)")
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"--init_from '{config_file}' is not readable JSON ({error})") from None
    layers = hf_config.get("num_hidden_layers")
    _require(layers == config.num_layers,
             f"--num_client_encoder {config.num_client_encoder} + --num_server_encoder "
             f"{config.num_server_encoder} = {config.num_layers} layers, but --init_from "
             f"'{config.init_from}' has {layers}")
    model_type = hf_config.get("model_type")
    _require(model_type == config.arch,
             f"--arch {config.arch} but --init_from '{config.init_from}' is a '{model_type}' model")
