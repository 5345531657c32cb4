"""The memory benchmark's verdict on hand-made measurements (bench/memory.py)."""
import argparse

from fedbiobert.bench.memory import CASES, Case, case_spec, compare, markdown


def _measured(client_mb, server_mb, steps):
    return {"steps": steps, "status": "ok", "seconds_per_step": 1.0,
            "memory": {"client": {"peak_rss_mb": client_mb}, "server": {"peak_rss_mb": server_mb}}}


def test_growth_is_the_ratio_of_peaks_and_the_target_is_ten_percent():
    case = Case("x", "fedbiobert")
    within = compare(case, _measured(1000, 2000, 5), _measured(1099, 2000, 20))
    assert within["growth"] == {"client": 1.099, "server": 1.0} and within["meets_target"] is True
    beyond = compare(case, _measured(1000, 2000, 5), _measured(1000, 2201, 20))
    assert beyond["meets_target"] is False


def test_a_failed_run_has_no_verdict_and_the_table_says_so():
    row = compare(Case("x", "fedbert"), {"steps": 5, "status": "failed", "error": "boom"}, _measured(1, 1, 20))
    assert row["meets_target"] is None
    args = argparse.Namespace(steps=5, layers=1, hidden_size=64, max_len=32, batch_size=2)
    text = markdown([row], args, {"device": "cpu", "processor": "p", "torch": "t"})
    assert "failed: boom" in text


def test_every_case_runs_one_silo_on_one_server_and_one_client_process():
    args = argparse.Namespace(steps=5, layers=2, hidden_size=512, max_len=256, batch_size=16)
    for case in CASES:
        spec = case_spec(case, args, 20)
        assert (spec.nproc, spec.num_device, spec.n_clients, spec.num_batch) == (2, 1, 1, 20)
        flags = spec.flags()
        assert flags[flags.index("--hidden_size") + 1] == "512" and flags[flags.index("--n_comm_rounds") + 1] == "1"
