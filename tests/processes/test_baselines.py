"""The baselines are what they claim, checked on real processes:

- fedbert: the client's gradients equal full back-propagation through the joined model;
- fedbiobert: the client's embedding/encoder gradients are those of the auxiliary loss alone,
  even at a step where the final head's gradient has also arrived;
- fedavg of identical clients with equal weights equals centralized training on one client's data.
"""
import pytest
import torch

from fedbiobert.metrics import read_events
from tests.conftest import SCIVOCAB, copy_head
from tests.support.distributed import run_processes
from tests.support.launch import TINY_MODEL, torchrun
from tests.support.gradient_capture import STEPS, capture_split_gradients
from tests.support.split_setup import HIDDEN


@pytest.mark.parametrize("options", [
    {"algorithm": "fedbert", "num_client_encoder": 0, "num_server_encoder": 2},
    {"algorithm": "fedbert", "num_client_encoder": 0, "num_server_encoder": 2, "server_output": "masked"},
    {"algorithm": "fedbert", "num_client_encoder": 1, "num_server_encoder": 1, "head_placement": "server"},
], ids=["fedbert-0-2-client-head", "fedbert-0-2-client-head-masked-output", "fedbert-1-1-server-head"])
def test_fedbert_client_gradients_equal_full_backprop(tmp_path, small_corpus, options):
    run_processes(capture_split_gradients, 2, options, 0, small_corpus, tmp_path / "cache", tmp_path, timeout=120)
    captured = torch.load(tmp_path / "grads.pt")
    client_grads, reference = captured["grads"], captured["full_backprop"]
    assert any(name.startswith("bert.embeddings") for name in client_grads)
    for name, grad in client_grads.items():
        torch.testing.assert_close(grad, reference[name], msg=name)
    _check_cut_traffic(captured, options)


def _check_cut_traffic(captured, options):
    """Bytes per kind equal the tensors the paper's protocol sends: with the head on the client,
    FedBERT's OUTPUT and its GRAD are the server's last hidden states at every position (B,T,H
    float32: four activation-sized transfers per step); --server_output masked sends M,H rows."""
    batch, seq_len = captured["batch_shape"]
    activation_sized = STEPS * batch * seq_len * HIDDEN * 4
    counted = captured["bytes"]
    assert counted["received_grad"] == activation_sized  # the GRAD at the cut, in every variant
    if options.get("head_placement") == "server":
        assert "received_output" not in counted and "sent_grad" not in counted
        return
    output_bytes = sum(captured["masked_rows"]) * HIDDEN * 4 if options.get("server_output") == "masked" \
        else activation_sized
    assert counted["received_output"] == output_bytes
    assert counted["sent_grad"] == output_bytes  # the client's GRAD has the OUTPUT's shape


@pytest.mark.parametrize("server_output", ["auto", "full"])
def test_fedbiobert_client_updates_are_the_auxiliary_loss_updates(tmp_path, small_corpus, server_output):
    """The trunk's gradient AND its applied update (after clipping, which a small --max_grad_norm
    makes bite) are those of the auxiliary loss alone; the final head steps on its own, once per
    settled OUTPUT (STEPS times a silo, not STEPS - max_inflight + 1)."""
    options = {"algorithm": "fedbiobert", "num_client_encoder": 1, "num_server_encoder": 1, "max_inflight": 1,
               "server_output": server_output, "max_grad_norm": 0.05}
    run_processes(capture_split_gradients, 2, options, 1, small_corpus, tmp_path / "cache", tmp_path, timeout=120)
    captured = torch.load(tmp_path / "grads.pt")
    grads, aux_only = captured["grads"], captured["aux_only"]
    assert not any(name.startswith("cls.") for name in grads)  # the final head is not the trunk's
    assert set(grads) == set(aux_only)
    for name in aux_only:
        torch.testing.assert_close(grads[name], aux_only[name], msg=name)
    expected, applied = captured["expected_update"], captured["applied_update"]
    assert set(expected) == set(applied) and any(name.startswith("bert.embeddings") for name in applied)
    for name in expected:
        torch.testing.assert_close(applied[name], expected[name], msg=name)
    final_steps = captured["final_head_grads"]
    assert len(final_steps) == STEPS  # one final-head step per settled OUTPUT
    for step_grads in final_steps:
        assert step_grads and all(name.startswith("predictions.") for name in step_grads)  # cls.predictions
        assert all(grad.abs().sum() > 0 for grad in step_grads.values())


