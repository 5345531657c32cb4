"""Predicted round time and speed-up from a benchmark's measured per-step stage times and bytes.

    python -m fedbiobert.bench.predict bench-quick/results.json          # check the model on measured runs
    python -m fedbiobert.bench.predict bench-base/results.json --paper   # and predict the paper's setting
    python -m fedbiobert.bench.predict bench-base/results.json bench-base-lora/results.json --paper
                                        # full weights and LoRA (--lora_rank), each against its own FedBERT

The model (every input is a measured figure of results.json's `per_step`, except the setting's own
numbers: link bandwidth and latency, steps, silos; --paper also shows the limit where compute takes no
time, which bounds what faster hardware, e.g. the paper's GPUs, can make of the same bytes):

    transfer(n bytes) = n / bandwidth
    FedBERT, every step waits for the server's gradient:
        step = client + server + transfer(up) + transfer(down) + crossings x latency
        (crossings per step: 4 with the head on the client, ACTIVATION, OUTPUT, GRAD, GRAD; 2 with it
        on the server)
    FedBioBERT, client and server overlap (the client waits for nothing with the head on the server,
    and runs --max_inflight batches ahead with it on the client):
        step = max(client, server, transfer(up), transfer(down))
        fill = min(client, server) + latency             (each silo's first batch crosses both stages)
    round = silos per client process x (steps x step + fill) + model exchange
    model exchange = transfer(upload) + transfer(download) + 2 x latency, once per round (every silo has
        its own link, so the silos of a round upload in parallel); the bytes are those the run's silos
        actually sent and received, encoded as its --exchange_dtype and --tie_decoders made them
        (docs/model-exchange.md), so FedBERT and FedBioBERT measured with the same options compare like
        for like

Variants: runs trained with --lora_rank (the results row's `lora`) exchange only their adapters and heads
at the round's end; their per-step split traffic is the full model's (the activations do not shrink).
Each variant is compared like for like: FedBioBERT with LoRA against FedBERT with the same LoRA options.

Every silo of a round trains on its own client process with a server process of its own in the
paper's setting (1 server with 4 GPUs, 10 clients, participation 0.4: 4 silos, 4 server processes),
so the round is one silo's; in the benchmark's setting a client process trains its silos in turn.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    bandwidth_mbps: float | None  # None: no link (transfers take no time)
    latency_ms: float
    steps: int                    # batches per silo per round
    silos_per_process: int
    compute_scale: float = 1.0    # 1: the measured stage times; 0: the transfer-bound limit (compute -> 0)

    def transfer(self, nbytes: float) -> float:
        return nbytes * 8 / (self.bandwidth_mbps * 1e6) if self.bandwidth_mbps else 0.0

    @property
    def latency(self) -> float:
        return self.latency_ms / 1000 if self.bandwidth_mbps else 0.0


def step_seconds(row: dict, setting: Setting) -> tuple[float, float]:
    """(seconds per step, pipeline fill per silo) of a run's algorithm in `setting`."""
    step = row["per_step"]
    client = step["client_compute_seconds"] * setting.compute_scale
    server = (step["server_compute_seconds"] or 0.0) * setting.compute_scale
    up, down = setting.transfer(step["bytes_up"]), setting.transfer(step["bytes_down"])
    if row["algorithm"] == "fedbiobert":
        return max(client, server, up, down), min(client, server) + setting.latency
    if row["algorithm"] == "fedbert":
        crossings = 4 if row.get("head_placement", "client") == "client" else 2
        return client + server + up + down + crossings * setting.latency, 0.0
    return client, 0.0  # full-model algorithms: no server stage


def round_seconds(row: dict, setting: Setting) -> float:
    step, fill = step_seconds(row, setting)
    per_silo_exchange = _exchange_bytes(row)
    exchange = setting.transfer(per_silo_exchange) + 2 * setting.latency if per_silo_exchange else 0.0
    return setting.silos_per_process * (setting.steps * step + fill) + exchange


