"""NaN/inf updates never reach the global model: the run stops with a clear message (default), or
the poisoned client is left out and the round stands only if --min_clients reported."""
from fedbiobert.metrics import read_events
from tests.support.launch import TINY_MODEL, torchrun

# A learning rate of 1e30 blows the weights up after the first step, so the next loss is NaN/inf.
EXPLODING = [*TINY_MODEL, "--algorithm", "fedavg", "--num_client_encoder", "1", "--num_server_encoder", "1",
             "--n_clients", "2", "--n_comm_rounds", "2", "--num_batch", "3", "--lr", "1e30", "--end_lr", "1e30",
             "--warmup_ratio", "0"]


def _our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "fedbiobert" in line or line.startswith("run.py")]


def test_nan_stops_the_run_naming_the_client_and_round(tmp_path, small_corpus):
    output = tmp_path / "out"
    result = torchrun(2, [*EXPLODING, "--data_dir", str(small_corpus), "--output_dir", str(output)], tmp_path / "c")
    assert result.returncode != 0
    errors = [line for line in _our_lines(result.stderr) if "NonFiniteError" in line]
    assert errors and "in round 1" in errors[0] and "NaN/inf" in errors[0]
    assert "fedbiobert/roles" not in result.stderr  # an expected stop prints no traceback of ours
    assert not (output / "round1").exists() and not (output / "checkpoint").exists()


def test_skipped_clients_below_min_clients_stop_at_the_last_checkpoint(tmp_path, small_corpus):
    output = tmp_path / "out"
    result = torchrun(2, [*EXPLODING, "--on_nonfinite", "skip_client", "--min_clients", "1",
                          "--data_dir", str(small_corpus), "--output_dir", str(output)], tmp_path / "c")
    assert result.returncode != 0
    lines = _our_lines(result.stderr)
    assert any("left out of the average" in line for line in lines)
    assert any("only 0 of 2 sampled clients reported" in line and "--min_clients 1" in line for line in lines)
    assert not (output / "round1").exists()
    assert not (output / "metrics.jsonl").exists() or not any(e["event"] == "round" for e in read_events(output))


DROPOUT = [*TINY_MODEL, "--algorithm", "fedavg", "--num_client_encoder", "1", "--num_server_encoder", "1",
           "--n_clients", "4", "--n_comm_rounds", "2", "--num_batch", "2", "--on_nonfinite", "skip_client",
           "--inject_nan_update", "1:1"]


def test_dropout_with_survivors_at_or_above_min_clients_completes_the_round(tmp_path, small_corpus):
    output = tmp_path / "out"
    result = torchrun(2, [*DROPOUT, "--min_clients", "3", "--data_dir", str(small_corpus),
                          "--output_dir", str(output)], tmp_path / "c")
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(output)
    dropped = [e for e in events if e["event"] == "dropped"]
    assert [(e["round"], e["silo_id"]) for e in dropped] == [(1, 1)]
    rounds = [e for e in events if e["event"] == "round"]
    assert [(e["clients_sampled"], e["clients_reported"]) for e in rounds] == [(4, 3), (4, 4)]
    assert rounds[0]["val_loss"] is not None and rounds[0]["val_loss"] < 100  # no NaN reached the global model


def test_dropout_below_min_clients_stops_at_the_last_checkpoint(tmp_path, small_corpus):
    output = tmp_path / "out"
    result = torchrun(2, [*DROPOUT, "--inject_nan_update", "1:2", "--min_clients", "4",
                          "--data_dir", str(small_corpus), "--output_dir", str(output)], tmp_path / "c")
    assert result.returncode != 0
    assert any("only 3 of 4 sampled clients reported" in line for line in _our_lines(result.stderr))
    assert (output / "round1").exists() and not (output / "round2").exists()
