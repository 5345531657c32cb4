"""Presets: the model size, token budget and defaults shared by every run of one benchmark.

Every run of a preset uses the same data, model shape, rounds, batches, batch size and sequence
length, so every algorithm processes the same number of tokens per communication round
(see `matrix.RunSpec.tokens_per_round`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_len: int
    batch_size: int
    num_batch: int                       # batches per client per round
    n_comm_rounds: int
    n_clients: int
    fedbiobert_cuts: tuple[int, ...]     # client encoder layers k of the fedbiobert k-(L-k) entries
    links: str = "none,100:5"            # default of --links
    nproc: int = 3                       # default of --nproc
    val_blocks: int = 512                # the same validation set for every run (see --val_blocks)
    run_timeout: float = 600.0           # seconds one run may take before it is killed and marked failed
    on_cuda: bool = False
    extra_flags: tuple[str, ...] = ()    # further run.py flags given to every run

    def model_flags(self) -> list[str]:
        """run.py flags every run of this preset shares (model shape, sequences, budget, device)."""
        flags = {"hidden_size": self.hidden_size, "num_attention_heads": self.num_attention_heads,
                 "intermediate_size": self.intermediate_size, "vocab_size": self.vocab_size,
                 "max_len": self.max_len, "batch_size": self.batch_size, "n_comm_rounds": self.n_comm_rounds,
                 "n_local_rounds": 1, "participation_ratio": 1.0, "val_blocks": self.val_blocks,
                 "on_cuda": self.on_cuda}
        return [item for key, value in flags.items() for item in (f"--{key}", str(value))] + list(self.extra_flags)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(  # hidden: for tests only (seconds per run)
        name="tiny", description="test-sized model, 2 rounds", num_layers=4, hidden_size=32,
        num_attention_heads=2, intermediate_size=64, vocab_size=1500, max_len=64, batch_size=4, num_batch=4,
        n_comm_rounds=2, n_clients=4, fedbiobert_cuts=(1, 2, 3), links="none", val_blocks=16, run_timeout=180),
    "quick": Preset(
        name="quick", description="a few minutes on a 2-core CPU", num_layers=4, hidden_size=128,
        num_attention_heads=2, intermediate_size=512, vocab_size=4000, max_len=128, batch_size=8, num_batch=10,
        n_comm_rounds=3, n_clients=4, fedbiobert_cuts=(2,), run_timeout=300, nproc=2),
    "cpu": Preset(
        name="cpu", description="a longer CPU comparison (tens of minutes)", num_layers=6, hidden_size=256,
        num_attention_heads=4, intermediate_size=1024, vocab_size=16000, max_len=128, batch_size=8,
        num_batch=20, n_comm_rounds=6, n_clients=4, fedbiobert_cuts=(1, 3, 5), run_timeout=1800,
        nproc=2),
    "base": Preset(  # BERT-base shape on this CPU: per-step stage times, bytes and memory at real width
        name="base", description="BERT-base shape on a 2-core CPU (about 10 minutes for fedbiobert-6-6 and "
        "fedbert-0-12)", num_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
        vocab_size=30522, max_len=128, batch_size=4, num_batch=3, n_comm_rounds=2, n_clients=2,
        fedbiobert_cuts=(6,), links="none", nproc=2, val_blocks=32, run_timeout=1800),
    "gpu": Preset(  # the paper-sized setting (BERT-base shape)
        name="gpu", description="paper-sized BERT-base on CUDA", num_layers=12, hidden_size=768,
        num_attention_heads=12, intermediate_size=3072, vocab_size=30522, max_len=512, batch_size=16,
        num_batch=100, n_comm_rounds=10, n_clients=4, fedbiobert_cuts=(1, 3, 6, 11),
        run_timeout=4 * 3600, on_cuda=True),
}
PUBLIC_PRESETS = ("quick", "cpu", "base", "gpu")
