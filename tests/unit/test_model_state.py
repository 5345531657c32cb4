"""Round-tripping a client part through its state dict keeps tied weights right (a regression test:
a stale copy of the aliased `aux_head.decoder.weight` once overwrote the averaged embeddings)."""
import torch

from fedbiobert.model import (ModelSpec, aliased_keys, build_config, build_full_model, load_unique_state, split_model,
                              unique_state)


def test_loading_a_unique_state_sets_the_tied_embeddings():
    spec = ModelSpec("bert", 100, 32, 2, 64, 2, 16, 0)
    client, _ = split_model(build_full_model(build_config(spec), seed=0), 1, "client")
    assert aliased_keys(client) == {"aux_head.decoder.weight"}
    state = unique_state(client)
    assert "aux_head.decoder.weight" not in state
    new_embeddings = torch.randn_like(state["bert.embeddings.word_embeddings.weight"])
    load_unique_state(client, {**state, "bert.embeddings.word_embeddings.weight": new_embeddings})
    torch.testing.assert_close(client.bert.embeddings.word_embeddings.weight.detach(), new_embeddings)
    torch.testing.assert_close(client.aux_head.decoder.weight.detach(), new_embeddings)
