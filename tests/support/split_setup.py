"""A small real split set-up shared by multi-process algorithm tests: a tiny BERT, real sliced
text tokenized with the shared SciBERT vocabulary, masked batches, and a 2-process channel."""
from __future__ import annotations

import types

import torch

from fedbiobert.algorithms import REGISTRY
from fedbiobert.comm.channel import Channel
from fedbiobert.config import Config
from fedbiobert.data import MaskingSpec, build_tokenizer, silo_batches, list_corpus_files, load_or_build_token_cache
from fedbiobert.comm.messages import Control, Kind, Message
from fedbiobert.model import ModelSpec, build_config, build_full_model
from fedbiobert.optim import Schedule
from fedbiobert.session import add_pretraining_adapters
from tests.conftest import SCIVOCAB
from tests.support.distributed import world_channel

HIDDEN = 32


def build_split(corpus_dir, cache_dir, steps: int, **options):
    """(algorithm, client part, server part, batches, full model config) from identical seeds."""
    options = {"num_client_encoder": 1, "num_server_encoder": 1, "max_inflight": 2, "max_len": 32,
               "batch_size": 3, "num_batch": steps, **options}
    config = Config(**options)
    files = list_corpus_files(corpus_dir)
    tokenizer = build_tokenizer("bert", str(SCIVOCAB), files, cache_dir)
    corpus = load_or_build_token_cache(files, tokenizer, config.max_len, cache_dir)
    spec = ModelSpec("bert", len(tokenizer), HIDDEN, 2, 64, config.num_layers, config.max_len, tokenizer.pad_token_id)
    hf_config = build_config(spec)
    session = types.SimpleNamespace(config=config, schedule=Schedule(steps, 0.0, 1e-3, 0.0))
    algorithm = REGISTRY[config.algorithm](session)
    full_model = build_full_model(hf_config, seed=0)
    if config.lora is not None:  # as a --lora_rank run builds it (the base here is random: the checks need none)
        add_pretraining_adapters(full_model, config)
    client, server = algorithm.split(full_model)
    batches = list(silo_batches(corpus, torch.arange(len(corpus)), config.batch_size, steps,
                                MaskingSpec.from_tokenizer(tokenizer), seed=1))
    return algorithm, client, server, batches, hf_config


def two_process_channel() -> Channel:
    """Rank 0 serves rank 1 over the groups a run builds (a header group, a data group per direction)."""
    channel, _, _ = world_channel(30)
    return channel


def train_silo(algorithm, client, channel, batches, silo_id: int = 0):
    """Train one silo on `batches` against server rank 0 (round 0); returns its trainer."""
    trainer = algorithm.client_trainer(client, channel, 0, silo_id=silo_id, round_idx=0)
    for step, batch in enumerate(batches):
        trainer.step(batch, step)
    trainer.finish()
    return trainer


def serve_and_record(algorithm, server, channel) -> list[Message]:
    """Rank 0: serve client rank 1 until its ROUND_DONE (end_round), returning every other message it
    received, in order: what went over the wire."""
    trainer = algorithm.server_trainer(server, channel, 0)
    received = []
    while True:
        message = channel.recv(None)
        if message.kind is Kind.CONTROL:
            break
        received.append(message)
        trainer.handle(message)
    trainer.finish()
    channel.flush()
    return received


def end_round(channel) -> None:
    """Paired with the test server's loop: nothing more from this client process this round."""
    channel.send(Message(Kind.CONTROL, control=Control.ROUND_DONE), 0)
    channel.flush()
