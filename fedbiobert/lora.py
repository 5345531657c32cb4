"""LoRA adapters (Hu et al. 2021, through `peft`) for the fine-tuner and the pre-training engine.

A frozen linear layer W of the encoder gains a low-rank update: y = W x + (alpha / r) B A x, with A
(r x in) drawn at random and B (out x r) zero, so training starts from the base model exactly. Only
A and B (and whatever the caller keeps trainable: the task or MLM heads, optionally the embeddings)
have requires_grad; everything else is the base, never changed by an optimiser and never sent.

Adapters go on the encoder layers' linear modules named by `targets` (suffixes of module names on a
dot boundary: `query` and `value`, the LoRA paper's choice, by default; `dense` is every dense of a
layer). The MLM heads, the pooler and the task heads are never adapted: they train in full or stay
frozen.

peft renames an adapted layer's own weight `X.base_layer.weight` and adds `X.lora_A.default.weight`
and `X.lora_B.default.weight`; `merged_state` folds a state dict back into stock names
(X.weight = W + scaling B A), which is how exports stay plain HF models that `AutoModelForMaskedLM`
(or the task class) loads.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable

import torch

from fedbiobert.config.lora import LoraSettings

ADAPTER = "default"  # peft's adapter name: one adapter per model
_A, _B, _BASE = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight", ".base_layer."
_ENCODER_LAYER = re.compile(r"(?:^|.*\.)encoder\.layer\.\d+\.(.+)$")


def layer_linears_of_model(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """The linear modules of the model's first encoder layer (name suffix -> (in, out))."""
    shapes = {}
    for name, module in model.named_modules():
        found = _ENCODER_LAYER.match(name)
        if found and isinstance(module, torch.nn.Linear) and ".encoder.layer.0." in f".{name}":
            shapes[found.group(1)] = (module.in_features, module.out_features)
    return shapes


def _target_pattern(targets: tuple[str, ...]) -> str:
    """peft's target_modules as one regex (full match): the targets inside encoder layers only, so a
    head's or the pooler's `dense` is never adapted."""
    names = "|".join(re.escape(target) for target in targets)
    return rf"(?:.*\.)?encoder\.layer\.\d+\.(?:.*\.)?(?:{names})"


def add_lora(model: torch.nn.Module, settings: LoraSettings, seed: int,
             trainable: Callable[[str], bool] = lambda name: False) -> list[str]:
    """Put adapters on the targeted encoder linears (A drawn from `seed` alone: every process and
    every seed-mate gets the same), freeze every other parameter unless `trainable(name)`; returns
    the names of the trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model  # a few seconds: only when LoRA is asked for
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=_target_pattern(settings.targets), bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_key(name) or trainable(name))
        if param.requires_grad:
            names.append(name)
    return names


def is_adapter_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def trainable_keys(module: torch.nn.Module) -> list[str]:
    """State-dict keys of the parameters that train (a tied weight once, under its first name)."""
    return [name for name, param in module.named_parameters() if param.requires_grad]


def adapted_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    """The module names that carry an adapter in `state`."""
    return sorted(key[: -len(_A)] for key in state if key.endswith(_A))


def adapter_product(state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """B A of one adapted module (out x in), in fp32."""
    return state[prefix + _B].float() @ state[prefix + _A].float()


def merged_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A state dict with every adapter folded into its base weight under the stock name
    (X.weight = X.base_layer.weight + scaling B A); a state without adapters comes back unchanged."""
    prefixes = adapted_prefixes(state)
    if not prefixes:
        return state
    merged = {}
    for key, tensor in state.items():
        if is_adapter_key(key):
            continue
        merged[key.replace(_BASE, ".")] = tensor
    for prefix in prefixes:
        base = state[prefix + _BASE + "weight"]
        merged[prefix + ".weight"] = (base.float() + scaling * adapter_product(state, prefix)).to(base.dtype)
    return merged


def fold_into_base(model: torch.nn.Module, deltas: dict[str, torch.Tensor], scaling: float, seed: int) -> None:
    """W += scaling x delta for every adapted module (`deltas`: prefix -> an out x in update), then restart
    its adapter (A drawn from `seed`, B zero): the model's function is then its base's, which holds the
    update exactly."""
    modules = dict(model.named_modules())
    with torch.no_grad(), _seeded(seed):
        for prefix, delta in sorted(deltas.items()):
            layer = modules[prefix]
            weight = layer.base_layer.weight
            weight.add_(delta.to(weight.dtype), alpha=scaling)
            layer.reset_lora_parameters(ADAPTER, True)


@contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def state_nbytes(state: dict[str, torch.Tensor], keys) -> int:
    """Bytes of the tensors `keys` of `state` as they are sent (their own dtype)."""
    return sum(state[key].numel() * state[key].element_size() for key in keys)
