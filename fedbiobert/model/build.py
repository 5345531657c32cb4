"""Building and loading the full (unsplit) masked-LM models.

This file owns the model *description* (`ModelSpec`), its translation into a Hugging Face
config, random initialisation of a BERT/RoBERTa masked-LM from that config, and loading
one from a local folder written by `save_pretrained`. Every model it returns has an
UNTIED final head: the decoder weight is its own tensor (see `untie_output_embeddings`),
because in SplitFed the final head may live on another machine than the embeddings.
"""

import copy
import logging
import os
from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
)

from fedbiobert.constants import ARCHS
from fedbiobert.seeding import derive_seed

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
_CONFIG_CLASSES = {"bert": BertConfig, "roberta": RobertaConfig}
_MODEL_CLASSES = {"bert": BertForMaskedLM, "roberta": RobertaForMaskedLM}
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass
class ModelSpec:
    """Architecture hyper-parameters of a model to be built from scratch."""

    arch: str
    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    num_layers: int
    max_len: int
    pad_token_id: int

    def validate(self) -> "ModelSpec":
        """Raise ValueError on the first inconsistent field; return self so calls can chain."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not supported; accepted: {', '.join(ARCHS)}")
        for name in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
                     "num_layers", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {value!r} is invalid; accepted: an integer >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is invalid; "
                             f"accepted: 0..{self.vocab_size - 1}")
        return self


def _max_position_embeddings(spec: ModelSpec) -> int:
    if spec.arch == "bert":
        return spec.max_len
    # RoBERTa numbers real tokens from pad_token_id + 1 (fairseq convention), so the table
    # needs max_len + pad_token_id + 1 rows: the usual "max_len + 2" when pad_token_id is 1.
    return spec.max_len + max(spec.pad_token_id, 1) + 1


def build_config(spec: ModelSpec, attn_implementation: str = "sdpa") -> PretrainedConfig:
    """Translate a ModelSpec into a BertConfig / RobertaConfig with an untied final head."""
    spec.validate()
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation {attn_implementation!r} is not supported; "
                         f"accepted: {', '.join(ATTN_IMPLEMENTATIONS)}")
    arch_specific = {"type_vocab_size": 1} if spec.arch == "roberta" else {}
    return _CONFIG_CLASSES[spec.arch](
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_attention_heads,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        max_position_embeddings=_max_position_embeddings(spec),
        pad_token_id=spec.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
        **arch_specific,
    )


def arch_of(model_or_config) -> str:
    """'bert' or 'roberta' for a model or a config; ValueError for any other model type."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise ValueError(f"model_type {model_type!r} is not supported; accepted: {', '.join(ARCHS)}")
    return model_type


def num_layers_of(config) -> int:
    """Number of encoder layers of a config (or of a model, through its config)."""
    config = getattr(config, "config", config)
    return int(config.num_hidden_layers)


def untied_config(config: PretrainedConfig) -> PretrainedConfig:
    if not getattr(config, "tie_word_embeddings", False):
        return config
    logger.info("config ties word embeddings to the MLM decoder; using an untied copy")
    config = copy.deepcopy(config)
    config.tie_word_embeddings = False
    return config


def build_full_model(spec_or_config, seed: int | None = None) -> PreTrainedModel:
    """Randomly initialised *ForMaskedLM; identical in every process given the same seed.

    The final decoder starts as a copy of the word embeddings (the usual tied init) and is
    an independent tensor from then on.
    """
    config = spec_or_config
    if isinstance(spec_or_config, ModelSpec):
        config = build_config(spec_or_config)
    config = untied_config(config)
    arch = arch_of(config)
    if seed is not None:
        torch.manual_seed(seed)
    model = _MODEL_CLASSES[arch](config)
    with torch.no_grad():
        model.get_output_embeddings().weight.copy_(model.get_input_embeddings().weight)
    logger.debug("built %s with %d layers (seed %s)", arch, num_layers_of(config), seed)
    return model


def untie_output_embeddings(model: PreTrainedModel) -> PreTrainedModel:
    """Give every tied parameter of the model (decoder weight/bias) its own tensor, in place."""
    tied_targets = model.get_expanded_tied_weights_keys(all_submodels=True)
    for target_name in tied_targets:
        parent_name, attribute = target_name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        shared = getattr(parent, attribute)
        setattr(parent, attribute, torch.nn.Parameter(shared.detach().clone(), shared.requires_grad))
    model.config.tie_word_embeddings = False
    # HF re-ties the pairs cached here on tie_weights(recompute_mapping=False), e.g. from
    # init_weights(); the cache must agree with the untied config.
    model.all_tied_weights_keys = {}
    return model


