"""What a server keeps for later GRADs: exact either way (kept graph or recomputed forward), bounded
per client process, and what a run keeps does not grow with the steps of a round."""
import copy
import json
import types

import pytest
import torch

from fedbiobert.algorithms import REGISTRY
from fedbiobert.config import Config
from fedbiobert.comm.messages import Kind, Message
from fedbiobert.model import ModelSpec, build_full_model, keep_forward, split_model
from fedbiobert.optim import Schedule
from tests.conftest import copy_head
from tests.support.launch import TINY_MODEL, torchrun

SPEC = ModelSpec("bert", vocab_size=200, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_layers=3,
                 max_len=16, pad_token_id=0)


def _server_part():
    _, server = split_model(build_full_model(SPEC, seed=0), 1, "client")
    server.train()  # dropout on: the recomputation must replay the same masks
    return server


def _late_backward_schedule(recompute: bool):
    """Forward batch 0 and keep it, step on batch 1 (in-place update), then back-propagate batch 0:
    the server's schedule in client-head mode. Returns (sent output, grads of batch 0, weights, RNG)."""
    torch.manual_seed(3)
    server = _server_part()
    optimizer = torch.optim.AdamW(server.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(5)
    hidden = [torch.randn(2, 16, 32, generator=generator) for _ in range(2)]
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    positions = torch.tensor([1, 4, 17, 20])

    def compute(call, index=0):
        return call(hidden[index], mask).reshape(-1, 32)[positions]

    kept = keep_forward(server, compute, recompute)
    sent = kept.output.detach().clone()
    compute(server, index=1).square().mean().backward()  # another batch steps in between
    optimizer.step()
    optimizer.zero_grad()
    kept.backward(torch.linspace(-1, 1, sent.numel()).view_as(sent))
    grads = {name: param.grad.clone() for name, param in server.named_parameters() if param.grad is not None}
    return sent, grads, copy.deepcopy(server.state_dict()), torch.get_rng_state()


def test_recomputed_forward_gives_the_kept_graphs_output_and_gradients():
    kept_sent, kept_grads, kept_weights, kept_rng = _late_backward_schedule(recompute=False)
    sent, grads, weights, rng = _late_backward_schedule(recompute=True)
    assert torch.equal(sent, kept_sent)
    assert kept_grads.keys() == grads.keys() and len(grads) > 10
    for name in kept_grads:
        torch.testing.assert_close(grads[name], kept_grads[name], rtol=1e-6, atol=1e-7, msg=name)
    for name in kept_weights:
        assert torch.equal(weights[name], kept_weights[name]), name
    assert torch.equal(rng, kept_rng)  # the replay leaves the RNG stream where the kept graph does


def test_recomputing_with_other_dropout_masks_would_differ():
    """The check above can fail: a replay that does not restore the RNG state gives other gradients."""
    torch.manual_seed(3)
    server = _server_part()
    hidden, mask = torch.randn(2, 16, 32), torch.ones(2, 16, dtype=torch.long)
    kept = keep_forward(server, lambda call: call(hidden, mask), recompute=True)
    kept.rng_state = (torch.get_rng_state(), None)  # a later state: other dropout masks
    kept.backward(torch.ones(2, 16, 32))
    recomputed = {name: param.grad.clone() for name, param in server.named_parameters() if param.grad is not None}
    server.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    server = _server_part()
    graph = keep_forward(server, lambda call: call(hidden, mask), recompute=False)
    graph.backward(torch.ones(2, 16, 32))
    assert any(not torch.allclose(param.grad, recomputed[name]) for name, param in server.named_parameters()
               if param.grad is not None)


def _server_trainer(algorithm: str, max_inflight: int):
    config = Config(algorithm=algorithm, num_client_encoder=1, num_server_encoder=2, max_inflight=max_inflight)
    session = types.SimpleNamespace(config=config, schedule=Schedule(10, 0.0, 1e-3, 0.0))
    return REGISTRY[algorithm](session).server_trainer(_server_part(), channel=None, round_idx=0)


@pytest.mark.parametrize("algorithm,limit", [("fedbiobert", 3), ("fedbert", 1)])
def test_a_server_keeps_at_most_its_limit_of_batches_per_client_process(algorithm, limit):
    trainer = _server_trainer(algorithm, max_inflight=2)
    for step in range(limit):
        trainer.keep_for_grad(Message(Kind.ACTIVATION, step=step, source=1), object())
        trainer.keep_for_grad(Message(Kind.ACTIVATION, step=step, source=2), object())  # another process
    with pytest.raises(RuntimeError, match=f"rank 1 has {limit} batches awaiting their GRAD.*most allowed is {limit}"):
        trainer.keep_for_grad(Message(Kind.ACTIVATION, step=limit, source=1), object())
    assert trainer.peak_kept == 2 * limit


def _round_memory(tmp_path, name: str, num_batch: int, extra: list[str]) -> dict:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        copy_head("pubmed_hoc_abstracts.txt", corpus / "hoc.txt", 150)
    out = tmp_path / name
    result = torchrun(2, [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "1",
                          "--n_comm_rounds", "1", "--num_batch", str(num_batch), "--max_inflight", "2",
                          "--val_blocks", "4", "--data_dir", str(corpus), "--output_dir", str(out), *extra],
                      tmp_path / "cache", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(event for event in rounds if event["event"] == "round")["memory"]


@pytest.mark.parametrize("extra", [[], pytest.param(["--server_recompute", "True"], marks=pytest.mark.slow)],
                         ids=["kept-graph", "recompute"])  # recomputation's exactness: the unit tests above
def test_what_a_run_keeps_does_not_grow_with_the_steps_of_a_round(tmp_path, extra):
    """60 steps of one silo, head on the client, --max_inflight 2: the server keeps at most
    max_inflight + 1 = 3 batches for their GRADs, and the channels' pending sends stay within a few
    messages, where keeping every send until the round's end would hold all 60 steps' tensors (the
    client sends 4 payload tensors a step: an ACTIVATION's 3 and a GRAD). The channel bound has
    slack: a delivered send is released at the next send or receive after its completion is seen."""
    memory = _round_memory(tmp_path, "run", 60, extra)
    for role in ("client", "server"):
        assert memory[role]["channel_peak_tensors"] <= 8 * 3, (role, memory)  # 8 ACTIVATIONs' worth; 240 unreleased
    assert 1 <= memory["server"]["kept_for_grad_peak"] <= 3
