"""Tests of fedbiobert.model.split: the cut equals the unsplit model, joins back, routes gradients."""

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForMaskedLM

from fedbiobert.model import (
    ModelSpec,
    build_config,
    build_full_model,
    build_joined_model,
    load_joined_state,
    client_state_keys,
    gather_masked,
    join_state_dicts,
    masked_positions,
    masked_targets,
    mlm_loss,
    output_embedding_key,
    split_model,
    tie_decoder,
    unique_state,
)

SEED = 1234
NUM_LAYERS = 4
VOCAB_SIZE = 100
HIDDEN_SIZE = 32
MAX_LEN = 16
PAD_TOKEN_IDS = {"bert": 0, "roberta": 1}
ARCH_AND_ATTN = [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"), ("roberta", "eager")]
# (row, position) pairs that carry an MLM label; every one is a real (non-pad) token.
MASKED_CELLS = [(0, 1), (0, 7), (0, 15), (1, 0), (1, 9), (2, 2)]
REAL_LENGTHS = (MAX_LEN, 10, 3)  # row 0 unpadded, rows 1 and 2 end in padding


def small_config(arch: str, attn_implementation: str = "sdpa"):
    spec = ModelSpec(arch=arch, vocab_size=VOCAB_SIZE, hidden_size=HIDDEN_SIZE, num_attention_heads=2,
                     intermediate_size=64, num_layers=NUM_LAYERS, max_len=MAX_LEN,
                     pad_token_id=PAD_TOKEN_IDS[arch])
    return build_config(spec, attn_implementation)


def twin_models(arch: str, attn_implementation: str = "sdpa"):
    """Two identical full models: one to cut, one kept whole as the reference."""
    config = small_config(arch, attn_implementation)
    return config, build_full_model(config, seed=SEED).eval(), build_full_model(config, seed=SEED).eval()


def padded_batch(arch: str) -> dict:
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(3, VOCAB_SIZE, (len(REAL_LENGTHS), MAX_LEN), generator=generator)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(REAL_LENGTHS):
        attention_mask[row, :length] = 1
    input_ids[attention_mask == 0] = PAD_TOKEN_IDS[arch]
    labels = torch.full_like(input_ids, -100)
    for row, position in MASKED_CELLS:
        labels[row, position] = input_ids[row, position]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def split_final_logits(client, server, batch) -> torch.Tensor:
    hidden = server(client(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
    at_masked = gather_masked(hidden, masked_positions(batch["labels"]))
    owner = client if client.has_final_head else server
    return owner.final_logits(at_masked)


def reference_logits(model, batch, attention_mask=None) -> torch.Tensor:
    mask = batch["attention_mask"] if attention_mask is None else attention_mask
    logits = model(input_ids=batch["input_ids"], attention_mask=mask).logits
    return logits.reshape(-1, logits.shape[-1])[masked_positions(batch["labels"])]


def perturb_(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("arch,attn", ARCH_AND_ATTN)
@pytest.mark.parametrize("cut", [0, 2, NUM_LAYERS])
@pytest.mark.parametrize("head_placement", ["client", "server"])
def test_split_forward_equals_unsplit_model(arch, attn, cut, head_placement):
    _, full, reference = twin_models(arch, attn)
    batch = padded_batch(arch)
    client, server = split_model(full, cut, head_placement)
    assert (client.num_layers, server.num_layers) == (cut, NUM_LAYERS - cut)
    assert client.has_final_head == (head_placement == "client") != server.has_final_head
    with torch.no_grad():
        assert_close(split_final_logits(client, server, batch), reference_logits(reference, batch))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_batch_padding_actually_changes_the_logits(arch):
    """Guards the equality test: its batch must be one where a wrong mask would show."""
    _, _, reference = twin_models(arch)
    batch = padded_batch(arch)
    with torch.no_grad():
        masked = reference_logits(reference, batch)
        unmasked = reference_logits(reference, batch, torch.ones_like(batch["attention_mask"]))
    assert not torch.allclose(masked, unmasked)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("head_placement", ["client", "server"])
def test_state_keys_partition_the_full_model_and_keep_hf_names(arch, head_placement):
    _, full, reference = twin_models(arch)
    client, server = split_model(full, 2, head_placement)
    client_keys = {key for key in client.state_dict() if not key.startswith("aux_head.")}
    server_keys = set(server.state_dict())
    assert not client_keys & server_keys
    assert client_keys | server_keys == set(reference.state_dict())
    assert f"{arch}.encoder.layer.3.attention.self.query.weight" in server_keys
    assert f"{arch}.encoder.layer.1.attention.self.query.weight" in client_keys
    assert any(key.startswith("aux_head.") for key in client.state_dict())


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("head_placement", ["client", "server"])
def test_joined_model_equals_split_and_survives_save_pretrained(arch, head_placement, tmp_path):
    config, full, _ = twin_models(arch)
    batch = padded_batch(arch)
    client, server = split_model(full, 2, head_placement)
    generator = torch.Generator().manual_seed(3)
    perturb_(client, generator)  # "training": the join must carry the new values, not the init
    perturb_(server, generator)
    rng_before = torch.random.get_rng_state()
    joined = build_joined_model(config, client.state_dict(), server.state_dict())
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    joined.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path, local_files_only=True).eval()
    with torch.no_grad():
        expected = split_final_logits(client, server, batch)
        assert_close(reference_logits(joined, batch), expected)
        assert_close(reference_logits(reloaded, batch), expected)
    assert reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight
    assert reloaded.config.tie_word_embeddings is False


def test_a_reused_joined_model_carries_exactly_the_new_round_weights():
    config, full, _ = twin_models("bert")
    batch = padded_batch("bert")
    client, server = split_model(full, 2, "client")
    joined = build_joined_model(config, client.state_dict(), server.state_dict())  # "round 1"
    generator = torch.Generator().manual_seed(4)
    perturb_(client, generator)  # "round 2" moved every weight
    perturb_(server, generator)
    reused = load_joined_state(joined, client.state_dict(), server.state_dict())
    fresh = build_joined_model(config, client.state_dict(), server.state_dict())
    assert reused is joined
    for (name, value), (_, expected) in zip(reused.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(value, expected), name
    with torch.no_grad():
        assert_close(reference_logits(reused, batch), split_final_logits(client, server, batch))


def test_join_rejects_overlap_and_build_rejects_missing_keys():
    config, full, _ = twin_models("bert")
    client, server = split_model(full, 2, "client")
    client_state, server_state = client.state_dict(), server.state_dict()
    with pytest.raises(ValueError, match="overlap"):
        join_state_dicts(client_state, {**server_state, "bert.embeddings.LayerNorm.bias": torch.zeros(1)})
    server_state.pop("bert.encoder.layer.3.output.dense.bias")
    with pytest.raises(ValueError, match="bert.encoder.layer.3.output.dense.bias"):
        build_joined_model(config, client_state, server_state)
    assert not any(key.startswith("aux_head.") for key in join_state_dicts(client.state_dict(), {}))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_aux_decoder_is_word_embedding_and_final_decoder_is_not(arch):
    _, full, _ = twin_models(arch)
    final_decoder = full.get_output_embeddings()
    client, _ = split_model(full, 2, "client")
    word_embedding = client.embeddings.word_embeddings.weight
    assert client.aux_head.decoder.weight is word_embedding
    assert final_decoder.weight is not word_embedding
    assert_close(final_decoder.weight, word_embedding)  # tied *init*, separate tensor
    assert client.aux_head.decoder.bias is not final_decoder.bias


def aux_loss(client, batch) -> torch.Tensor:
    positions = masked_positions(batch["labels"])
    hidden = client(batch["input_ids"], batch["attention_mask"])
    logits = client.aux_logits(gather_masked(hidden, positions))
    return mlm_loss(logits, masked_targets(batch["labels"], positions))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_aux_loss_reaches_embeddings_and_client_layers_only(arch):
    _, full, _ = twin_models(arch)
    client, _ = split_model(full, 2, "client")
    aux_loss(client, padded_batch(arch)).backward()
    # every embedding table, not only the word embeddings (which the tied aux decoder reaches anyway)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in client.embeddings.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in client.layers.parameters())
    assert all(p.grad is None for p in client.final_head.parameters())


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_client_final_head_loss_on_detached_server_output_leaves_client_trunk_alone(arch):
    _, full, _ = twin_models(arch)
    batch = padded_batch(arch)
    client, server = split_model(full, 2, "client")
    cut_hidden = client(batch["input_ids"], batch["attention_mask"]).detach()
    server_output = server(cut_hidden, batch["attention_mask"])
    received = server_output.detach().requires_grad_(True)  # what the client gets over the wire
    positions = masked_positions(batch["labels"])
    logits = client.final_logits(gather_masked(received, positions))
    mlm_loss(logits, masked_targets(batch["labels"], positions)).backward()
    trunk = [client.embeddings, client.layers, client.aux_head]
    assert all(p.grad is None for module in trunk for p in module.parameters())
    assert full.get_output_embeddings().weight.grad.abs().sum() > 0
    assert received.grad is not None and received.grad.abs().sum() > 0  # sent back to the server


def test_server_head_loss_reaches_server_layers_and_its_input():
    _, full, _ = twin_models("bert")
    batch = padded_batch("bert")
    client, server = split_model(full, 2, "server")
    received = client(batch["input_ids"], batch["attention_mask"]).detach().requires_grad_(True)
    positions = masked_positions(batch["labels"])
    logits = server.final_logits(gather_masked(server(received, batch["attention_mask"]), positions))
    mlm_loss(logits, masked_targets(batch["labels"], positions)).backward()
    assert all(p.grad is not None for p in server.layers.parameters())
    assert received.grad.abs().sum() > 0
    assert all(p.grad is None for p in client.parameters())


def test_client_state_keys_without_embeddings_and_heads_are_encoder_layers_only():
    _, full, _ = twin_models("bert")
    client, _ = split_model(full, 2, "client")
    shared_keys = client_state_keys(client, include_embedding_and_heads=False)
    assert shared_keys and all(".encoder.layer." in key for key in shared_keys)
    assert set(shared_keys) == {f"bert.encoder.layer.{name}" for name in client.layers.state_dict()}
    all_keys = client_state_keys(client, include_embedding_and_heads=True)
    assert "bert.embeddings.word_embeddings.weight" in all_keys
    assert "aux_head.dense.weight" in all_keys and "cls.predictions.decoder.weight" in all_keys
    assert "aux_head.decoder.weight" not in all_keys  # alias of the word embeddings: averaged once
    assert set(shared_keys) < set(all_keys)


def test_client_state_keys_for_embeddings_only_client_is_empty():
    _, full, _ = twin_models("roberta")
    client, _ = split_model(full, 0, "client")
    assert client_state_keys(client, include_embedding_and_heads=False) == []


@pytest.mark.parametrize("bad_arguments,message", [
    ((2, "middle"), "head_placement 'middle'"),
    ((NUM_LAYERS + 1, "client"), f"num_client_layers {NUM_LAYERS + 1}"),
    ((-1, "server"), "num_client_layers -1"),
])
def test_split_model_rejects_bad_arguments(bad_arguments, message):
    _, full, _ = twin_models("bert")
    with pytest.raises(ValueError, match=message):
        split_model(full, *bad_arguments)


def test_final_logits_without_final_head_raises():
    _, full, _ = twin_models("bert")
    client, _ = split_model(full, 2, "server")
    with pytest.raises(ValueError, match="final head"):
        client.final_logits(torch.zeros(1, HIDDEN_SIZE))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_tied_decoders_one_matrix_exchanged_and_export_loads_tied(arch, tmp_path):
    config, full, _ = twin_models(arch)
    tie_decoder(full)
    assert config.tie_word_embeddings is False  # the caller's config is left alone
    client, server = split_model(full, 2, "client")
    embedding = client.embeddings.word_embeddings.weight
    final_decoder = client.final_head.predictions.decoder if arch == "bert" else client.final_head.decoder
    assert final_decoder.weight is embedding and client.aux_head.decoder.weight is embedding
    state = unique_state(client)
    decoder_key = output_embedding_key(full)
    assert decoder_key not in state and f"{'bert' if arch == 'bert' else 'roberta'}.embeddings.word_embeddings.weight" \
        in state
    untied_client, _ = split_model(build_full_model(config, seed=SEED), 2, "client")
    vocabulary_matrix = VOCAB_SIZE * HIDDEN_SIZE
    assert sum(v.numel() for v in unique_state(untied_client).values()) - sum(v.numel() for v in state.values()) \
        == vocabulary_matrix + VOCAB_SIZE  # one vocabulary matrix (and the unused bias copy) fewer to exchange
    perturb_(client, torch.Generator().manual_seed(3))
    joined = build_joined_model(config, state, server.state_dict())
    assert joined.get_output_embeddings().weight is joined.get_input_embeddings().weight
    joined.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    head = reloaded.cls.predictions if arch == "bert" else reloaded.lm_head
    assert head.bias is head.decoder.bias  # HF ties the bias pair too only when the saved values agree
    batch = padded_batch(arch)
    with torch.no_grad():
        expected = split_final_logits(client.eval(), server.eval(), batch)
        assert_close(reference_logits(joined, batch), expected)
        assert_close(reference_logits(reloaded, batch), expected)
