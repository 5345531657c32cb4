"""The activation defence: per-token L2 clipping, then Gaussian noise, on the hidden states a client sends.

One function (`defend`) serves the engine (a split client's ACTIVATION send, fedbiobert/algorithms/split_parts.py,
options --activation_clip and --activation_noise) and the privacy audit (the activations the simulated
server sees, and the fine-tuning that measures what the defence costs), so the audit measures the
mechanism the engine runs.

Shape of the mechanism: each token's hidden vector h is scaled to norm at most C (`clip`, 0: off), then
N(0, sigma^2) is added to every element. With clipping on, sigma / C is the noise multiplier of the
Gaussian mechanism (DP-SGD's z): the noise relative to the most one token's vector can move. This is
DP-shaped, not a DP guarantee: no privacy budget is accounted over steps, rounds or tokens.

Noise is additive, so the gradient w.r.t. the noisy activation is also the gradient w.r.t. the clean one:
FedBERT's client applies the server's GRAD at the cut to its un-noised hidden states unchanged, exactly.
Clipping is not the identity; there the GRAD passes straight through (as if unclipped), an approximation
that leaves the forward (what leaves the silo) exactly as documented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Defence:
    """sigma: the noise's standard deviation per element (0: none); clip: the largest per-token L2 norm
    before the noise (0: no clipping)."""
    sigma: float = 0.0
    clip: float = 0.0

    def __post_init__(self):
        for name, value in (("sigma", self.sigma), ("clip", self.clip)):
            if not (value >= 0 and value < float("inf")):
                raise ValueError(f"activation defence {name} {value} must be a finite number, 0 or more")

    @classmethod
    def from_config(cls, config) -> "Defence":
        return cls(config.activation_noise, config.activation_clip)

    @property
    def active(self) -> bool:
        return self.sigma > 0 or self.clip > 0

    @property
    def noise_multiplier(self) -> float | None:
        """sigma / C, the DP-SGD-style noise multiplier; None without clipping (the noise has no scale to
        be measured against)."""
        return self.sigma / self.clip if self.clip > 0 else None

    def label(self) -> str:
        if not self.active:
            return "none"
        parts = ([f"clip {self.clip:g}"] if self.clip > 0 else []) + ([f"sigma {self.sigma:g}"] if self.sigma else [])
        return ", ".join(parts)


def clip_per_token(hidden: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale each vector along the last dimension to L2 norm at most `clip` (differentiable)."""
    norms = hidden.norm(dim=-1, keepdim=True)
    return hidden * torch.clamp(clip / norms.clamp_min(1e-12), max=1.0)


def defend(hidden: torch.Tensor, defence: Defence, generator: torch.Generator | None = None) -> torch.Tensor:
    """`hidden` clipped per token and noised, in float32 (differentiable w.r.t. `hidden`: the noise is a
    constant). Without an active defence `hidden` itself comes back and no random number is drawn, so a
    run without the options is bit-identical to one before they existed. `generator`: the noise's RNG
    (default: the global RNG of hidden's device)."""
    if not defence.active:
        return hidden
    out = hidden.float()
    if defence.clip > 0:
        out = clip_per_token(out, defence.clip)
    if defence.sigma > 0:
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        out = out + defence.sigma * noise
    return out