def measured_setting(row: dict) -> Setting:
    """The setting a benchmark run was measured in."""
    link = row.get("link") or {}
    client_processes = row["nproc"] - row["num_device"]
    silos_per_process = -(-row["n_clients"] // client_processes)  # the busiest process's silos (ceiling)
    return Setting(link.get("bandwidth_mbps"), link.get("latency_ms", 0.0), row["num_batch"], silos_per_process)


def check_rows(rows: list[dict]) -> list[dict]:
    """The model against every measured run that has per-step figures: predicted / measured s/round."""
    checked = []
    for row in rows:
        if row.get("status") != "ok" or not row.get("per_step") or not row.get("seconds_per_round"):
            continue
        predicted = round_seconds(row, measured_setting(row))
        checked.append({"name": row["name"], "variant": variant(row), "measured": row["seconds_per_round"],
                        "predicted": predicted, "ratio": predicted / row["seconds_per_round"]})
    return checked


def variant(row: dict) -> str:
    """What a run trained: every weight, or LoRA adapters (with its rank and targets)."""
    lora = row.get("lora")
    return f"LoRA r{lora['rank']} {','.join(lora['targets'])}" if lora else "full weights"


def paper_prediction(rows: list[dict], links: list[tuple[float, float]], steps: int) -> list[dict]:
    """fedbiobert (each cut measured) and FedBERT 0-L in the paper's setting, per link and per variant
    (full weights, LoRA), each against the FedBERT 0-L of its own variant."""
    measured = [row for row in rows if row.get("status") == "ok" and row.get("per_step")]
    predictions = []
    for name in dict.fromkeys(variant(row) for row in measured):
        predictions += _variant_prediction([row for row in measured if variant(row) == name], links, steps, name)
    return predictions


def _variant_prediction(measured: list[dict], links, steps: int, variant_name: str) -> list[dict]:
    baseline = next((row for row in measured if row.get("baseline")), None)
    if baseline is None:
        raise SystemExit("python -m fedbiobert.bench.predict: error: --paper needs a measured fedbert-0-L run "
                         f"of every variant in the results ({variant_name} has none; e.g. --only "
                         "'fedbiobert-6-6,fedbert-0-12')")
    predictions = []
    for bandwidth, latency in links:
        for compute_scale in (1.0, 0.0):  # this machine's stage times, and the limit of infinitely fast compute
            setting = Setting(bandwidth, latency, steps, silos_per_process=1, compute_scale=compute_scale)
            base_seconds = round_seconds(baseline, setting)
            for row in measured:
                if row["algorithm"] not in ("fedbiobert", "fedbert"):
                    continue
                seconds = round_seconds(row, setting)
                predictions.append({"name": row["name"], "variant": variant_name, "bandwidth_mbps": bandwidth,
                                    "latency_ms": latency,
                                    "compute": "measured" if compute_scale else "-> 0 (transfer-bound limit)",
                                    "round_seconds": seconds,
                                    "exchange_mb_per_silo": _exchange_bytes(row) / 1e6,
                                    "speedup_vs_fedbert": base_seconds / seconds if seconds else None})
    return predictions


def _exchange_bytes(row: dict) -> float:
    """A silo's model exchange in a round (upload and download), as measured."""
    step = row["per_step"]
    return (step["model_bytes_up_per_round"] + step["model_bytes_down_per_round"]) / max(1, row["n_clients"])


def markdown(checked: list[dict], predictions: list[dict], steps: int) -> str:
    lines = ["Model check (measured runs): predicted / measured seconds per round", "",
             "| run | measured s/round | predicted | predicted / measured |", "|---|---|---|---|"]
    lines += [f"| {c['name']} ({c['variant']}) | {c['measured']:.2f} | {c['predicted']:.2f} | {c['ratio']:.2f} |"
              for c in checked]
    if predictions:
        lines += ["", f"Paper's setting (4 silos a round, each with its own client machine and server GPU process, "
                  f"{steps} steps per silo), with this machine's measured per-step stage times:", "",
                  "| run | trains | link | compute | exchange MB/silo | predicted s/round | "
                  "speed-up vs FedBERT 0-L (same training) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['name']} | {p['variant']} | {p['bandwidth_mbps']:g} Mbit/s, {p['latency_ms']:g} ms | "
                  f"{p['compute']} | {p['exchange_mb_per_silo']:.1f} | {p['round_seconds']:.1f} | "
                  f"{_ratio(p['speedup_vs_fedbert'])} |" for p in predictions]
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"python -m fedbiobert.bench.predict: error: '{path}' is not a file "
                         "(accepted: the results.json a benchmark wrote)")
    rows = json.loads(path.read_text(encoding="utf-8"))
    return rows["rows"] if isinstance(rows, dict) else rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedbiobert.bench.predict", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="one or more benchmarks' results.json (e.g. one "
                        "with full weights and one with --run_flags '--init_from DIR --lora_rank 8')")
    parser.add_argument("--paper", action="store_true", help="predict the paper's setting too")
    parser.add_argument("--steps", type=int, default=100, help="--paper: batches per silo per round (default 100)")
    parser.add_argument("--latency_ms", type=float, default=5.0, help="--paper: one-way link latency (default 5)")
    args = parser.parse_args(argv)
    rows = [row for path in args.results for row in _read_rows(path)]
    links = [(100.0, args.latency_ms), (10_000.0, args.latency_ms)]
    predictions = paper_prediction(rows, links, args.steps) if args.paper else []
    print(markdown(check_rows(rows), predictions, args.steps), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
