"""Helpers of the cluster-launcher tests: the tiny run every launcher starts, and what a finished run
leaves behind (the same checks for torchrun, mpirun, sbatch and deepspeed)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from fedbiobert.metrics import read_events
from tests.support.launch import TINY_MODEL

# The original command's flags (its launcher's --hostfile after run.py, --data, --tot_files, --world_conf,
# --complex_arch) on the tiny model: 1 server + 2 client processes, 2 rounds of 3 batches.
TINY_RUN = [*TINY_MODEL, "--data", "wikitext-pubmed", "--tot_files", "18", "--world_conf", "0,1,2",
            "--complex_arch", "False", "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "2",
            "--n_comm_rounds", "2", "--num_batch", "3", "--val_blocks", "32"]
TINY_CORPUS = {"general_wikitext2_test.txt": 40, "pubmed_genia_abstracts.txt": 60, "pubmed_hoc_abstracts.txt": 60,
               "clinical_mtsamples_notes.txt": 30}


def tool(name: str) -> str | None:
    """The path of a launcher's program (also in /usr/sbin, off a normal user's PATH), or None."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def missing_tools_reason(*names: str) -> str | None:
    missing = [name for name in names if tool(name) is None]
    if not missing:
        return None
    return (f"{', '.join(missing)} not installed and scripts/setup_cluster_tools.sh could not install it here "
            "(it needs root and apt-get)")


def assert_finished(output: Path, rounds: int = 2) -> None:
    """What a finished tiny run leaves, whatever started it: every round, a summary, the checkpoint, an export."""
    events = read_events(output)
    assert [event["round"] for event in events if event["event"] == "round"] == list(range(1, rounds + 1))
    assert {event["rank"] for event in events if event["event"] == "step"} == {0, 1, 2}
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rounds_completed"] == rounds and summary["bytes_up"] > 0
    assert (output / "checkpoint" / "state.pt").is_file() and (output / f"round{rounds}" / "config.json").is_file()
