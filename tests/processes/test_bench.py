"""The benchmark harness: matrix construction, link parsing, speedups, the markdown table, and one
tiny real `python -m fedbiobert.bench` invocation of two fedbiobert runs."""
import dataclasses
import json
import subprocess
import sys

import pytest

from fedbiobert.bench.__main__ import main
from fedbiobert.bench.predict import check_rows
from fedbiobert.bench.matrix import BenchError, Link, algorithm_kinds, build_matrix, check_nproc, parse_links, select
from fedbiobert.bench.presets import PRESETS
from fedbiobert.bench.report import markdown_table, results_markdown
from fedbiobert.bench.results import add_speedups, merge_repeats, seconds_per_round, steady_tokens_per_second
from fedbiobert.config import Config, parse_config, validate_static, validate_world
from tests.support.launch import REPO

QUICK = PRESETS["quick"]
LINK = Link(100.0, 5.0)


def _quick_matrix(links=(None, LINK), nproc=3, fedbert_schedule="sequential"):
    return build_matrix(QUICK, list(links), nproc, algorithm_kinds(fedbert_schedule))


@pytest.mark.parametrize("preset", ["tiny", "quick", "cpu", "gpu"])
def test_every_run_of_a_preset_has_the_same_token_budget(preset):
    specs = build_matrix(PRESETS[preset], [None, LINK], 3)
    p = PRESETS[preset]
    assert {spec.tokens_per_round for spec in specs} == {p.n_clients * p.num_batch * p.batch_size * p.max_len}
    assert len({spec.name for spec in specs}) == len(specs)
    for spec in specs:  # every run shares the model shape, rounds and participation 1.0
        assert spec.model_flags[:len(p.model_flags())] == tuple(p.model_flags())
        assert spec.num_client_encoder + spec.num_server_encoder == p.num_layers


def test_quick_matrix_entries_names_and_links():
    specs = _quick_matrix()
    assert [spec.name for spec in specs] == [
        "fedbert-0-4", "fedbert-0-4@100mbit-5ms", "fedbert-0-4-parallel", "fedbert-0-4-parallel@100mbit-5ms",
        "fedbert-0-4-masked", "fedbert-0-4-masked@100mbit-5ms", "fedbert-0-4-serverhead",
        "fedbert-0-4-serverhead@100mbit-5ms", "fedbert-2-2", "fedbert-2-2@100mbit-5ms",
        "fedbiobert-2-2", "fedbiobert-2-2@100mbit-5ms",
        "fedbiobert-2-2-serverhead", "fedbiobert-2-2-serverhead@100mbit-5ms", "fedavg", "fedavg@100mbit-5ms",
        "centralized"]
    by_name = {spec.name: spec for spec in specs}
    assert by_name["fedbert-0-4"].is_baseline and not by_name["fedbert-2-2"].is_baseline
    assert not by_name["fedbert-0-4-parallel"].is_baseline
    assert by_name["fedbert-0-4-masked"].is_masked_baseline and not by_name["fedbert-0-4-masked"].is_baseline
    assert by_name["fedbert-0-4-masked"].flags()[-2:] == ["--server_output", "masked"]
    assert "--server_output" not in by_name["fedbert-0-4"].flags()  # the paper's FedBERT (full output)
    processes = {name: (spec.nproc, spec.num_device) for name, spec in by_name.items()}
    assert processes["fedbiobert-2-2"] == (3, 1)     # 1 server + 2 client processes
    assert processes["fedbert-0-4"] == (3, 1)        # one shared server: the same processes as fedbiobert
    assert processes["fedbert-0-4-parallel"] == (4, 2)  # a server replica per client process
    assert processes["fedavg"] == (3, 0)
    assert "--head_placement" in by_name["fedbiobert-2-2-serverhead"].flags()
    assert by_name["fedbiobert-2-2-serverhead"].head_placement == "server"
    assert by_name["fedbert-0-4-serverhead"].is_serverhead_baseline
    assert by_name["fedbert-0-4-serverhead"].head_placement == "server" and by_name["fedbert-0-4"].head_placement \
        == "client"
    central = by_name["centralized"]
    assert (central.nproc, central.n_clients, central.num_batch, central.num_device) == (1, 1, 40, 0)
    assert by_name["fedavg"].n_clients == 4 and by_name["fedavg"].num_batch == 10