def tie_decoder(model: PreTrainedModel) -> None:
    """Make the final MLM decoder's weight the word-embedding matrix, in place (BERT's tie; the config
    copy the model keeps says so, so a joined model saved from it is tied for AutoModelForMaskedLM).
    The head's `bias` becomes the decoder's bias, the other pair HF ties (`_tied_weights_keys`): untied,
    that vector is a second, unused copy that only travels."""
    decoder = model.get_output_embeddings()
    decoder.weight = model.get_input_embeddings().weight
    head = model.get_submodule(output_embedding_key(model).rsplit(".", 2)[0])  # cls.predictions / lm_head
    if isinstance(getattr(head, "bias", None), torch.nn.Parameter) and decoder.bias is not None:
        head.bias = decoder.bias
    model.config = copy.copy(model.config)  # never the caller's config object: it builds other models
    model.config.tie_word_embeddings = True


def decoder_is_tied(model: PreTrainedModel) -> bool:
    """The final decoder's weight IS the word-embedding matrix (tie_decoder was applied)."""
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def decoder_is_embeddings_copy(model: PreTrainedModel) -> bool:
    """The decoder holds exactly the word embeddings' values (a fresh init; a warm start without an MLM head)."""
    return torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)


def output_embedding_key(model: PreTrainedModel) -> str:
    """The state-dict key of the final decoder's weight (`cls.predictions.decoder.weight`, ...)."""
    decoder = model.get_output_embeddings()
    name = next(name for name, module in model.named_modules() if module is decoder)
    return f"{name}.weight"


def _has_weights_and_config(hf_dir: str) -> bool:
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        return False
    return any(os.path.isfile(os.path.join(hf_dir, name)) for name in _WEIGHT_FILES)


def load_full_model(hf_dir: str, seed: int = 0) -> PreTrainedModel:
    """Load a local BERT/RoBERTa folder as a masked-LM (never downloads) with an untied final head.

    An encoder-only folder (`BertModel` / `RobertaModel`, e.g. a sentence-transformers export) loads too:
    its pooler is dropped, and the MLM-head weights it lacks are drawn from a generator seeded with
    `seed`, so every process of a run starts from the same head and `--manual_seed` reproduces it
    (HF would draw them from each process's global generator).
    """
    if not os.path.isdir(hf_dir) or not _has_weights_and_config(hf_dir):
        raise ValueError(f"hf_dir {hf_dir!r} has no config.json plus model weights; "
                         "accepted: a folder written by save_pretrained")
    with _quiet_transformers():  # its load report is replaced by the lines below
        model, info = AutoModelForMaskedLM.from_pretrained(hf_dir, local_files_only=True, output_loading_info=True)
    arch_of(model)
    if getattr(model.config, "tie_word_embeddings", False):
        # Cloning every pair the config ties is harmless for a pair HF left untied
        # (checkpoint values differed) and frees the ones it did tie.
        untie_output_embeddings(model)
        logger.info("untied the MLM decoder of %s from its word embeddings", hf_dir)
    if info["missing_keys"]:
        initialise_missing(model, sorted(info["missing_keys"]), seed)
        logger.info("%s lacks %s: initialised from seed %d (matrices ~ N(0, %g), biases 0, norms 1; the decoder "
                    "starts as the word embeddings; a client's auxiliary head starts as a copy of this head)",
                    hf_dir, ", ".join(sorted(info["missing_keys"])), seed, model.config.initializer_range)
    if info["unexpected_keys"]:
        logger.info("%s: dropped %s (not part of a masked-LM)", hf_dir, ", ".join(sorted(info["unexpected_keys"])))
    return model


@torch.no_grad()
def initialise_missing(model: torch.nn.Module, names: list[str], seed: int, purpose: str = "mlm head") -> None:
    """Draw the named weights as BERT's init does (matrices N(0, initializer_range), biases 0, norm
    scales 1), each from a generator seeded by (seed, purpose, name) alone: the result depends neither on
    the global generator (which differs between processes) nor on which other weights are missing."""
    state = model.state_dict(keep_vars=True)
    std = getattr(model.config, "initializer_range", 0.02)
    for name in names:
        tensor = state[name]
        if tensor.dim() >= 2:
            generator = torch.Generator().manual_seed(derive_seed(seed, purpose, name))
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
        else:
            tensor.fill_(0.0 if name.endswith("bias") else 1.0)


class _quiet_transformers:
    """transformers' logging at ERROR inside the block (its load report names every missing key)."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging
        self._logging = hf_logging
        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        self._logging.set_verbosity(self._level)
        return False
