"""Checks of a `Config` that need no files: `validate_static` (the options alone) and
`validate_world` (against the launched world and its devices), plus fedbert's schedule resolved for
a world. Each raises `ConfigError` with one line naming the bad value and what is accepted.

What depends on the algorithm is asked of its class in the registry (`config.rules`, see
fedbiobert/algorithms/base.py): its rules and its own `check_config` / `check_world`."""
from __future__ import annotations

import dataclasses
import logging
import math

from fedbiobert.config.lora import check_lora_values
from fedbiobert.config.options import (Config, ConfigError, _require, parse_fl_aggregate, parse_gpu_ids,
                                       registered_algorithms)

logger = logging.getLogger(__name__)


def validate_static(config: Config) -> None:
    """Checks that need no processes and no files. Raises ConfigError."""
    _validate_choices(config)
    _validate_head_placement(config)
    _validate_counts(config)
    _validate_optimisation(config)
    _validate_model_shape(config)
    parse_fl_aggregate(config.fl_aggregate)
    _validate_fault_injection(config)
    _validate_server_output(config)
    parse_gpu_ids(config.gpu_ids)
    _validate_backend(config)
    _validate_activation_defence(config)
    _validate_lora(config)
    if config.tot_files is not None:
        _require(config.tot_files >= 1, f"--tot_files {config.tot_files} must be at least 1")


def _validate_backend(config: Config) -> None:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors point to point (a CUDA tensor's send would
    read device memory as host memory), so each backend goes with one --on_cuda."""
    if config.backend == "nccl":
        _require(config.on_cuda, "--backend nccl needs --on_cuda True (NCCL moves GPU tensors; accepted on CPUs: "
                 "auto or gloo)")
    if config.backend == "gloo":
        _require(not config.on_cuda, "--backend gloo carries CPU tensors only, and --on_cuda True keeps them on "
                 "GPUs (accepted with --on_cuda True: auto or nccl)")


def _validate_lora(config: Config) -> None:
    """--lora_rank's values (its targets against the model's widths: warm_start.py, which reads them)."""
    if config.lora_rank == 0:
        return
    _require(config.lora_rank > 0, f"--lora_rank {config.lora_rank} (accepted: 0 (off) or an integer >= 1)")
    _require(config.init_from is not None, f"--lora_rank {config.lora_rank} needs --init_from: LoRA adapts a "
             "pre-trained model (accepted: --init_from DIR, e.g. models/minilm-l6, or --lora_rank 0)")
    try:
        check_lora_values(config.lora)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _validate_activation_defence(config: Config) -> None:
    """--activation_noise / --activation_clip (fedbiobert/privacy/defence.py) act on a split client's sends."""
    for name in ("activation_noise", "activation_clip"):
        value = getattr(config, name)
        _require(0 <= value < math.inf, f"--{name} {value} must be 0 (off) or a positive number")
        _require(value == 0 or config.is_split, f"--{name} {value} applies to split algorithms "
                 f"({_algorithms_where('is_split')}) only; this run has --algorithm {config.algorithm} (accepted: 0)")


def _algorithms_where(rule: str) -> str:
    """The registered algorithms whose class has `rule` set, for an error message."""
    return ", ".join(name for name, rules in registered_algorithms().items() if getattr(rules, rule))


def _validate_head_placement(config: Config) -> None:
    placements = config.rules.head_placements
    _require(config.head_placement in placements, f"--head_placement {config.head_placement} is not supported by "
             f"--algorithm {config.algorithm} (accepted: {', '.join(placements)})")
    _require(config.tie_decoders is not True or config.final_head_with_embeddings,
             "--tie_decoders True needs the final MLM head beside the word embeddings, but --head_placement server "
             "puts it on the server (accepted here: False, or --head_placement client)")


def _validate_server_output(config: Config) -> None:
    if config.server_output == "auto":
        return
    _require(config.is_split and config.head_placement == "client",
             f"--server_output {config.server_output} applies to split algorithms ({_algorithms_where('is_split')}) "
             f"with --head_placement client only; this run has --algorithm {config.algorithm} --head_placement "
             f"{config.head_placement} (accepted here: auto)")


def _validate_fault_injection(config: Config) -> None:
    if config.silo_timeout is not None:
        _require(config.silo_timeout > 0, f"--silo_timeout {config.silo_timeout} must be positive (seconds)")
    for (silo_id, _), kind in config.fault_injections.items():
        _require(silo_id < config.n_clients, f"--inject_fault names client {silo_id} but --n_clients is "
                 f"{config.n_clients} (clients are numbered from 0)")
        if kind == "stall":
            _validate_stall(config, silo_id)