def test_with_one_client_process_the_parallel_fedbert_is_not_run_twice():
    names = [spec.entry for spec in _quick_matrix(links=(None,), nproc=2)]
    assert "fedbert-0-4-parallel" not in names and "fedbert-0-4" in names and "fedbert-0-4-masked" in names


def test_fedbert_parallel_schedule_gives_a_replica_per_client_process():
    by_name = {spec.name: spec for spec in _quick_matrix(fedbert_schedule="parallel")}
    assert (by_name["fedbert-0-4"].nproc, by_name["fedbert-0-4"].num_device) == (4, 2)
    assert "parallel" in by_name["fedbert-0-4"].flags()
    with pytest.raises(BenchError, match="'turns'"):
        algorithm_kinds("turns")


def test_run_flags_name_the_algorithm_cut_and_link():
    by_name = {spec.name: spec for spec in _quick_matrix()}
    flags = by_name["fedbert-0-4@100mbit-5ms"].flags()
    assert flags[:6] == ["--algorithm", "fedbert", "--num_client_encoder", "0", "--num_server_encoder", "4"]
    assert flags[-4:] == ["--wan_bandwidth_mbps", "100", "--wan_latency_ms", "5"]
    assert "--wan_bandwidth_mbps" not in by_name["fedbert-0-4"].flags()
    assert by_name["fedavg@100mbit-5ms"].flags()[-4:] == flags[-4:]
    assert "--wan_bandwidth_mbps" not in by_name["centralized"].flags()


@pytest.mark.parametrize("fedbert_schedule", ["parallel", "sequential"])
def test_every_run_is_a_valid_run_py_launch_with_the_budget(fedbert_schedule):
    """Each run's flags pass run.py's own parser and checks for the world it is launched with."""
    known = {f.name for f in dataclasses.fields(Config)}
    choices = Config.__dataclass_fields__["algorithm"].metadata["choices"]
    checked = 0
    for spec in _quick_matrix(fedbert_schedule=fedbert_schedule):
        if spec.algorithm not in choices or (spec.link is not None and "wan_bandwidth_mbps" not in known):
            continue  # the engine does not have this algorithm or link emulation yet
        config = parse_config(spec.flags() + ["--output_dir", "unused"])
        validate_static(config)
        validate_world(config, spec.nproc, spec.nproc, cuda_available=False)
        assert config.n_clients * config.num_batch * config.batch_size * config.max_len == spec.tokens_per_round
        assert config.participation_ratio == 1.0 and config.n_comm_rounds == QUICK.n_comm_rounds
        checked += 1
    assert checked >= 6


def test_parse_links():
    assert parse_links("none,100:5") == [None, LINK]
    assert parse_links(" NONE , 0.5:40 ") == [None, Link(0.5, 40.0)]


@pytest.mark.parametrize("text, named", [
    ("100", "'100'"), ("fast", "'fast'"), ("100:x", "'100:x'"), ("0:5", "'0:5'"), ("-1:5", "'-1:5'"),
    ("100:-1", "'100:-1'"), ("nan:5", "'nan:5'"), ("none,", "''"), ("none,none", "'none' twice"),
])
def test_bad_links_are_refused_naming_the_item(text, named):
    with pytest.raises(BenchError, match=named):
        parse_links(text)


def test_select_by_entry_full_name_and_glob():
    specs = _quick_matrix()
    assert [s.name for s in select(specs, "fedbiobert-2-2")] == ["fedbiobert-2-2", "fedbiobert-2-2@100mbit-5ms"]
    assert [s.name for s in select(specs, "fedbert-0-4@100mbit-5ms,centralized")] == [
        "fedbert-0-4@100mbit-5ms", "centralized"]
    assert len(select(specs, "fedbiobert-*")) == 4
    with pytest.raises(BenchError, match="'fedbiobert-9-9' matches no run"):
        select(specs, "fedbiobert-2-2,fedbiobert-9-9")


def test_nproc_bounds():
    check_nproc(2, QUICK)
    for bad in (1, QUICK.n_clients + 1):
        with pytest.raises(BenchError, match=f"--nproc {bad} is outside"):
            check_nproc(bad, QUICK)


def test_seconds_per_round_is_the_median_after_the_warm_up_round():
    rounds = [{"round_seconds": 30.0, "tokens": 100}, {"round_seconds": 2.0, "tokens": 100},
              {"round_seconds": 9.0, "tokens": 100}, {"round_seconds": 3.0, "tokens": 100}]
    assert seconds_per_round(rounds) == 3.0
    assert steady_tokens_per_second(rounds) == pytest.approx(300 / 14.0)
    assert seconds_per_round(rounds[:1]) == 30.0
    assert seconds_per_round([]) is None


