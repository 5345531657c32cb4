"""Logging set-up for every process: one line per record, tagged with the rank and role.

Rank 0 logs at INFO (progress, round summaries); other ranks at WARNING unless
FEDBIOBERT_LOG_LEVEL says otherwise, so a run on many processes stays readable.
"""
from __future__ import annotations

import logging
import os
import sys


def setup_logging(rank: int, role: str = "") -> None:
    default = "INFO" if rank == 0 else "WARNING"
    level = os.environ.get("FEDBIOBERT_LOG_LEVEL", default).upper()
    tag = f"rank {rank}{' ' + role if role else ''}"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{tag}] %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("torch.distributed", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # its per-save "Writing model shards" bars would flood the log