def _validate_stall(config: Config, silo_id: int) -> None:
    _require(config.silo_timeout is not None,
             f"--inject_fault {silo_id}:ROUND:stall needs --silo_timeout (a stall is what it cuts off)")
    _require(config.silo_timeout < config.comm_timeout,
             f"--inject_fault {silo_id}:ROUND:stall stalls for --silo_timeout {config.silo_timeout:g}s, "
             f"which must be under --comm_timeout {config.comm_timeout:g}s (else the server gives up first)")


def _validate_choices(config: Config) -> None:
    """argparse checks choices on the command line only; a --config file value lands here unchecked."""
    config.rules  # imports --algorithm_module (its algorithm is then a choice), or says --algorithm is unknown
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
    config.rules.check_config(config)  # the algorithm's own (e.g. centralized: --n_clients 1)
    _require(config.min_clients <= config.clients_per_round,
             f"--min_clients {config.min_clients} exceeds the {config.clients_per_round} clients sampled per round "
             f"(--n_clients {config.n_clients} x --participation_ratio {config.participation_ratio})")
    if config.wan_bandwidth_mbps is not None:
        _require(config.wan_bandwidth_mbps > 0, f"--wan_bandwidth_mbps {config.wan_bandwidth_mbps} must be positive")
    _require(config.wan_latency_ms >= 0, f"--wan_latency_ms {config.wan_latency_ms} must be 0 or more")
    _require(0 < config.participation_ratio <= 1,
             f"--participation_ratio {config.participation_ratio} is outside (0, 1]")
    if round(config.n_clients * config.participation_ratio) == 0:
        logger.warning("--participation_ratio %g of --n_clients %d rounds to 0 clients a round; sampling 1 "
                       "client each round", config.participation_ratio, config.n_clients)
    _require(config.num_workers >= 0, f"--num_workers {config.num_workers} must be 0 or more")
    _require(0 <= config.mmap_threshold_mb <= 32,
             f"--mmap_threshold_mb {config.mmap_threshold_mb} is outside [0, 32] (glibc's largest threshold is 32 MB)")
    _require(0 <= config.malloc_trim_seconds < math.inf,
             f"--malloc_trim_seconds {config.malloc_trim_seconds} must be 0 (never) or a positive number of seconds")
    _require(config.val_blocks >= 0, f"--val_blocks {config.val_blocks} must be 0 or more")
    _require(0 <= config.val_ratio < 0.5, f"--val_ratio {config.val_ratio} is outside [0, 0.5)")
    _require(config.comm_timeout > 0, f"--comm_timeout {config.comm_timeout} must be positive")
    _require(config.round_timeout > 0, f"--round_timeout {config.round_timeout} must be positive")
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
    _require(config.head_warmup_steps >= 0, f"--head_warmup_steps {config.head_warmup_steps} must be 0 or more")
    _require(0 < config.body_lr_ratio <= 10, f"--body_lr_ratio {config.body_lr_ratio} is outside (0, 10]")
    _require(config.precision != "fp16" or config.on_cuda,
             "--precision fp16 needs CUDA (--on_cuda True); on CPU use bf16 or fp32")
    _validate_server_optimizer(config)


def _validate_server_optimizer(config: Config) -> None:
    _require(0 < config.server_lr <= 100 and math.isfinite(config.server_lr),
             f"--server_lr {config.server_lr} is outside (0, 100]")
    for option in ("server_momentum", "server_beta1", "server_beta2"):
        value = getattr(config, option)
        _require(0 <= value < 1, f"--{option} {value} is outside [0, 1)")
    _require(config.server_tau > 0, f"--server_tau {config.server_tau} must be positive")
    _require(config.server_optimizer == "fedavg" or config.rules.exchanges_model,
             f"--server_optimizer {config.server_optimizer} steps on averaged parts, and --algorithm "
             f"{config.algorithm} averages none (accepted: fedavg)")


