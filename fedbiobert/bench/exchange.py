"""What one silo uploads in a round's model exchange, per algorithm, decoder tying and encoding, at a
preset's model size, from the engine's own encoder (no training: a synthetic round's change).

    python -m fedbiobert.bench.exchange                    # BERT-base shape (the `base` preset)
    python -m fedbiobert.bench.exchange --preset quick

For each client part (fedbiobert at each of the preset's cuts and FedBERT 0-L, head on the client;
fedavg's whole model), tied and untied, it builds the part as a run does, draws a change of every
federated tensor (N(0, 1e-3 x its own std) plus 1e-4 x N(0, 1)), passes it through `ModelExchange.upload`
(roles/exchange.py) and prints the encoded bytes and what the encoding lost. The download of the new
global part has the same size. A run's own counts are in its metrics.jsonl (`exchange` events) and
the benchmark's MB up/round; `bench.predict --paper` takes those.
"""
from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import torch

from fedbiobert.bench.presets import PRESETS
from fedbiobert.constants import EXCHANGE_DTYPES


def client_part(preset, algorithm: str, cut: int, tied: bool):
    """The federated state of a silo's part and its keys: the algorithm's own split and key choice, as
    ClientProcess makes them (an Algorithm reads only `session.config` for these)."""
    from fedbiobert.algorithms import algorithm_class
    from fedbiobert.config import Config
    from fedbiobert.model import ModelSpec, build_full_model, tie_decoder, unique_state
    spec = ModelSpec(arch="bert", vocab_size=preset.vocab_size, hidden_size=preset.hidden_size,
                     num_attention_heads=preset.num_attention_heads, intermediate_size=preset.intermediate_size,
                     num_layers=preset.num_layers, max_len=preset.max_len, pad_token_id=0)
    model = build_full_model(spec, seed=0)
    if tied:
        tie_decoder(model)
    config = Config(algorithm=algorithm, num_client_encoder=cut, num_server_encoder=preset.num_layers - cut)
    rules = algorithm_class(algorithm)(SimpleNamespace(config=config))
    client, _ = rules.split(model)
    return unique_state(client), rules.federated_client_keys(client)


def measure(state: dict, keys: list[str], dtype: str) -> tuple[int, float | None]:
    from fedbiobert.roles.exchange import ModelExchange
    generator = torch.Generator().manual_seed(0)
    trained = {}
    for key in keys:
        value = state[key].float()
        scale = 1e-3 * float(value.std()) if value.numel() > 1 else 0.0
        trained[key] = value + (scale + 1e-4) * torch.randn(value.shape, generator=generator)
    upload = ModelExchange(dtype, True, keys, state).upload(0, trained, state)
    return upload.nbytes, upload.relative_error


def rows(preset_name: str, cuts: tuple[int, ...] | None = None) -> list[dict]:
    """Every part x tying x encoding; fedbiobert at `cuts` (default: the preset's cuts)."""
    preset = PRESETS[preset_name]
    parts = [("fedbiobert", cut) for cut in cuts or preset.fedbiobert_cuts]
    parts += [("fedbert", 0), ("fedavg", preset.num_layers)]  # fedavg: the whole model on the client
    results = []
    for algorithm, cut in parts:
        for tied in (False, True):
            state, keys = client_part(preset, algorithm, cut, tied)
            for dtype in EXCHANGE_DTYPES:
                nbytes, error = measure(state, keys, dtype)
                results.append({"part": f"{algorithm}-{cut}-{preset.num_layers - cut}" if algorithm != "fedavg"
                                else "fedavg (whole model)", "tied": tied, "dtype": dtype, "mb": nbytes / 1e6,
                                "relative_error": error})
    return results


def markdown(results: list[dict]) -> str:
    lines = ["| client part | decoders | " + " | ".join(f"{dtype} MB" for dtype in EXCHANGE_DTYPES) + " | int8 error |",
             "|---|---|" + "---|" * (len(EXCHANGE_DTYPES) + 1)]
    for part in dict.fromkeys(result["part"] for result in results):
        for tied in (False, True):
            cells = {r["dtype"]: r for r in results if r["part"] == part and r["tied"] == tied}
            sizes = " | ".join(f"{cells[dtype]['mb']:.1f}" for dtype in EXCHANGE_DTYPES)
            lines.append(f"| {part} | {'tied' if tied else 'untied'} | {sizes} | "
                         f"{cells['int8']['relative_error']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedbiobert.bench.exchange", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", choices=sorted(PRESETS), help="model size (default base)")
    args = parser.parse_args(argv)
    print(markdown(rows(args.preset)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