def _row(name, algorithm, k, seconds, link=None, status="ok", **extra):
    row = {"name": name, "entry": name.split("@")[0], "algorithm": algorithm, "num_client_encoder": k,
           "num_server_encoder": 4 - k, "link": link, "status": status, "seconds_per_round": seconds,
           "tokens_per_second": 1000.0, "bytes_up_per_round": 2_500_000.0, "bytes_down_per_round": None,
           "final_global_loss": 7.25, "val_perplexity": 1234.5, "speedup_vs_fedbert": None,
           "tokens_per_round_budget": 16384, "error": None, "log": f"logs/{name}.log",
           "baseline": name.split("@")[0] == "fedbert-0-4",
           "masked_baseline": name.split("@")[0] == "fedbert-0-4-masked",
           "serverhead_baseline": name.split("@")[0] == "fedbert-0-4-serverhead",
           "head_placement": "server" if "serverhead" in name else "client"}
    return {**row, **extra}


def _hand_made_rows():
    wan = {"bandwidth_mbps": 100.0, "latency_ms": 5.0}
    return [_row("fedbert-0-4", "fedbert", 0, 8.0), _row("fedbert-0-4@100mbit-5ms", "fedbert", 0, 12.0, wan),
            _row("fedbiobert-2-2", "fedbiobert", 2, 2.0), _row("fedbiobert-2-2@100mbit-5ms", "fedbiobert", 2, 3.0, wan),
            _row("fedavg", "fedavg", 4, 4.0), _row("fedbert-0-4-parallel", "fedbert", 0, 16.0),
            _row("fedbert-0-4-masked", "fedbert", 0, 6.0),
            _row("centralized", "centralized", 4, None, status="failed", error="exit status 2: boom")]


def test_speedup_is_fedbert_0_l_seconds_per_round_with_the_same_link_over_this_runs():
    rows = add_speedups(_hand_made_rows())
    speedups = {row["name"]: row["speedup_vs_fedbert"] for row in rows}
    assert speedups == {"fedbert-0-4": 1.0, "fedbert-0-4@100mbit-5ms": 1.0, "fedbiobert-2-2": 4.0,
                        "fedbiobert-2-2@100mbit-5ms": 4.0, "fedavg": 2.0, "fedbert-0-4-parallel": 0.5,
                        "fedbert-0-4-masked": 8.0 / 6.0, "centralized": None}
    against_masked = {row["name"]: row["speedup_vs_fedbert_masked"] for row in rows}
    assert against_masked["fedbiobert-2-2"] == 3.0 and against_masked["fedbert-0-4-masked"] == 1.0
    assert against_masked["fedbiobert-2-2@100mbit-5ms"] is None  # no masked baseline ran with that link


def _timed(seconds, val_losses, client, server, busiest, val_se=0.01, **extra):
    """Rounds whose steady ones have the given stage compute, and a validation curve."""
    curve = [{"round": r + 1, "train_seconds": seconds * (r + 1), "val_loss": loss}
             for r, loss in enumerate(val_losses)]
    return {"stage_compute": {"client": client, "server": server, "busiest": busiest}, "curve": curve,
            "val_loss": val_losses[-1], "val_loss_se": val_se, **extra}


