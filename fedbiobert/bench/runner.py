"""Run one `RunSpec`: a `torchrun ... run.py` subprocess on a free local port, watched until it ends.

The subprocess writes its output directory (OUT/runs/NAME: summary.json, metrics.jsonl) and its
stdout+stderr to OUT/logs/NAME.log. While it runs, new round events in metrics.jsonl are passed to
`on_round` (live progress). A run that exits non-zero, times out or writes no summary.json is a
failure: its `RunOutcome` carries the first error line of its log instead of a summary.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedbiobert.bench.matrix import RunSpec
from fedbiobert.comm.launch_env import free_port

REPO = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.5
ERROR_MARKERS = ("run.py: error:", " ERROR ", "error:", "Error:", "Traceback")
PORT_IN_USE = ("address already in use", "EADDRINUSE")


@dataclass(frozen=True)
class RunnerSettings:
    out_dir: Path
    data_dir: Path
    cache_dir: Path | None
    timeout: float
    keep_models: bool = False


@dataclass
class RunOutcome:
    status: str                 # "ok" or "failed"
    returncode: int | None
    seconds: float              # wall time of the subprocess, launch to exit
    log_path: Path
    run_dir: Path
    summary: dict | None = None
    error: str | None = None


def interrupt_on_sigterm() -> None:
    """SIGTERM (a scheduler, `kill`) acts like Ctrl-C: the running subprocess is stopped, not orphaned."""
    def terminated(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, terminated)


def torchrun_command(spec: RunSpec, port: int, settings: RunnerSettings, run_dir: Path) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(spec.nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(port), "--module", "fedbiobert.run",
               *spec.flags(), "--data_dir", str(settings.data_dir), "--output_dir", str(run_dir)]
    if settings.cache_dir is not None:
        command += ["--cache_dir", str(settings.cache_dir)]
    return command


def run_spec(spec: RunSpec, settings: RunnerSettings, on_round: Callable[[dict], None] = lambda event: None,
             attempts: int = 2, label: str | None = None) -> RunOutcome:
    """Run `spec` to completion; retry once on a fresh port if the chosen one was taken meanwhile.
    `label` names its run folder and log (default: the spec's name; repeats add a suffix)."""
    for attempt in range(attempts):
        outcome = _run_once(spec, settings, on_round, label or spec.name)
        if outcome.status == "ok" or attempt + 1 == attempts or not _port_clash(outcome.log_path):
            break
    if outcome.status == "ok" and not settings.keep_models:
        prune_models(outcome.run_dir)
    return outcome


def _run_once(spec: RunSpec, settings: RunnerSettings, on_round: Callable[[dict], None], label: str) -> RunOutcome:
    run_dir = settings.out_dir / "runs" / label
    log_path = settings.out_dir / "logs" / f"{label}.log"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the bench's own previous attempt: run.py refuses a trained output_dir
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = torchrun_command(spec, free_port(), settings, run_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = _watch(process, run_dir / "metrics.jsonl", on_round, started + settings.timeout)
        except BaseException:  # Ctrl-C or a bug here: never leave the run's processes behind
            stop(process)
            raise
    seconds = time.time() - started
    return _outcome(returncode, seconds, log_path, run_dir, settings.timeout)


def _watch(process: subprocess.Popen, metrics: Path, on_round: Callable[[dict], None], deadline: float) -> int | None:
    """Wait for the process, reporting round events as they appear; None if it was killed at the deadline."""
    tail = MetricsTail(metrics)
    while process.poll() is None:
        if time.time() > deadline:
            stop(process)
            return None
        for event in tail.new_rounds():
            on_round(event)
        time.sleep(POLL_SECONDS)
    for event in tail.new_rounds():
        on_round(event)
    return process.returncode


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """End the run's process group (torchrun and the workers it started): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


class MetricsTail:
    """Reads the round events appended to a metrics.jsonl since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def new_rounds(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as stream:
            stream.seek(self.offset)
            data = stream.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        events = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
        return [event for event in events if event.get("event") == "round"]


def _outcome(returncode: int | None, seconds: float, log_path: Path, run_dir: Path, timeout: float) -> RunOutcome:
    summary_path = run_dir / "summary.json"
    if returncode is None:
        error = f"timed out after {timeout:g}s and was stopped"
    elif returncode != 0:
        error = f"exit status {returncode}: {first_error_line(log_path)}"
    elif not summary_path.is_file():
        error = f"exit status 0 but no {summary_path}"
    else:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        return RunOutcome("ok", returncode, seconds, log_path, run_dir, summary=summary)
    return RunOutcome("failed", returncode, seconds, log_path, run_dir, error=error)


def first_error_line(log_path: Path) -> str:
    """The first line of the log that looks like an error (the root cause), else its last line."""
    lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]]
    lines = [line for line in lines if line]
    for marker in ERROR_MARKERS:
        for line in lines:
            if marker in line:
                return line
    return lines[-1] if lines else "(empty log)"


def _port_clash(log_path: Path) -> bool:
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return any(marker in text for marker in PORT_IN_USE)


def prune_models(run_dir: Path) -> None:
    """Delete the per-round model exports and the resume checkpoint (metrics and summary stay)."""
    for path in list(run_dir.glob("round[0-9]*")) + [run_dir / "checkpoint"]:
        if path.is_dir():
            shutil.rmtree(path)
