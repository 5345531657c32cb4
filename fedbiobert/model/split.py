"""Cutting a *ForMaskedLM into a SplitFed client part and server part, and joining them back.

This file owns the cut itself (`split_model`, `ClientModel`, `ServerModel`), the auxiliary
MLM head that gives the client its local loss, the attention mask the encoder layers need,
and the way back to one standard Hugging Face model (`join_state_dicts`,
`build_joined_model`). Both parts keep the original HF parameter names (modules are
registered under the same attribute paths, encoder layers in a ModuleDict keyed by their
original index), so their state dicts merge into a stock model with no remapping.
"""

import copy
import logging

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask

from fedbiobert.model.build import arch_of, build_full_model, num_layers_of, output_embedding_key, tie_decoder

from fedbiobert.constants import HEAD_PLACEMENTS

logger = logging.getLogger(__name__)

AUX_HEAD_PREFIX = "aux_head."
ENCODER_LAYER_MARKER = ".encoder.layer."
# Attribute under which each architecture's *ForMaskedLM keeps its final MLM head.
_FINAL_HEAD_NAMES = {"bert": "cls", "roberta": "lm_head"}


def _layer_attention_mask(config: PretrainedConfig, hidden: torch.Tensor, attention_mask):
    # The very builder BertModel/RobertaModel call, so the mask format (bool for sdpa,
    # additive for eager, None when nothing is padded) is whatever the installed
    # transformers' attention implementation expects.
    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)


def _check_layer_index(name: str, value: int, num_layers: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= num_layers:
        raise ValueError(f"{name} {value!r} is invalid; accepted: an integer in 0..{num_layers}")


class _EncoderSlice(nn.Module):
    """Stands in for `<base>.encoder`: holds a subset of layers under their original indices."""

    def __init__(self, encoder_layers: nn.ModuleList, indices: range):
        super().__init__()
        self.layer = nn.ModuleDict({str(index): encoder_layers[index] for index in indices})


class _BaseSlice(nn.Module):
    """Stands in for `<base>` (`bert` / `roberta`): optional embeddings + an encoder slice."""

    def __init__(self, base_model: nn.Module, indices: range, with_embeddings: bool):
        super().__init__()
        if with_embeddings:
            self.embeddings = base_model.embeddings
        self.encoder = _EncoderSlice(base_model.encoder.layer, indices)


class AuxMLMHead(nn.Module):
    """The client's local MLM head: the arch's transform + a decoder tied to the word embeddings.

    The transform starts as a copy of the final head's (deepcopy, so building a split
    consumes no RNG draws and every client starts identical); the decoder weight IS the
    word-embedding Parameter, the decoder bias is the aux head's own.
    """

    def __init__(self, arch: str, final_head: nn.Module, word_embeddings: nn.Embedding):
        super().__init__()
        dense, activation, layer_norm = _head_transform(arch, final_head)
        self.dense = copy.deepcopy(dense)
        self.act = copy.deepcopy(activation)
        self.layer_norm = copy.deepcopy(layer_norm)
        tied_weight = word_embeddings.weight
        vocab_size, hidden_size = tied_weight.shape
        # Built on "meta" because its own weight would be thrown away at once.
        self.decoder = nn.Linear(hidden_size, vocab_size, device="meta")
        self.decoder.weight = tied_weight
        self.decoder.bias = nn.Parameter(torch.zeros(vocab_size, dtype=tied_weight.dtype,
                                                     device=tied_weight.device))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.act(self.dense(hidden))))


def _head_transform(arch: str, final_head: nn.Module) -> tuple[nn.Linear, nn.Module, nn.LayerNorm]:
    """(dense, activation, layer norm) of the arch's own MLM head, in the order it applies them."""
    if arch == "bert":
        transform = final_head.predictions.transform
        return transform.dense, transform.transform_act_fn, transform.LayerNorm
    # RobertaLMHead calls a hard-coded gelu rather than config.hidden_act.
    return final_head.dense, ACT2FN["gelu"], final_head.layer_norm


