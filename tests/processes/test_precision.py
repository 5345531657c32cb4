"""--precision: forwards run under autocast on every part, master weights stay fp32, the fp16 loss
scaler scales, unscales and tells its routine overflow skips from failures, and bf16 runs end to end
(real torchrun processes) with loss curves within a few % of fp32's.

fp16 is refused on CPU for runs (config), but torch's CPU autocast and GradScaler do support fp16,
so the scaler's logic is checked here on the CPU; what only a GPU shows (speed) is not.
"""
import copy
import math

import pytest
import torch

from fedbiobert.algorithms.base import Stepper
from fedbiobert.metrics import read_events
from fedbiobert.model import (ModelSpec, build_full_model, gather_masked, keep_forward, masked_positions, mlm_loss,
                              split_model)
from fedbiobert.optim import Schedule
from fedbiobert.precision import autocast, compute_dtype, grad_scaler
from tests.support.launch import TINY_MODEL, torchrun
from tests.support.split_setup import build_split

SCHEDULE = Schedule(10, 0.0, 1e-2, 1e-2)
SERVER_SPEC = ModelSpec("bert", vocab_size=200, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                        num_layers=3, max_len=16, pad_token_id=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _record_output_dtypes(modules) -> list[torch.dtype]:
    seen = []
    for module in modules:
        module.register_forward_hook(lambda _module, _inputs, output: seen.append(output.dtype))
    return seen


def _linears(part):
    return [module for module in part.modules() if isinstance(module, torch.nn.Linear)]


def test_helper_is_a_no_op_for_fp32_and_autocasts_otherwise():
    layer = torch.nn.Linear(4, 4)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(precision, layer):
            assert layer(torch.randn(2, 4)).dtype == dtype
    assert compute_dtype("fp32") is None and grad_scaler("bf16", layer) is None
    assert isinstance(grad_scaler("fp16", "cpu"), torch.amp.GradScaler)


def test_bf16_split_parts_forward_in_bf16_with_fp32_weights_and_loss(small_corpus, cache_dir):
    """The client part (trunk and auxiliary head) and the server part run their matmuls in bf16 under
    the helper; the loss is fp32; a bf16 Stepper (no scaler) steps the fp32 weights."""
    _, client, server, batches, _ = build_split(small_corpus, cache_dir, 1, precision="bf16")
    batch = batches[0]
    seen = _record_output_dtypes(_linears(client) + _linears(server))
    positions = masked_positions(batch.labels)
    with autocast("bf16", client):
        hidden = client(batch.input_ids, batch.attention_mask)
        aux_loss = mlm_loss(client.aux_logits(gather_masked(hidden, positions)), batch.labels.reshape(-1)[positions])
        server_out = server(hidden.detach().float(), batch.attention_mask)
    assert seen and set(seen) == {torch.bfloat16}
    assert aux_loss.dtype == torch.float32 and server_out.requires_grad  # the linears above ran in bf16
    stepper = Stepper(client, SCHEDULE, 0.01, 1.0, skip=client.final_head, precision="bf16")
    assert stepper.scaler is None
    before = client.aux_head.dense.weight.detach().clone()
    stepper.backward(aux_loss)
    assert stepper.step(0)
    assert not torch.equal(before, client.aux_head.dense.weight)
    assert all(param.dtype == torch.float32 for param in [*client.parameters(), *server.parameters()])


def test_bf16_full_model_trainer_steps_under_autocast(small_corpus, cache_dir):
    """fedavg's (and centralized's) trainer: one real step, its forward in bf16, its weights fp32."""
    algorithm, model, _, batches, _ = build_split(small_corpus, cache_dir, 1, algorithm="fedavg", precision="bf16")
    trainer = algorithm.client_trainer(model, None, None, silo_id=0, round_idx=0)
    seen = _record_output_dtypes(_linears(model))
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    result = trainer.step(batches[0], 0)
    assert seen and set(seen) == {torch.bfloat16}
    assert math.isfinite(result.global_loss) and trainer.skipped_steps == 0
    changed = [name for name, param in model.named_parameters() if not torch.equal(before[name], param)]
    assert any(name.startswith("bert.encoder.") for name in changed)
    assert all(param.dtype == torch.float32 for param in model.parameters())


def _fp16_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))


def _fp16_forward(net, gain: float = 1e-3):
    with autocast("fp16", net):
        output = net(torch.randn(5, 4, generator=torch.Generator().manual_seed(1)))
    return (output.float() * gain).sum()


