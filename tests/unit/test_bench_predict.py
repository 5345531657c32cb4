"""The round-time model of bench/predict.py on hand-computed cases."""
import pytest

from fedbiobert.bench.predict import Setting, check_rows, paper_prediction, round_seconds


def _row(algorithm, client, server, up, down, head="client", model_bytes=0, **fields):
    return {"name": f"{algorithm}-{head}", "algorithm": algorithm, "head_placement": head, "status": "ok",
            "n_clients": 2, "num_batch": 10, "nproc": 2, "num_device": 1, "link": None,
            "baseline": algorithm == "fedbert" and head == "client",
            "per_step": {"client_compute_seconds": client, "server_compute_seconds": server, "bytes_up": up,
                         "bytes_down": down, "model_bytes_up_per_round": model_bytes,
                         "model_bytes_down_per_round": model_bytes}, **fields}


LINK = Setting(bandwidth_mbps=8.0, latency_ms=10.0, steps=10, silos_per_process=1)  # 1 MB/s, 10 ms


def test_fedbert_steps_add_compute_transfers_and_four_latencies():
    row = _row("fedbert", 0.2, 0.3, up=100_000, down=50_000)
    # per step: 0.2 + 0.3 + 0.1 s + 0.05 s + 4 x 0.01 s = 0.69 s; 10 steps; no fill, no model exchange
    assert round_seconds(row, LINK) == pytest.approx(6.9)
    server_head = _row("fedbert", 0.2, 0.3, up=100_000, down=50_000, head="server")
    assert round_seconds(server_head, LINK) == pytest.approx(10 * (0.65 + 0.02))


def test_fedbiobert_steps_take_the_slowest_stage_plus_one_fill():
    row = _row("fedbiobert", 0.2, 0.3, up=100_000, down=50_000)
    assert round_seconds(row, LINK) == pytest.approx(10 * 0.3 + 0.2 + 0.01)
    link_bound = _row("fedbiobert", 0.2, 0.3, up=500_000, down=50_000)  # 0.5 s on the link per step
    assert round_seconds(link_bound, LINK) == pytest.approx(10 * 0.5 + 0.2 + 0.01)


def test_model_exchange_is_one_silos_upload_and_download():
    row = _row("fedbiobert", 0.2, 0.3, up=0, down=0, model_bytes=2_000_000)  # 2 silos: 1 MB each way each
    assert round_seconds(row, LINK) == pytest.approx(10 * 0.3 + 0.21 + (1.0 + 1.0 + 0.02))


def test_the_check_uses_each_runs_own_setting():
    row = _row("fedbiobert", 0.2, 0.3, up=0, down=0, seconds_per_round=6.4)  # 2 silos on 1 client process
    [checked] = check_rows([row])
    assert checked["predicted"] == pytest.approx(2 * (10 * 0.3 + 0.2))
    assert checked["ratio"] == pytest.approx(6.4 / 6.4)


def test_paper_prediction_speedup_is_against_fedbert_in_the_same_link():
    rows = [_row("fedbert", 0.2, 0.3, up=0, down=0), _row("fedbiobert", 0.2, 0.3, up=0, down=0)]
    predictions = paper_prediction(rows, [(8.0, 0.0)], steps=100)
    fedbiobert = [p for p in predictions if p["name"] == "fedbiobert-client"]
    assert fedbiobert[0]["speedup_vs_fedbert"] == pytest.approx(100 * 0.5 / (100 * 0.3 + 0.2))
    assert fedbiobert[1]["compute"].startswith("-> 0")  # no compute, no bytes: both rounds take no time
    assert fedbiobert[1]["round_seconds"] == 0 and len(predictions) == 4


def test_the_transfer_bound_limit_keeps_only_the_link():
    rows = [_row("fedbert", 0.2, 0.3, up=100_000, down=100_000), _row("fedbiobert", 0.2, 0.3, up=100_000, down=10_000)]
    limit = [p for p in paper_prediction(rows, [(8.0, 10.0)], steps=10) if p["compute"].startswith("-> 0")]
    fedbert = 10 * (0.1 + 0.1 + 4 * 0.01)
    fedbiobert = 10 * 0.1 + 0.01  # the slower direction of the link, and one latency of fill
    assert [p["round_seconds"] for p in limit] == [pytest.approx(fedbert), pytest.approx(fedbiobert)]


def test_each_variant_is_compared_with_the_fedbert_of_the_same_training():
    """Full weights and LoRA rows in one call: LoRA FedBioBERT against LoRA FedBERT, like for like."""
    lora = {"rank": 8, "targets": ["query", "value"]}
    rows = [_row("fedbert", 0, 0, up=100_000, down=100_000, model_bytes=8_000_000),
            _row("fedbiobert", 0, 0, up=100_000, down=10_000, model_bytes=8_000_000),
            _row("fedbert", 0, 0, up=100_000, down=100_000, model_bytes=200_000, lora=lora),
            _row("fedbiobert", 0, 0, up=100_000, down=10_000, model_bytes=200_000, lora=lora)]
    predictions = paper_prediction(rows, [(8.0, 0.0)], steps=10)
    by_variant = {(p["variant"], p["name"]): p for p in predictions if p["compute"] == "measured"}
    # full: fedbert 10 x 0.2 + 8 s of exchange (4 MB each way per silo at 1 MB/s) = 10 s; fedbiobert 1 + 8 = 9 s
    assert by_variant[("full weights", "fedbiobert-client")]["speedup_vs_fedbert"] == pytest.approx(10 / 9)
    # LoRA: fedbert 2 + 0.2 = 2.2 s; fedbiobert 1 + 0.2 = 1.2 s
    assert by_variant[("LoRA r8 query,value", "fedbiobert-client")]["speedup_vs_fedbert"] == pytest.approx(2.2 / 1.2)
    assert by_variant[("LoRA r8 query,value", "fedbiobert-client")]["exchange_mb_per_silo"] == pytest.approx(0.2)
