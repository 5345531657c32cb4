"""Every loss of a few fixed-seed runs, exactly, as JSON: proof that a refactor changed no behaviour.

    .venv/bin/python scripts/loss_fingerprint.py > before.json   # on the old commit
    .venv/bin/python scripts/loss_fingerprint.py > after.json    # on the new one
    diff before.json after.json                                   # empty: same losses bit for bit
    .venv/bin/python scripts/loss_fingerprint.py --exchange_dtype fp32 > old-way.json  # flags for every run

Each run is deterministic: one server and one client process (silos trained in turn, so arrival order
is fixed), the tiny model of the tests, the shared SciVocab vocabulary, a slice of ../shared/data/pretrain.
Losses are printed with `float.hex` (every bit), beside the sha256 of the last round's exported weights.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import SCIVOCAB, SMALL_CORPUS, slice_corpus  # noqa: E402
from tests.support.launch import TINY_MODEL, torchrun  # noqa: E402

# A fixed vocabulary: a tokenizer trained on the corpus is not bit-reproducible (parallel merges tie).
COMMON = [*TINY_MODEL, "--n_comm_rounds", "2", "--num_batch", "4", "--lr", "2e-3", "--manual_seed", "7",
          "--tokenizer", str(SCIVOCAB)]
SPLIT = ["--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "2"]
RUNS = {
    "fedbiobert-client-head": (2, [*SPLIT]),
    "fedbiobert-server-head": (2, [*SPLIT, "--head_placement", "server"]),
    "fedbert": (2, [*SPLIT, "--algorithm", "fedbert"]),
    "fedavg": (1, ["--algorithm", "fedavg", "--num_client_encoder", "1", "--num_server_encoder", "1",
                   "--n_clients", "2"]),
    "centralized": (1, ["--algorithm", "centralized", "--num_client_encoder", "1", "--num_server_encoder", "1"]),
}
LOSS_KEYS = ("global_loss", "local_loss", "val_loss")


def exported_weights_sha256(output_dir: Path) -> str:
    last = max((p for p in output_dir.glob("round*") if p.is_dir()), key=lambda p: int(p.name[5:]))
    weights = next(last.glob("*.safetensors"), None) or next(last.glob("*.bin"))
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def fingerprint(name: str, nproc: int, extra: list[str], corpus: Path, work: Path) -> dict:
    output = work / name
    result = torchrun(nproc, [*COMMON, *extra, "--data_dir", str(corpus), "--output_dir", str(output)],
                      work / "cache", timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    rounds = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    rounds = [event for event in rounds if event["event"] == "round"]
    losses = [{key: float(event[key]).hex() for key in LOSS_KEYS if event.get(key) is not None}
              for event in rounds]
    return {"rounds": losses, "export_sha256": exported_weights_sha256(output)}


def main(flags: list[str]) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        corpus = slice_corpus(work / "corpus", SMALL_CORPUS)
        results = {}
        for name, (nproc, extra) in RUNS.items():
            print(f"{name} ...", file=sys.stderr, flush=True)
            results[name] = fingerprint(name, nproc, [*extra, *flags], corpus, work)
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
