"""fedbiobert-run: one line and status 2 for a bad option with nothing started, the world it works out
from the options, and a real run through it (the README's 3-process layout with fedbert, which picks
the sequential server schedule on its own)."""
from __future__ import annotations

import json
import stat
import time

import pytest

from fedbiobert.config import ConfigError, parse_config
from fedbiobert.launcher import default_world_size, split_argv
from tests.support.launch import TINY_MODEL, fedbiobert_run


@pytest.mark.parametrize("args,line", [
    (["--participation_ratio", "1.5"], "fedbiobert-run: error: --participation_ratio 1.5 is outside (0, 1]"),
    (["--nproc_per_node", "5", "--algorithm", "fedbert", "--num_device", "2"],
     "fedbiobert-run: error: fedbert with --server_schedule sequential has one shared server: --num_device 2 "
     "must be 1 (or launch 4 processes for one server per client process)"),
    (["--nproc_per_node", "zero"], "fedbiobert-run: error: --nproc_per_node 'zero' is not a number of processes"),
], ids=["bad-value", "world-does-not-fit", "bad-nproc"])
def test_bad_option_is_one_line_and_status_2_with_nothing_started(args, line, tmp_path):
    output = tmp_path / "out"
    started = time.monotonic()
    result = fedbiobert_run([*args, "--output_dir", str(output)], timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert result.stdout == ""
    assert not output.exists()
    assert time.monotonic() - started < 60  # no process group, no rendezvous timeout


def test_world_size_from_the_options():
    assert default_world_size(parse_config([])) == 2                         # 1 server + 1 client process
    assert default_world_size(parse_config(["--num_device", "2"])) == 4
    assert default_world_size(parse_config(["--algorithm", "fedavg"])) == 1
    assert default_world_size(parse_config(["--algorithm", "centralized"])) == 1
    assert default_world_size(parse_config(["--gpu_ids", "0,1,2"])) == 3


def test_launcher_options_are_split_from_the_run_options():
    assert split_argv(["--nproc_per_node", "3", "--lr", "1"]) == (3, ["--lr", "1"])
    assert split_argv(["--lr", "1", "--nproc-per-node=4"]) == (4, ["--lr", "1"])
    assert split_argv(["--lr", "1"]) == (None, ["--lr", "1"])
    with pytest.raises(ConfigError, match="needs a number of processes"):
        split_argv(["--nproc_per_node"])


def test_fedbert_in_the_readme_layout_runs_through_the_launcher(tmp_path, small_corpus):
    """3 processes (1 server, 2 client processes): --server_schedule auto picks sequential. Also: warnings
    print once, not per rank; --keep_exports 1 keeps the last round only; every export file has one mode."""
    output = tmp_path / "out"
    result = fedbiobert_run(["--nproc_per_node", "3", *TINY_MODEL, "--algorithm", "fedbert",
                             "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "3",
                             "--participation_ratio", "0.1", "--n_comm_rounds", "2", "--num_batch", "2",
                             "--keep_exports", "1", "--pn_normalize", "True", "--data_dir", str(small_corpus),
                             "--output_dir", str(output),
                             "--cache_dir", str(tmp_path / "cache")], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output / "config.json").read_text())["server_schedule"] == "sequential"
    assert result.stderr.count("rounds to 0 clients a round; sampling 1") == 1, result.stderr[-3000:]
    assert result.stderr.count("--pn_normalize means nothing") == 1
    assert sorted(path.name for path in output.glob("round*")) == ["round2"]
    assert sorted(path.name for path in (output / "checkpoint").iterdir()) == ["exchange", "round2.pt", "state.pt"]
    # --keep_exports 1: the error-feedback residuals round 2's checkpoint resumes with, no older ones
    assert sorted(path.name for path in (output / "checkpoint" / "exchange").glob("aggregate*")) == \
        ["aggregate.round2.pt"]
    assert len({stat.S_IMODE(path.stat().st_mode) for path in (output / "round2").iterdir()}) == 1
