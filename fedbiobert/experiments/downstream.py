"""Run one downstream job: `python -m fedbiobert.finetune` in a subprocess, its JSON record kept.

A subprocess per job keeps every fine-tune's memory and threads its own (one at a time: two torch jobs
on a 2-core machine thrash). The record is written atomically by the fine-tuner, so an existing file is
a finished job: `--resume` skips it. A failed job leaves no record; its log says why.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fedbiobert.bench.runner import REPO, first_error_line, stop
from fedbiobert.experiments.parity_plan import DownstreamJob, ParityPreset


def finetune_command(job: DownstreamJob, preset: ParityPreset, data_root: Path, output: Path,
                     threads: int | None) -> list[str]:
    task = job.task
    command = [sys.executable, "-m", "fedbiobert.finetune", "--model", job.model,
               "--data", str(data_root / task.folder), "--seeds", preset.seeds, "--output", str(output),
               "--max_len", str(task.max_len), "--batch_size", "16", *job.extra]
    if task.max_train is not None:
        command += ["--max_train_sentences", str(task.max_train)]
    if task.max_test is not None:
        command += ["--max_test_sentences", str(task.max_test)]
    if job.probe:
        command += ["--probe", "True", "--lr", f"{preset.probe_lr:g}", "--epochs", str(preset.probe_epochs)]
    else:
        command += ["--lr", f"{preset.finetune_lr:g}", "--epochs", str(task.epochs)]
    if threads:
        command += ["--threads", str(threads)]
    return command


def run_job(job: DownstreamJob, preset: ParityPreset, data_root: Path, out_dir: Path,
            threads: int | None) -> tuple[dict | None, str | None, float]:
    """(record, None, seconds) on success; (None, error line, seconds) on failure."""
    output = job.output(out_dir)
    log = out_dir / "logs" / "downstream" / f"{job.model_name}-{job.task.name}-{job.mode}.log"
    command = finetune_command(job, preset, data_root, output, threads)
    returncode, seconds = run_logged(command, log)
    if returncode != 0 or not output.is_file():
        return None, f"exit status {returncode}: {first_error_line(log)} (log: {log})", seconds
    return json.loads(output.read_text(encoding="utf-8")), None, seconds


def run_logged(command: list[str], log: Path) -> tuple[int, float]:
    """(exit status, seconds) of `command` run from the repository with its output in `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("w", encoding="utf-8") as stream:
        stream.write("$ " + " ".join(command) + "\n")
        stream.flush()
        process = subprocess.Popen(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = process.wait()
        except BaseException:  # Ctrl-C or SIGTERM: never leave a job behind
            stop(process)
            raise
    return returncode, time.time() - started


def finished_record(job: DownstreamJob, out_dir: Path) -> dict | None:
    output = job.output(out_dir)
    return json.loads(output.read_text(encoding="utf-8")) if output.is_file() else None
