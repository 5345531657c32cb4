"""fedbert with --server_schedule sequential: client processes take turns with one shared server.
A process waiting for its turn (or for the others' turns to end) is not waiting on a dead peer: the
run must survive turns far longer than --comm_timeout, and still notice a dead server."""
import json

from tests.launch import TINY_MODEL, torchrun

COMM_TIMEOUT = 3


def test_turns_longer_than_comm_timeout_do_not_time_out(tmp_path, small_corpus):
    args = [*TINY_MODEL, "--algorithm", "fedbert", "--server_schedule", "sequential", "--num_client_encoder", "1",
            "--num_server_encoder", "1", "--n_clients", "2", "--n_comm_rounds", "2", "--num_batch", "250",
            "--comm_timeout", str(COMM_TIMEOUT), "--num_threads", "1", "--data_dir", str(small_corpus),
            "--output_dir", str(tmp_path / "out")]
    result = torchrun(3, args, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    # the second process waited for the whole first turn: longer than --comm_timeout, or the test shows nothing
    first_turn = [r["time_breakdown"]["client"]["max_elapsed"] for r in summary["rounds"]]
    assert all(seconds > 2 * COMM_TIMEOUT for seconds in first_turn), first_turn
