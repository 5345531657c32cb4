"""Logging set-up for every process: one line per record, tagged with the rank and role.

Rank 0 logs at INFO (progress, round summaries); other ranks at WARNING unless
FEDBIOBERT_LOG_LEVEL says otherwise, so a run on many processes stays readable.
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def warnings_from_rank0(rank: int):
    """Within this block only rank 0 logs warnings (errors still show everywhere): for the start-up checks,
    which every rank runs alike, so a warning prints once and not once per process."""
    root = logging.getLogger()
    level = root.level
    if rank != 0:
        root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)