def test_like_for_like_link_overhead_bound_target_and_quality_hand_computed():
    wan = {"bandwidth_mbps": 100.0, "latency_ms": 5.0}
    rows = [
        _row("fedbert-0-4", "fedbert", 0, 8.0, **_timed(8.0, [7.0, 6.0], 1.0, 6.0, 6.0)),
        _row("fedbert-0-4@100mbit-5ms", "fedbert", 0, 16.0, wan, **_timed(16.0, [7.0, 6.0], 1.0, 6.0, 6.0)),
        _row("fedbert-0-4-serverhead", "fedbert", 0, 6.0, **_timed(6.0, [6.5, 5.9], 0.5, 5.0, 5.0)),
        _row("fedbiobert-2-2", "fedbiobert", 2, 4.0, **_timed(4.0, [6.8, 6.1, 5.95], 3.0, 2.0, 3.5, val_se=0.03)),
        _row("fedbiobert-2-2-serverhead", "fedbiobert", 2, 3.0, **_timed(3.0, [6.5, 6.3], 2.0, 2.5, 2.75)),
        _row("fedbiobert-2-2-serverhead@100mbit-5ms", "fedbiobert", 2, 4.5, wan,
             **_timed(4.5, [6.5, 6.3], 2.0, 2.5, 2.75)),
    ]
    by_name = {row["name"]: row for row in add_speedups(rows)}
    head_server = by_name["fedbiobert-2-2-serverhead"]
    assert head_server["speedup_vs_fedbert"] == 8.0 / 3.0  # against the published FedBERT
    assert head_server["speedup_like_for_like"] == 2.0  # 6.0 / 3.0: FedBERT with its head on the server too
    assert head_server["like_for_like_baseline"] == "fedbert-0-4-serverhead"
    assert head_server["stage_bound"] == 6.0 / 2.75  # the baseline's s/round / this run's busiest stage
    assert head_server["bound_fraction"] == pytest.approx(2.75 / 3.0)  # busiest stage / this run's s/round
    assert head_server["serial_stage_bound"] == (0.5 + 5.0) / 2.75  # the earlier form: FedBERT's serial compute
    assert by_name["fedbiobert-2-2"]["speedup_like_for_like"] == 2.0  # 8.0 / 4.0
    assert by_name["fedbiobert-2-2"]["stage_bound"] == 8.0 / 3.5
    assert by_name["fedbiobert-2-2"]["bound_fraction"] == pytest.approx(3.5 / 4.0)
    assert by_name["fedbiobert-2-2"]["serial_stage_bound"] == 7.0 / 3.5
    assert by_name["fedbiobert-2-2-serverhead@100mbit-5ms"]["link_overhead"] == 1.5  # 4.5 / 3.0
    assert by_name["fedbert-0-4@100mbit-5ms"]["link_overhead"] == 2.0
    assert by_name["fedbert-0-4"]["link_overhead"] is None and by_name["fedbert-0-4"]["stage_bound"] is None
    # time to the published FedBERT's final validation loss (6.0), at the first round end at or below it
    assert by_name["fedbiobert-2-2"]["target_val_loss"] == 6.0
    assert by_name["fedbiobert-2-2"]["seconds_to_target"] == 12.0  # round 3 (5.95), 3 x 4.0 s
    assert by_name["fedbert-0-4-serverhead"]["seconds_to_target"] == 12.0  # round 2 (5.9)
    assert by_name["fedbiobert-2-2-serverhead"]["reached_target"] is False
    assert by_name["fedbiobert-2-2-serverhead"]["seconds_to_target"] is None
    # quality: 6.3 vs 5.9 with SE 0.01 each is beyond noise; 5.95 (SE 0.03) vs 6.0 (SE 0.01) is within it:
    # 0.05 < 1.96 x sqrt(0.03^2 + 0.01^2) = 0.062
    assert head_server["val_loss_vs_baseline"] == pytest.approx(0.4) and head_server["val_loss_differs"] is True
    assert by_name["fedbiobert-2-2"]["val_loss_differs"] is False
    table = markdown_table(list(by_name.values()))
    assert "| never |" in table and "6.300 ± 0.010 | +0.400 (beyond noise)" in table


def test_repeated_passes_merge_into_medians_and_a_failed_pass_fails_the_run():
    passes = [_row("fedbiobert-2-2", "fedbiobert", 2, seconds, tokens_per_second=tokens)
              for seconds, tokens in ((2.0, 900.0), (5.0, 1000.0), (3.0, 1100.0))]
    merged = merge_repeats(passes)
    assert (merged["seconds_per_round"], merged["tokens_per_second"], merged["passes"]) == (3.0, 1000.0, 3)
    assert merged["seconds_per_round_passes"] == [2.0, 5.0, 3.0]
    assert merge_repeats(passes[:1]) is passes[0]
    broken = merge_repeats(passes[:2] + [_row("fedbiobert-2-2", "fedbiobert", 2, None, status="failed",
                                              error="exit status 1: boom")])
    assert broken["status"] == "failed" and broken["error"] == "exit status 1: boom"
    machine = {"device": "cpu", "processor": "test cpu", "cpu_count": 2, "platform": "test", "python": "3",
               "torch": "2", "git_commit": "abc"}
    assert "--repeat 3" in results_markdown(add_speedups([merged]), machine, QUICK, "bench")


