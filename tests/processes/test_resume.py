"""Resume: a run stopped after round 2 and continued with --from_checkpoint True produces exactly the
losses of an uninterrupted run (CPU, same seed). Two servers with one client process each, so every
server sees its messages in a fixed order and FedAvg of the server replicas is exercised too. With
FedAdam and kept silo optimisers, every optimiser state the run carries across rounds (the client
parts' and the replicas' server optimisers, each silo's AdamW, each server's AdamW) must come back
bit for bit, or round 3's losses differ."""
import json

import pytest

from fedbiobert import report
from fedbiobert.metrics import read_events
from tests.support.launch import TINY_MODEL, torchrun

COMMON = [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "2", "--num_device", "2",
          "--n_clients", "4", "--participation_ratio", "0.5", "--n_comm_rounds", "3", "--num_batch", "4",
          "--manual_seed", "11", "--lr", "2e-3"]


def _losses(output_dir, round_number):
    events = [e for e in read_events(output_dir) if e["round"] == round_number]
    steps = sorted((e["role"], e["silo_id"], e["step"], str(e["local_loss"]), str(e["global_loss"]))
                   for e in events if e["event"] == "step")
    val = [e["val_loss"] for e in events if e["event"] == "round"]
    return steps, val


STATEFUL = ["--server_optimizer", "fedadam", "--server_lr", "0.01", "--keep_silo_optimizer", "True"]


@pytest.mark.parametrize("head_placement,options", [("client", STATEFUL),
                                                    pytest.param("server", [], marks=pytest.mark.slow)],
                         ids=["client-head-fedadam-kept-optimizers", "server-head"])
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, small_corpus, head_placement, options):
    cache = tmp_path / "cache"
    args = [*COMMON, "--head_placement", head_placement, *options, "--data_dir", str(small_corpus)]
    whole = torchrun(4, [*args, "--output_dir", str(tmp_path / "whole")], cache)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = torchrun(4, [*args, "--output_dir", str(tmp_path / "split"), "--stop_after_round", "2"], cache)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (tmp_path / "split" / "round3").exists()
    resumed = torchrun(4, [*args, "--output_dir", str(tmp_path / "split"), "--from_checkpoint", "True"], cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole_steps, whole_val = _losses(tmp_path / "whole", 3)
    split_steps, split_val = _losses(tmp_path / "split", 3)
    assert len(whole_steps) > 0
    assert split_steps == whole_steps  # exact equality, not approximate
    assert split_val == whole_val
    assert _losses(tmp_path / "split", 1) == _losses(tmp_path / "whole", 1)


@pytest.mark.slow  # the bad-input catalogue's "fresh run over a trained one" covers it in-process
def test_fresh_run_refuses_an_output_dir_holding_a_checkpoint(tmp_path, small_corpus):
    cache = tmp_path / "cache"
    args = [*COMMON, "--n_comm_rounds", "1", "--data_dir", str(small_corpus), "--output_dir", str(tmp_path / "o")]
    assert torchrun(4, args, cache).returncode == 0
    again = torchrun(4, args, cache)
    assert again.returncode != 0 and "already holds a trained run" in again.stderr


def test_from_checkpoint_round_replays_the_later_rounds_exactly(tmp_path, small_corpus):
    """--from_checkpoint_round 1 restarts from round1/ and reproduces rounds 2 and 3; metrics.jsonl
    is cut at round 1 (each round appears once), and summary.json and the clock cover the whole run."""
    args = [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "2",
            "--n_comm_rounds", "3", "--num_batch", "3", "--data_dir", str(small_corpus),
            "--output_dir", str(tmp_path / "out")]
    assert torchrun(2, args, tmp_path / "cache").returncode == 0
    before = [e for e in read_events(tmp_path / "out") if e["event"] == "round"]
    replay = torchrun(2, [*args, "--from_checkpoint_round", "1"], tmp_path / "cache")
    assert replay.returncode == 0, replay.stderr[-3000:]
    events = read_events(tmp_path / "out")
    after = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in after] == [1, 2, 3]
    assert [e["val_loss"] for e in after] == [e["val_loss"] for e in before]
    steps_per_round = [sum(1 for e in events if e["event"] == "step" and e["round"] == r) for r in (1, 2, 3)]
    assert steps_per_round[0] == steps_per_round[1] == steps_per_round[2] > 0  # no duplicated steps
    # the clock continues: the replayed rounds come after round 1 on the run's time axis
    assert after[0]["seconds"] < after[1]["seconds"] < after[2]["seconds"]
    assert after[1]["seconds"] > before[0]["seconds"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert summary["rounds_completed"] == 3 and summary["rounds_this_invocation"] == 2
    assert summary["first_round_this_invocation"] == 2
    assert summary["tokens"] == sum(e["tokens"] for e in after)
    assert summary["wall_seconds"] > summary["wall_seconds_this_invocation"]
    assert "this invocation trained rounds 2-3 (2 rounds)" in replay.stderr
    table = report.round_table(events).splitlines()[2:]
    assert [int(line.split()[0]) for line in table] == [1, 2, 3]  # each round once, in order
    assert report.plot_losses(events, tmp_path / "loss.png") is not None
