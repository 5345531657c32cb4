"""The curious server's inversion decoders: from one position's activation at the cut to its input token.

Two decoders: `linear` (one affine map) and `mlp` (LayerNorm, a GELU hidden layer, an affine map). Each
maps an activation to a query in word-embedding space, and a token's score is the query's dot product with
that token's row of the client part's word-embedding matrix, which the server knows (activations.py). The
matrix stays frozen: every token of the vocabulary can be recovered, also those the public text never
shows (most biomedical word pieces), and the decoder's trained part is small.

Training (on the public text only) draws its softmax over the batch's own tokens plus `negatives` tokens
drawn uniformly from the vocabulary, not over all V (30k on BERT), which would cost several times as
much on the small preset's 2 CPU cores. Prediction scores all V.
With a defence the decoder trains on defended public activations, fresh noise each epoch: the server knows
the run's options, so the attack is adapted to the defence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedbiobert.privacy.defence import Defence, defend

DECODERS = ("linear", "mlp")


@dataclass(frozen=True)
class DecoderSettings:
    epochs: int = 3
    batch_tokens: int = 2048
    negatives: int = 2048
    lr: float = 2e-3
    mlp_width: int = 768


class Decoder(nn.Module):
    def __init__(self, kind: str, hidden_size: int, vocab: torch.Tensor, width: int):
        super().__init__()
        if kind not in DECODERS:
            raise ValueError(f"decoder '{kind}' is unknown (accepted: {', '.join(DECODERS)})")
        embedding_size = vocab.shape[1]
        if kind == "linear":
            self.body = nn.Linear(hidden_size, embedding_size)
        else:
            self.body = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU(),
                                      nn.Linear(width, embedding_size))
        self.register_buffer("vocab", vocab, persistent=False)  # frozen: the client part's known weights

    def forward(self, hidden: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.vocab if candidates is None else self.vocab[candidates]
        return self.body(hidden) @ rows.T


def _candidates(targets: torch.Tensor, vocab_size: int, negatives: int, generator: torch.Generator):
    """(the batch's distinct tokens plus uniform negatives, each target's index among them)."""
    drawn = torch.randint(vocab_size, (negatives,), generator=generator).to(targets.device)
    candidates, inverse = torch.unique(torch.cat([targets, drawn]), return_inverse=True)
    return candidates, inverse[:targets.shape[0]]


def train_decoder(kind: str, hidden: torch.Tensor, targets: torch.Tensor, vocab: torch.Tensor,
                  defence: Defence = Defence(), settings: DecoderSettings = DecoderSettings(),
                  seed: int = 0) -> Decoder:
    """A decoder of `kind` trained on (M, H) public activations (defended as sent) to their (M,) tokens."""
    device = hidden.device
    generator = torch.Generator().manual_seed(seed)  # order and negatives
    noise = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)  # the decoder's initial weights
    decoder = Decoder(kind, hidden.shape[1], vocab, settings.mlp_width).to(device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=settings.lr, weight_decay=0.0)
    total_steps = settings.epochs * -(-hidden.shape[0] // settings.batch_tokens)
    # one-cycle: 10% warm-up, then cosine decay; a constant rate for a few steps (OneCycleLR needs 2 warm-up steps)
    schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=total_steps, pct_start=0.1)
                if total_steps >= 20 else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    decoder.train()
    for _ in range(settings.epochs):
        inputs = defend(hidden, defence, noise)  # fresh noise each epoch
        order = torch.randperm(hidden.shape[0], generator=generator).to(device)
        for start in range(0, hidden.shape[0], settings.batch_tokens):
            index = order[start:start + settings.batch_tokens]
            candidates, labels = _candidates(targets[index], vocab.shape[0], settings.negatives, generator)
            loss = nn.functional.cross_entropy(decoder(inputs[index], candidates), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return decoder.eval()


@torch.no_grad()
def top_k(decoder: Decoder, hidden: torch.Tensor, k: int = 5, batch_tokens: int = 4096) -> torch.Tensor:
    """(M, k) the k best tokens over the whole vocabulary for each of the (M, H) activations."""
    return torch.cat([decoder(hidden[start:start + batch_tokens]).topk(k, dim=-1).indices
                      for start in range(0, hidden.shape[0], batch_tokens)])
