"""The client part's activations at each cut: hidden states after N encoder layers of an HF encoder
(N = 0: the embeddings' output), as a split client would send them before any defence.

The model is the user's (an HF folder, by default the warm-start models/minilm-l6) or, as the audit's
control, a random initialisation of the same config. The word-embedding matrix comes with it: the
curious server knows the client part's weights (FedAvg hands every party the averaged client part, and a
warm start is public), and the decoders read it to score every token of the vocabulary.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.privacy.texts import Sequences

logger = logging.getLogger(__name__)


def encoder_layers(model_dir: str | Path) -> int:
    """The encoder layers of the HF folder `model_dir`; ValueError (one line) if it is not an encoder."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"MODEL '{model_dir}' is not a folder with a config.json (accepted: an HF encoder "
                         "folder such as models/minilm-l6, which bash scripts/get_base_model.sh installs, or a "
                         "run's OUT/round{k})")
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"MODEL '{model_dir}': config.json cannot be read ({str(error).splitlines()[0][:120]})"
                         " (accepted: an HF encoder folder)") from None
    if not hasattr(config, "num_hidden_layers") or getattr(config, "is_decoder", False):
        raise ValueError(f"MODEL '{model_dir}' is a {config.model_type!r} model, not an encoder (accepted: BERT, "
                         "RoBERTa)")
    return int(config.num_hidden_layers)


def load_encoder(model_dir: str | Path):
    """(encoder in eval mode, tokenizer) of an HF folder; ValueError (one line) if it is not one."""
    encoder_layers(model_dir)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # an MLM export's unused head weights are expected
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), load_tokenizer(model_dir)


def random_like(model, seed: int):
    """An untrained model of `model`'s config, drawn from `seed` (the audit's control)."""
    torch.manual_seed(seed)
    return type(model)(model.config, add_pooling_layer=False).eval()


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def word_embeddings(model) -> torch.Tensor:
    """(V, H) the input word-embedding matrix, detached."""
    return model.get_input_embeddings().weight.detach().float().clone()


@torch.no_grad()
def hidden_at_cuts(model, sequences: Sequences, cuts: list[int], batch_size: int = 64) -> dict[int, torch.Tensor]:
    """cut -> (N, T, H) float32 hidden states (on the CPU) of every sequence after `cut` layers (0: embeddings)."""
    out = {cut: [] for cut in cuts}
    total, device = len(sequences), next(model.parameters()).device
    for start in range(0, total, batch_size):
        ids = sequences.input_ids[start:start + batch_size].to(device)
        mask = sequences.attention_mask[start:start + batch_size].to(device)
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for cut in cuts:
            out[cut].append(hidden[cut].float().cpu())
    return {cut: torch.cat(parts) for cut, parts in out.items()}