class _SplitPart(nn.Module):
    """What client and server parts share: the base slice, the optional final head, layer loop."""

    def __init__(self, full_model: PreTrainedModel, indices: range, with_embeddings: bool,
                 with_final_head: bool):
        super().__init__()
        self.config = full_model.config
        self.arch = arch_of(full_model)
        self._base_name = full_model.base_model_prefix
        self._final_head_name = _FINAL_HEAD_NAMES[self.arch]
        base = _BaseSlice(getattr(full_model, self._base_name), indices, with_embeddings)
        self.add_module(self._base_name, base)
        if with_final_head:
            self.add_module(self._final_head_name, getattr(full_model, self._final_head_name))
        self.num_layers = len(indices)
        self.layer_indices = tuple(indices)

    @property
    def has_final_head(self) -> bool:
        return hasattr(self, self._final_head_name)

    @property
    def final_head(self) -> nn.Module | None:
        """The arch's own MLM head module (`cls` / `lm_head`), or None when it is on the other side."""
        return getattr(self, self._final_head_name, None)

    @property
    def layers(self) -> nn.ModuleDict:
        return getattr(self, self._base_name).encoder.layer

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        layer_mask = _layer_attention_mask(self.config, hidden, attention_mask)
        for layer in self.layers.values():
            hidden = layer(hidden, layer_mask)
        return hidden

    def final_logits(self, hidden_at_masked: torch.Tensor) -> torch.Tensor:
        """[M,H] hidden states at masked positions -> [M,V] logits of the final MLM head."""
        if not self.has_final_head:
            raise ValueError(f"final head is not on this {type(self).__name__}; accepted: a part built "
                             "with with_final_head=True")
        return self.final_head(hidden_at_masked)


class ClientModel(_SplitPart):
    """Embeddings + the first `num_client_layers` encoder layers + aux head (+ final head)."""

    def __init__(self, full_model: PreTrainedModel, num_client_layers: int, with_final_head: bool):
        _check_layer_index("num_client_layers", num_client_layers, num_layers_of(full_model.config))
        super().__init__(full_model, range(num_client_layers), with_embeddings=True,
                         with_final_head=with_final_head)
        self.aux_head = AuxMLMHead(self.arch, getattr(full_model, self._final_head_name),
                                   self.embeddings.word_embeddings)

    @property
    def embeddings(self) -> nn.Module:
        return getattr(self, self._base_name).embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T] token ids (+ [B,T] padding mask) -> [B,T,H] hidden states at the cut."""
        hidden = self.embeddings(input_ids=input_ids)
        return self.run_layers(hidden, attention_mask)

    def aux_logits(self, hidden_at_masked: torch.Tensor) -> torch.Tensor:
        """[M,H] cut-layer hidden states at masked positions -> [M,V] auxiliary-head logits."""
        return self.aux_head(hidden_at_masked)


class ServerModel(_SplitPart):
    """Encoder layers first_layer..L-1 (+ the final head in server-head mode)."""

    def __init__(self, full_model: PreTrainedModel, first_layer: int, with_final_head: bool):
        num_layers = num_layers_of(full_model.config)
        _check_layer_index("first_layer", first_layer, num_layers)
        super().__init__(full_model, range(first_layer, num_layers), with_embeddings=False,
                         with_final_head=with_final_head)
        self.first_layer = first_layer

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T,H] cut-layer hidden states (+ [B,T] padding mask) -> [B,T,H] last-layer states."""
        return self.run_layers(hidden, attention_mask)