def test_fedavg_of_identical_clients_equals_centralized(tmp_path):
    twin_a = copy_head("pubmed_hoc_abstracts.txt", tmp_path / "twins" / "a.txt", 150)
    (tmp_path / "twins" / "b.txt").write_bytes(twin_a.read_bytes())
    copy_head("pubmed_hoc_abstracts.txt", tmp_path / "single" / "a.txt", 150)
    common = [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_comm_rounds", "2",
              "--num_batch", "3", "--client_seeds", "shared",
              "--fl_aggregate", "scheme=federated_average,weighting=uniform",
              "--val_ratio", "0", "--num_threads", "1", "--tokenizer", str(SCIVOCAB)]
    cache = tmp_path / "cache"
    # --server_optimizer fedavg: the claim is FedAvg's (McMahan et al.); the default FedAdam steps past it
    fedavg = torchrun(2, [*common, "--algorithm", "fedavg", "--server_optimizer", "fedavg", "--n_clients", "2",
                          "--partition_data", "by_file", "--data_dir", str(tmp_path / "twins"),
                          "--output_dir", str(tmp_path / "fedavg")], cache)
    assert fedavg.returncode == 0, fedavg.stderr[-3000:]
    central = torchrun(1, [*common, "--algorithm", "centralized", "--n_clients", "1",
                           "--data_dir", str(tmp_path / "single"), "--output_dir", str(tmp_path / "central")], cache)
    assert central.returncode == 0, central.stderr[-3000:]

    def losses(output, silo_id):
        return [(e["round"], e["step"], e["global_loss"]) for e in read_events(output)
                if e["event"] == "step" and e["silo_id"] == silo_id]

    reference = losses(tmp_path / "central", 0)
    assert len(reference) == 6
    assert losses(tmp_path / "fedavg", 0) == reference
    assert losses(tmp_path / "fedavg", 1) == reference


def test_fedbiobert_lora_client_trains_adapters_from_the_auxiliary_loss_alone(tmp_path, small_corpus):
    """--lora_rank: the client's gradient is still the auxiliary loss's alone, it reaches only the adapters and
    the auxiliary head, and after the silo's steps the frozen base is bit-identical."""
    options = {"algorithm": "fedbiobert", "num_client_encoder": 1, "num_server_encoder": 1, "max_inflight": 1,
               "lora_rank": 4, "lora_dropout": 0.0}
    run_processes(capture_split_gradients, 2, options, 1, small_corpus, tmp_path / "cache", tmp_path, timeout=120)
    captured = torch.load(tmp_path / "grads.pt")
    grads, aux_only = captured["grads"], captured["aux_only"]
    assert set(grads) == set(aux_only) and grads
    assert all(".lora_" in name or name.startswith("aux_head.") for name in grads)
    assert any(".lora_B." in name for name in grads)
    for name in aux_only:
        torch.testing.assert_close(grads[name], aux_only[name], msg=name)
    before, after = captured["client_before"], captured["client_after"]
    frozen = [key for key in before if ".lora_" not in key and not key.startswith("aux_head.")
              and not key.startswith("cls.")]
    assert any("base_layer" in key for key in frozen) and any("embeddings" in key for key in frozen)
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"{key} moved"
    assert any(not torch.equal(before[key], after[key]) for key in before if ".lora_B." in key)