def test_fp16_stepper_scales_the_backward_and_unscales_before_clipping():
    net, reference = _fp16_net(), _fp16_net()
    _fp16_forward(reference).backward()
    stepper = Stepper(net, SCHEDULE, 0.0, 0.0, precision="fp16")
    scale = stepper.scaler.get_scale()
    seen = {}
    stepper.before_step.append(lambda module: seen.update({n: p.grad.clone() for n, p in module.named_parameters()}))
    stepper.backward(_fp16_forward(net))
    first_weight = net[0].weight
    torch.testing.assert_close(stepper.unscaled(first_weight.grad), reference[0].weight.grad)
    torch.testing.assert_close(first_weight.grad / scale, reference[0].weight.grad)  # the backward was scaled
    assert stepper.step(0) and stepper.skipped_steps == stepper.scaler_skips == 0
    for name, param in reference.named_parameters():
        torch.testing.assert_close(seen[name], param.grad, msg=name)  # hooks and clipping see true gradients


def test_fp16_overflow_skips_are_routine_but_nan_losses_and_exhausted_scales_are_failures():
    net = _fp16_net()
    stepper = Stepper(net, SCHEDULE, 0.0, 1.0, precision="fp16")
    before = net[0].weight.detach().clone()
    # d loss / d output is 1e3: scaled by 65536 it overflows fp16 (max 65504); unscaled it would not
    # (the default gain, 1e-3 as from a mean over some thousand masked positions, does not overflow).
    stepper.backward(_fp16_forward(net, gain=1e3))
    assert not stepper.step(0)
    assert (stepper.scaler_skips, stepper.skipped_steps) == (1, 0) and stepper.scaler.get_scale() == 32768
    assert torch.equal(before, net[0].weight)  # the skipped step left the weights alone
    stepper.backward(_fp16_forward(net) * math.nan)  # the loss itself is NaN: --on_nonfinite's business
    assert not stepper.step(1)
    assert (stepper.scaler_skips, stepper.skipped_steps) == (1, 1)
    stepper.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    stepper.backward(_fp16_forward(net, gain=1e5))  # overflows fp16 even unscaled: the run has diverged
    assert not stepper.step(2)
    assert (stepper.scaler_skips, stepper.skipped_steps) == (1, 2)
    stepper.backward(_fp16_forward(net))
    assert stepper.step(3) and not torch.equal(before, net[0].weight)


@pytest.mark.parametrize("recompute", [False, True], ids=["kept-graph", "recompute"])
def test_bf16_server_late_backward_uses_the_forward_time_weights(recompute):
    """The fedbiobert server's schedule in client-head mode, its forward under bf16 autocast: keep batch 0
    (graph with stashed weights, or --server_recompute), step on batch 1, then back-propagate batch 0.
    The gradients are those of batch 0's backward right after its forward, in the same precision."""
    _, server = split_model(build_full_model(SERVER_SPEC, seed=0), 1, "client")
    server.eval()  # no dropout: the immediate and the late backward see the same forward
    reference = copy.deepcopy(server)
    generator = torch.Generator().manual_seed(5)
    hidden = [torch.randn(2, 16, 32, generator=generator) for _ in range(2)]
    mask = torch.ones(2, 16, dtype=torch.long)
    grad = torch.linspace(-1, 1, 4 * 32).view(4, 32)

    def compute(call, index=0):
        with autocast("bf16", server):
            return call(hidden[index], mask).reshape(-1, 32)[torch.tensor([1, 4, 17, 20])]

    compute(reference).backward(grad)
    seen = _record_output_dtypes(_linears(server))
    kept = keep_forward(server, compute, recompute)
    assert seen and set(seen) == {torch.bfloat16}  # the kept forward ran its matmuls in bf16
    optimizer = torch.optim.AdamW(server.parameters(), lr=0.05)
    compute(server, index=1).float().square().mean().backward()  # another batch steps in between
    optimizer.step()
    optimizer.zero_grad()
    kept.backward(grad)
    for (name, param), (_, expected) in zip(server.named_parameters(), reference.named_parameters()):
        assert param.dtype == param.grad.dtype == torch.float32
        torch.testing.assert_close(param.grad, expected.grad, msg=name)


# --- end to end: real torchrun processes ---------------------------------------------------------------
RUN = [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "2",
       "--n_comm_rounds", "2", "--num_batch", "3", "--lr", "2e-3", "--warmup_ratio", "0", "--val_blocks", "16",
       "--num_threads", "1"]


