"""LoRA's options, without torch: the settings, their checks and an encoder layer's linear modules from
its shape alone, so the engine's option checks can run before anything heavy is imported (the
adapters themselves: fedbiobert/lora.py)."""
from __future__ import annotations

from dataclasses import dataclass

# The linear modules of one BERT/RoBERTa encoder layer (module-name suffixes), for checks made
# before any model is built (the engine's options).
LAYER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense")
DEFAULT_TARGETS = ("query", "value")


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def record(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets),
                "scaling": self.scaling}


def parse_targets(text: str) -> tuple[str, ...]:
    targets = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not targets:
        raise ValueError(f"LoRA targets {text!r} (accepted: comma-separated module names, e.g. query,value)")
    return targets


def matches(name: str, target: str) -> bool:
    """`target` names the module `name` (a suffix on a dot boundary)."""
    return name == target or name.endswith("." + target)


def check_lora(settings: LoraSettings, layer_linears: dict[str, tuple[int, int]], flag: str = "--lora") -> None:
    """ValueError (one line) for a bad value (`check_lora_values`) or a target no encoder-layer linear
    module has, or a rank above a targeted layer's width. `layer_linears`: an encoder layer's linear
    modules (name suffix -> (in_features, out_features))."""
    check_lora_values(settings, flag)
    for target in settings.targets:
        chosen = {name: shape for name, shape in layer_linears.items() if matches(name, target)}
        if not chosen:
            raise ValueError(f"{flag}_targets: the model's encoder layers have no linear module {target!r} "
                             f"(accepted: {', '.join(sorted(layer_linears))}, or a suffix such as query, dense)")
        width = min(min(shape) for shape in chosen.values())
        if settings.rank > width:
            raise ValueError(f"{flag}_rank {settings.rank} exceeds the width {width} of the layers {target!r} "
                             f"names (accepted: 1..{width})")


def check_lora_values(settings: LoraSettings, flag: str = "--lora") -> None:
    """ValueError (one line) for a rank below 1, a non-positive alpha or a dropout outside [0, 1)."""
    if not isinstance(settings.rank, int) or settings.rank < 1:
        raise ValueError(f"{flag}_rank {settings.rank} (accepted: an integer >= 1)")
    if not settings.alpha > 0:
        raise ValueError(f"{flag}_alpha {settings.alpha} (accepted: > 0)")
    if not 0 <= settings.dropout < 1:
        raise ValueError(f"{flag}_dropout {settings.dropout} (accepted: 0 <= dropout < 1)")


def layer_linears_of_config(hidden_size: int, intermediate_size: int) -> dict[str, tuple[int, int]]:
    """An encoder layer's linear modules from the shape alone (BERT and RoBERTa name them alike)."""
    shapes = {name: (hidden_size, hidden_size) for name in LAYER_LINEARS}
    shapes["intermediate.dense"] = (hidden_size, intermediate_size)
    shapes["output.dense"] = (intermediate_size, hidden_size)
    return shapes
