"""bench/exchange.py: sizes from the engine's own encoder, checked against hand-counted parameters."""
from fedbiobert.bench.exchange import markdown, rows


def test_tiny_preset_sizes_match_the_parameter_count():
    results = {(r["part"], r["tied"], r["dtype"]): r for r in rows("tiny", cuts=(2,))}
    # tiny: vocab 1500, hidden 32. Tying removes the decoder matrix and its unused bias copy.
    untied = results[("fedbert-0-4", False, "fp32")]["mb"] * 1e6
    tied = results[("fedbert-0-4", True, "fp32")]["mb"] * 1e6
    assert untied - tied == 4 * (1500 * 32 + 1500)
    # int8: one byte an element plus one fp32 scale a row, about a quarter of fp32
    assert 0.25 < results[("fedbert-0-4", True, "int8")]["mb"] / results[("fedbert-0-4", True, "fp32")]["mb"] < 0.35
    assert results[("fedbert-0-4", True, "bf16")]["mb"] * 2 == results[("fedbert-0-4", True, "fp32")]["mb"]
    # fedbiobert's part holds the embeddings, its layers and both heads: more than fedbert's
    assert results[("fedbiobert-2-2", True, "int8")]["mb"] > results[("fedbert-0-4", True, "int8")]["mb"]
    assert 0 < results[("fedbert-0-4", True, "int8")]["relative_error"] < 0.02
    assert "| fedavg (whole model) | tied |" in markdown(list(results.values()))