def split_model(full_model: PreTrainedModel, num_client_layers: int,
                head_placement: str = "client") -> tuple[ClientModel, ServerModel]:
    """Cut the model after `num_client_layers` layers; the final head goes where head_placement says."""
    if head_placement not in HEAD_PLACEMENTS:
        raise ValueError(f"head_placement {head_placement!r} is not supported; "
                         f"accepted: {', '.join(HEAD_PLACEMENTS)}")
    _check_layer_index("num_client_layers", num_client_layers, num_layers_of(full_model.config))
    client = ClientModel(full_model, num_client_layers, with_final_head=head_placement == "client")
    server = ServerModel(full_model, num_client_layers, with_final_head=head_placement == "server")
    logger.debug("split %s: %d client layers, %d server layers, head on %s", client.arch,
                 client.num_layers, server.num_layers, head_placement)
    return client, server


def join_state_dicts(client_state: dict, server_state: dict) -> dict:
    """Merge client and server state dicts into one HF state dict (auxiliary head dropped)."""
    client_part = {key: value for key, value in client_state.items() if not key.startswith(AUX_HEAD_PREFIX)}
    server_part = {key: value for key, value in server_state.items() if not key.startswith(AUX_HEAD_PREFIX)}
    overlap = sorted(client_part.keys() & server_part.keys())
    if overlap:
        raise ValueError(f"client and server states overlap on {len(overlap)} keys (first: {overlap[0]}); "
                         "accepted: disjoint states")
    return {**client_part, **server_part}


def build_joined_model(config: PretrainedConfig, client_state: dict, server_state: dict) -> PreTrainedModel:
    """A standard *ForMaskedLM (eval mode) holding exactly the client's and server's weights; its decoder
    tied to the word embeddings when the states were trained tied (they then lack the decoder's key)."""
    # The random init is overwritten at once; it must not advance the caller's RNG stream
    # (a mid-training export would otherwise change the rest of the run).
    with torch.random.fork_rng(devices=[]):
        model = build_full_model(config)
    if output_embedding_key(model) not in join_state_dicts(client_state, server_state):
        tie_decoder(model)
    return load_joined_state(model, client_state, server_state)


def load_joined_state(model: PreTrainedModel, client_state: dict, server_state: dict) -> PreTrainedModel:
    """Overwrite every weight of a joined model with the client's and server's (reusing the model
    saves a random init per round: about 1 s for BERT-base on one CPU core). A tied decoder is the
    embedding matrix: its key is not in the states (see unique_state)."""
    result = model.load_state_dict(join_state_dicts(client_state, server_state), strict=False)
    missing = set(result.missing_keys) - aliased_keys(model)
    if missing or result.unexpected_keys:
        raise ValueError(f"joined state does not match the config: missing {sorted(missing)}, "
                         f"unexpected {sorted(result.unexpected_keys)}; accepted: exactly the model's keys")
    return model.eval()


def client_state_keys(client_model: ClientModel, include_embedding_and_heads: bool) -> list[str]:
    """State-dict keys FedAvg averages: all float tensors, or only the encoder layers'.

    Aliases of an already listed tensor (the aux decoder IS the word embedding) are left
    out so that a tensor is never averaged twice.
    """
    seen_tensors = set()
    keys = []
    for key, tensor in client_model.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point() or id(tensor) in seen_tensors:
            continue
        seen_tensors.add(id(tensor))
        if include_embedding_and_heads or ENCODER_LAYER_MARKER in key:
            keys.append(key)
    return keys


def aliased_keys(module: nn.Module) -> set[str]:
    """State-dict keys that name a tensor already named by an earlier key (tied weights such as
    `aux_head.decoder.weight`, which is the word-embedding matrix)."""
    first_name: dict[int, str] = {}
    aliases = set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in first_name:
            aliases.add(name)
        else:
            first_name[id(tensor)] = name
    return aliases


def unique_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict without aliased keys: loading it back can never overwrite a tied
    tensor with a stale copy under its second name."""
    aliases = aliased_keys(module)
    return {name: tensor for name, tensor in module.state_dict().items() if name not in aliases}


def load_unique_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a `unique_state` dict: every key but the aliases must be present."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = set(missing) - aliased_keys(module)
    if missing or unexpected:
        raise ValueError(f"state does not fit the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