def _validate_servers(config: Config) -> None:
    if config.server_recompute:
        _require(config.rules.supports_server_recompute and config.head_placement == "client",
                 f"--server_recompute True applies to --algorithm {_algorithms_where('supports_server_recompute')} "
                 f"with --head_placement client (the only server that keeps graphs across steps), not --algorithm "
                 f"{config.algorithm} with --head_placement {config.head_placement}")
    if config.is_split:
        _require(config.num_servers >= 1,
                 f"--num_device {config.num_device} must be at least 1 for --algorithm {config.algorithm}")
    else:
        _require(config.num_servers == 0, f"--num_device {config.num_device} must be 0 for --algorithm "
                 f"{config.algorithm} (it has no server processes)")


def _validate_model_shape(config: Config) -> None:
    rules = config.rules
    minimum_client, minimum_server = rules.min_client_layers, rules.min_server_layers
    _require(config.num_client_encoder >= minimum_client,
             f"--num_client_encoder {config.num_client_encoder} must be at least {minimum_client} for "
             f"--algorithm {config.algorithm}" + (f" ({rules.min_client_layers_why})"
                                                  if rules.min_client_layers_why else ""))
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


def validate_world(config: Config, world_size: int, local_world_size: int, cuda_available: bool,
                   cuda_device_count: int = 0, gpus_bound_per_task: bool = False) -> None:
    """Checks that depend on how many processes were launched and what devices exist
    (`cuda_device_count`: GPUs this process sees; `gpus_bound_per_task`: srun gave each rank GPUs of its
    own, see launch_env.gpus_bound_per_task; both read only with --on_cuda True)."""
    servers = config.num_servers
    num_client_processes = world_size - servers
    _require(num_client_processes >= 1,
             f"--num_device {servers} server processes leave no client process in a world of "
             f"{world_size} (launch at least {servers + 1} processes)")
    _require(num_client_processes >= servers,
             f"--num_device {servers} server processes but only {num_client_processes} client "
             f"process(es): every server needs at least one client process (world size {world_size})")
    config.rules.check_world(config, world_size)  # the algorithm's own (e.g. fedbert's server schedule)
    _require(num_client_processes <= config.n_clients,
             f"{num_client_processes} client processes but --n_clients {config.n_clients}: a process "
             "would have no silo (launch fewer processes or raise --n_clients)")
    if config.on_cuda:
        _require(cuda_available, "--on_cuda True but CUDA is not available on this machine "
                 "(use --on_cuda False for CPU and gloo)")
        _validate_gpu_count(config, local_world_size, cuda_device_count, gpus_bound_per_task)
    gpu_ids = config.gpu_id_list
    if gpu_ids is not None:
        _require(len(gpu_ids) in (local_world_size, world_size),
                 f"--gpu_ids '{config.gpu_ids}' has {len(gpu_ids)} id(s) but {local_world_size} processes "
                 f"run on this node and {world_size} in the world (give one id per local process, or one per rank)")


def _validate_gpu_count(config: Config, local_world_size: int, cuda_device_count: int,
                        gpus_bound_per_task: bool = False) -> None:
    """Without --gpu_ids, local rank i takes visible GPU i % count (session.device_index). When the node's
    processes share the GPUs they see, that is a GPU each only if there are as many as processes. When
    srun bound GPUs per task, each process sees only its own (CUDA_VISIBLE_DEVICES differs per task), so
    it needs one, whatever the count on the node."""
    if config.gpu_ids is not None:
        return
    if gpus_bound_per_task:
        _require(cuda_device_count >= 1, "--on_cuda True but this process sees no GPU, though srun bound GPUs "
                 "per task (--gpus-per-task / --gpu-bind): ask for at least one GPU per task")
        return
    example = ",".join(str(index % max(1, cuda_device_count)) for index in range(local_world_size))
    _require(cuda_device_count >= local_world_size,
             f"--on_cuda True runs {local_world_size} processes on this node but it has {cuda_device_count} GPU(s): "
             f"pass --gpu_ids to map ranks explicitly (e.g. --gpu_ids {example}; NCCL refuses two ranks of "
             "one process group on one GPU), or under srun with one task per rank give each its own GPU "
             "(--gpus-per-task=1)")


def server_schedule_for(config: Config, world_size: int) -> str:
    """--server_schedule with auto resolved for this world: parallel when every client process has a server
    of its own, else sequential (client processes take turns with one server)."""
    if config.server_schedule != "auto":
        return config.server_schedule
    return "parallel" if world_size - config.num_servers == config.num_servers else "sequential"


def resolve_for_world(config: Config, world_size: int) -> Config:
    """The config a run of `world_size` processes uses: the algorithm's `auto` options made concrete
    (fedbert's --server_schedule)."""
    return config.rules.resolve_for_world(config, world_size)