def _run(tmp_path, cache_dir, corpus, name: str, nproc: int, extra: list[str]) -> list[dict]:
    output = tmp_path / name
    result = torchrun(nproc, [*RUN, "--data_dir", str(corpus), "--output_dir", str(output), *extra], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(output)
    assert [event["round"] for event in events if event["event"] == "round"] == [1, 2]
    return events


def _round_losses(events) -> list[float]:
    keys = ("local_loss", "global_loss", "val_loss")
    return [event[key] for event in events if event["event"] == "round" for key in keys if event[key] is not None]


def test_bf16_fedbiobert_tracks_fp32(tmp_path, small_corpus, cache_dir):
    """Same seed, same data: every round's local, global and validation loss in bf16 within 2% of fp32's,
    and not bit-identical (the bf16 forwards did run)."""
    fp32 = _run(tmp_path, cache_dir, small_corpus, "fp32", 2, ["--precision", "fp32"])
    bf16 = _run(tmp_path, cache_dir, small_corpus, "bf16", 2, ["--precision", "bf16"])
    reference, mixed = _round_losses(fp32), _round_losses(bf16)
    assert len(reference) == len(mixed) == 6
    for expected, got in zip(reference, mixed):
        assert got == pytest.approx(expected, rel=0.02)
    step_losses = [[event["global_loss"] for event in events if event["event"] == "step" and event["global_loss"]]
                   for events in (fp32, bf16)]
    assert step_losses[0] != step_losses[1]


@pytest.mark.parametrize("nproc, extra", [
    (2, ["--algorithm", "fedbert"]),
    pytest.param(2, ["--head_placement", "server"], marks=pytest.mark.slow),
    (1, ["--algorithm", "fedavg"]),
    (1, ["--algorithm", "centralized", "--n_clients", "1"]),
], ids=["fedbert", "fedbiobert-server-head", "fedavg", "centralized"])
def test_bf16_runs_every_algorithm(tmp_path, small_corpus, cache_dir, nproc, extra):
    events = _run(tmp_path, cache_dir, small_corpus, "run", nproc, ["--precision", "bf16", *extra])
    losses = _round_losses(events)
    assert losses and all(math.isfinite(loss) for loss in losses)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_mixed_precision_tracks_fp32(tmp_path, small_corpus, cache_dir, precision):
    """On GPUs, one per process: fp16 with its loss scaler, and bf16, within 2% of fp32 (TF32)."""
    if torch.cuda.device_count() < 2:  # seen on a 1-GPU H200: the run refuses 2 NCCL ranks on one GPU, rightly
        pytest.skip(f"runs 2 processes, one GPU each (NCCL refuses two ranks of a group on one GPU), but this "
                    f"machine has {torch.cuda.device_count()} GPU(s)")
    cuda = ["--on_cuda", "True"]
    fp32 = _run(tmp_path, cache_dir, small_corpus, "fp32", 2, [*cuda, "--precision", "fp32"])
    mixed = _run(tmp_path, cache_dir, small_corpus, precision, 2, [*cuda, "--precision", precision])
    for expected, got in zip(_round_losses(fp32), _round_losses(mixed)):
        assert got == pytest.approx(expected, rel=0.02)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-12))


@pytest.mark.slow
@pytest.mark.parametrize("head_placement", ["client", "server"])
def test_fp16_fedbert_client_gradients_match_full_backprop(tmp_path, small_corpus, head_placement):
    """fp16 (CPU autocast and scaler, as on a GPU): the gradients at the cut cross the wire unscaled and
    are scaled again by the receiver, so the client's true (unscaled) gradients are full back-propagation's
    within fp16's error: a gradient left scaled on either side would be off by the scale (65536x)."""
    from tests.support.distributed import run_processes
    from tests.support.gradient_capture import capture_split_gradients
    options = {"algorithm": "fedbert", "num_client_encoder": 1, "num_server_encoder": 1,
               "head_placement": head_placement, "precision": "fp16"}
    run_processes(capture_split_gradients, 2, options, 0, small_corpus, tmp_path / "cache", tmp_path, timeout=180)
    captured = torch.load(tmp_path / "grads.pt")
    grads, reference = captured["grads"], captured["full_backprop"]
    assert any(name.startswith("bert.embeddings") for name in grads)
    largest = max(float(reference[name].norm()) for name in grads)
    for name, grad in grads.items():
        if float(reference[name].norm()) > 1e-6 * largest:  # not the key biases: their gradient is 0 (softmax)
            assert _relative_error(grad, reference[name]) < 0.02, name