def test_no_speedup_without_a_successful_baseline():
    rows = _hand_made_rows()
    rows[0]["status"] = "failed"
    speedups = {row["name"]: row["speedup_vs_fedbert"] for row in add_speedups(rows)}
    assert speedups["fedbiobert-2-2"] is None and speedups["fedavg"] is None
    assert speedups["fedbiobert-2-2@100mbit-5ms"] == 4.0


def test_markdown_table_of_hand_made_rows():
    rows = add_speedups(_hand_made_rows())
    lines = markdown_table(rows).splitlines()
    assert lines[0].startswith("| run | link | s/round | tokens/s | speedup vs FedBERT (paper) | like for like | "
                               "vs 0-L masked | link overhead | of stage bound | s to target | MB up/round |")
    assert len(lines) == 2 + len(rows)
    assert lines[4] == ("| fedbiobert-2-2 | none | 2.00 | 1,000 | 4.00x | 4.00x | 3.00x | - | - | - | 2.50 | - "
                        "| - | - | ok |")
    assert lines[5] == ("| fedbiobert-2-2@100mbit-5ms | 100 Mbit/s, 5 ms | 3.00 | 1,000 | 4.00x | 4.00x | - | 1.50x "
                        "| - | - | 2.50 | - | - | - | ok |")
    assert lines[-1].startswith("| centralized | none | - | 1,000 | - |") and lines[-1].endswith("| failed |")
    machine = {"device": "cpu", "processor": "test cpu", "cpu_count": 2, "platform": "test", "python": "3",
               "torch": "2", "git_commit": "abc"}
    text = results_markdown(rows, machine, QUICK, "python -m fedbiobert.bench --quick --out x")
    assert "`python -m fedbiobert.bench --quick --out x`" in text and "preset `quick`" in text
    assert "median wall time of the rounds after the first" in text
    assert "`centralized`: exit status 2: boom" in text


def test_bad_option_exits_2_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    for argv, named in ((["--links", "none,100:x"], "'100:x'"), (["--only", "nope"], "'nope'"),
                        (["--preset", "huge"], "'huge'"), (["--nproc", "7"], "--nproc 7"),
                        (["--quick", "--preset", "gpu"], "gpu and quick"), (["--repeat", "0"], "--repeat 0"),
                        (["--data_dir", str(tmp_path / "missing")], "missing")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", str(out), *argv])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and named in error, error
    assert not out.exists()


def test_tiny_benchmark_end_to_end(tmp_path, small_corpus):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "fedbiobert.bench", "--tiny", "--out", str(out), "--nproc", "2",
               "--only", "fedbiobert-1-3,fedbiobert-3-1", "--repeat", "2", "--data_dir", str(small_corpus),
               "--cache_dir", str(tmp_path / "cache")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "[pass 1/2, 1/2] fedbiobert-1-3" in result.stdout
    assert "[pass 2/2, 2/2] fedbiobert-3-1" in result.stdout
    rows = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in rows] == ["fedbiobert-1-3", "fedbiobert-3-1"]
    for row in rows:
        assert row["status"] == "ok" and row["rounds"] == 2 and row["link"] is None
        assert row["seconds_per_round"] > 0 and row["tokens_per_second"] > 0 and row["val_perplexity"] > 1
        assert row["bytes_up_per_round"] > 0 and row["speedup_vs_fedbert"] is None
        assert row["passes"] == 2 and len(row["seconds_per_round_passes"]) == 2
        assert (out / "logs" / f"{row['name']}.log").is_file() and (out / "logs" / f"{row['name']}.r2.log").is_file()
        assert not list((out / "runs" / row["name"]).glob("round[0-9]*"))  # model exports pruned
        assert row["per_step"]["client_compute_seconds"] > 0 and row["per_step"]["bytes_up"] > 0
        assert row["memory"]["server"]["peak_rss_mb"] > 0 and row["memory"]["client"]["peak_rss_mb"] > 0
        assert row["memory"]["server"]["kept_for_grad_peak"] >= 1  # head on the client: graphs kept for GRADs
    checked = check_rows(rows)  # the round-time model runs on what the benchmark wrote
    assert [entry["name"] for entry in checked] == ["fedbiobert-1-3", "fedbiobert-3-1"]
    assert all(entry["predicted"] > 0 for entry in checked)
    assert json.loads((out / "machine.json").read_text())["preset"] == "tiny"
    assert "| fedbiobert-3-1 | none |" in (out / "results.md").read_text()
    assert (out / "loss_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
