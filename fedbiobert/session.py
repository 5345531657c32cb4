"""What one process builds before it takes its role: devices, data, tokenizer, model, resume state.

A `Session` is built once per process by `build_session` and handed to the role. Data preparation
(tokenizer training, token cache) is done by local rank 0 of each node while the other local ranks
wait at a barrier, then every rank opens the same cached files (memory-mapped) and keeps in memory
only the blocks it will read: a client process those of the silos it hosts, a server none, rank 0
also the validation sample it evaluates on (see `rows_this_process`).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from fedbiobert.comm.channel import Channel, server_channel
from fedbiobert.comm.collectives import Collectives
from fedbiobert.comm.groups import ProcessGroups
from fedbiobert.comm.launch_env import LaunchInfo, slurm_cpus_per_task, threads_per_process
from fedbiobert.comm.wan import WanModel
from fedbiobert.config import Config, corpus_files_for
from fedbiobert.data import (MaskingSpec, TokenizedCorpus, build_tokenizer, load_or_build_token_cache, partition,
                             split_validation, validation_sample)
from fedbiobert.model import (ModelSpec, build_config, build_full_model, decoder_is_embeddings_copy, load_full_model,
                              output_embedding_key, tie_decoder, untied_config)
from fedbiobert.optim import Schedule
from fedbiobert.precision import configure_matmuls
from fedbiobert.topology import Role, Topology

logger = logging.getLogger(__name__)


@dataclass
class Session:
    config: Config
    launch: LaunchInfo
    topology: Topology
    groups: ProcessGroups
    collectives: Collectives
    device: torch.device
    tokenizer: object
    corpus: TokenizedCorpus
    silo_indices: list[torch.Tensor]      # training block indices of each silo
    val_indices: torch.Tensor
    val_sample: torch.Tensor                # the validation blocks rank 0 evaluates on (--val_blocks of them)
    masking: MaskingSpec
    hf_config: object
    schedule: Schedule
    output_dir: Path
    start_time: float
    resume: dict | None = None

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def role(self) -> Role:
        return self.topology.role(self.launch.rank)

    @property
    def start_round(self) -> int:
        return 0 if self.resume is None else int(self.resume["round"])

    def silo_weight(self, silo_id: int) -> float:
        """FedAvg weight of a client: its sample count, or 1 with weighting=uniform."""
        if self.config.aggregate_weighting == "uniform":
            return 1.0
        return float(len(self.silo_indices[silo_id]))

    def server_channel(self, server_rank: int) -> Channel:
        """This process's channel in `server_rank`'s group, over the emulated WAN when one is set."""
        config = self.config
        wan = WanModel(config.wan_bandwidth_mbps, config.wan_latency_ms) if config.wan else None
        return server_channel(self.groups, self.rank, server_rank, self.topology.client_ranks_of(server_rank),
                              self.device, config.comm_timeout, self.topology.describe, wan)

    def build_full_model(self):
        """Identical initial weights on every process (same seed), or the --init_from checkpoint; its
        final decoder tied to the word embeddings where --tie_decoders says so (see decoders_tied)."""
        if self.config.init_from:
            model = load_full_model(self.config.init_from, seed=self.config.manual_seed)
        else:
            model = build_full_model(self.hf_config, seed=self.config.manual_seed)
        if decoders_tied(self.config, model, self.resume):
            tie_decoder(model)
        if self.config.lora is not None:
            add_pretraining_adapters(model, self.config)
        return model


def add_pretraining_adapters(model, config: Config) -> None:
    """--lora_rank: adapters on the frozen encoder (fedbiobert/lora.py); the MLM heads train in full (the
    auxiliary head, a copy of the final head's transform made at the split, inherits that), the embeddings
    (and the decoders tied to them) only with --lora_train_embeddings. Every process draws the same
    adapters (one seed), as it loads the same base."""
    from fedbiobert.lora import add_lora
    from fedbiobert.optim import is_head_parameter
    from fedbiobert.seeding import derive_seed

    def trainable(name: str) -> bool:
        return is_head_parameter(name) or (config.lora_train_embeddings and ".embeddings." in f".{name}")
    names = add_lora(model, config.lora, derive_seed(config.manual_seed, "lora init"), trainable)
    logger.info("LoRA rank %d on %s: %d trainable tensors, %d parameters of %d", config.lora.rank,
                ",".join(config.lora.targets), len(names),
                sum(param.numel() for param in model.parameters() if param.requires_grad),
                sum(param.numel() for param in model.parameters()))


def decoders_tied(config: Config, model, resume: dict | None = None) -> bool:
    """--tie_decoders resolved for this model (the same on every process: same weights). By default a
    decoder is tied where the final head runs beside the embeddings and the decoder holds nothing of
    its own yet (a fresh init, or a warm start without an MLM head: it starts as the embeddings);
    a trained decoder that differs is kept untied rather than thrown away. A resume continues as its
    checkpoint was trained: tied iff its client part has no decoder of its own."""
    if config.tie_decoders is False or not config.final_head_with_embeddings:
        return False
    if resume is not None:
        return output_embedding_key(model) not in resume["client_state"]
    own_decoder = not decoder_is_embeddings_copy(model)
    if config.tie_decoders is None and own_decoder:
        logger.info("the final decoder of --init_from differs from its word embeddings: kept untied (pass "
                    "--tie_decoders True to tie it to the embeddings)")
        return False
    if own_decoder:
        logger.warning("--tie_decoders True: the final decoder of --init_from is replaced by its word embeddings")
    return True


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDBIOBERT_CACHE", Path.home() / ".cache" / "fedbiobert"))


def select_device(config: Config, launch: LaunchInfo) -> torch.device:
    if not config.on_cuda:
        return torch.device("cpu")
    index = device_index(config, launch, torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def device_index(config: Config, launch: LaunchInfo, visible_gpus: int) -> int:
    """The visible GPU this process takes: its --gpu_ids entry, else its local rank modulo the GPUs it
    sees: one each when the node's processes share them (validate_world checks there are enough), index 0
    of its own when srun binds a GPU per task (each task sees only its own)."""
    return gpu_index(config, launch) if config.gpu_ids else launch.local_rank % visible_gpus


def gpu_index(config: Config, launch: LaunchInfo) -> int:
    """--gpu_ids maps each local process (one id per process of this node) or each rank of the world
    (one id per rank, as the original's --gpu_ids 0,0,1,2,3 on one machine); LOCAL_RANK otherwise."""
    gpu_ids = config.gpu_id_list
    return gpu_ids[launch.rank] if len(gpu_ids) == launch.world_size else gpu_ids[launch.local_rank]


def set_cpu_threads(config: Config, launch: LaunchInfo) -> None:
    """Split the CPUs this process may run on (its affinity, as taskset or a launcher's binding left it)
    between the processes of its node that share them; torch would give each all of the machine's."""
    threads = config.num_threads or threads_per_process(launch.local_world_size, slurm_cpus_per_task(launch))
    torch.set_num_threads(threads)


def prepare_data(config: Config, launch: LaunchInfo, collectives: Collectives):
    """Tokenizer + token cache, built by local rank 0 of each node, then loaded by every rank."""
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    files = corpus_files_for(config)

    def load():
        tokenizer = build_tokenizer(config.arch, config.tokenizer, files, cache_dir, config.vocab_size)
        corpus = load_or_build_token_cache(files, tokenizer, config.max_len, cache_dir, config.label_suffix,
                                           config.val_ratio)
        return tokenizer, corpus

    if launch.local_rank == 0:
        result = load()
    collectives.long_barrier()  # the other local ranks wait for the cache instead of building it too
    if launch.local_rank != 0:
        result = load()
    return result


def build_session(config: Config, launch: LaunchInfo, topology: Topology, groups: ProcessGroups,
                  start_time: float | None = None) -> Session:
    device = select_device(config, launch)
    configure_matmuls(config)  # TF32 matmuls on CUDA
    set_cpu_threads(config, launch)
    collectives = Collectives(groups, device)
    tokenizer, corpus = prepare_data(config, launch, collectives)
    train_indices, val_indices = split_validation(corpus)
    parts = partition(corpus, train_indices, config.n_clients, config.partition_data, config.manual_seed,
                      config.dirichlet_alpha)
    val_sample = validation_sample(corpus, val_indices, config.val_blocks, config.manual_seed)
    corpus.blocks.keep_only(rows_this_process(topology, launch.rank, parts, val_sample))
    hf_config = _model_config(config, tokenizer)
    session = Session(
        config=config, launch=launch, topology=topology, groups=groups, collectives=collectives,
        device=device, tokenizer=tokenizer, corpus=corpus, silo_indices=parts,
        val_indices=val_indices, val_sample=val_sample,
        masking=MaskingSpec.from_tokenizer(tokenizer, config.mlm_probability), hf_config=hf_config,
        schedule=Schedule(config.total_steps, config.warmup_ratio, config.lr, config.end_lr,
                          config.head_warmup_steps, config.body_lr_ratio),
        output_dir=Path(config.output_dir), start_time=start_time or time.time())
    _log_partition(session)
    return session


def rows_this_process(topology: Topology, rank: int, silo_indices: list[torch.Tensor],
                      val_sample: torch.Tensor) -> torch.Tensor:
    """The blocks this process reads: a client process those of the silos it hosts (the only ones
    it trains), a server none; rank 0 (a server, or a client without servers) also the validation
    sample, which its RoundWriter masks once at start-up."""
    hosted = topology.silos_at(rank) if topology.role(rank) is Role.CLIENT else []
    rows = [silo_indices[silo_id] for silo_id in hosted] + ([val_sample] if rank == 0 else [])
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)


def _model_config(config: Config, tokenizer):
    if config.init_from:  # its tokenizer and shape were checked before any process started (warm_start.py)
        return untied_config(AutoConfig.from_pretrained(config.init_from, local_files_only=True))
    spec = ModelSpec(arch=config.arch, vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                     num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
                     num_layers=config.num_layers, max_len=config.max_len, pad_token_id=tokenizer.pad_token_id)
    return build_config(spec)


def _log_partition(session: Session) -> None:
    blocks = session.corpus.blocks
    logger.info("%s holds %d of %d blocks of the corpus in memory (%.1f MiB)", session.topology.describe(session.rank),
                len(blocks.held_rows), len(blocks), blocks.held_bytes / 2**20)
    if session.rank != 0:
        return
    sizes = [len(part) for part in session.silo_indices]
    logger.info("corpus: %d blocks of %d tokens from %d files; %d held out for validation",
                len(session.corpus), session.config.max_len, len(session.corpus.files), len(session.val_indices))
    logger.info("partition %s into %d clients: blocks per client %s", session.config.partition_data,
                session.config.n_clients, sizes)
