"""Progress lines of an experiment: stdout, flushed at once (long runs are watched through a pipe or a log)."""
from __future__ import annotations

import sys


def say(text: str = "", error: bool = False) -> None:
    print(text, file=sys.stderr if error else sys.stdout, flush=True)
