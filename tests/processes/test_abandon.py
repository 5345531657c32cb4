"""ClientTrainer.abandon() on real processes: a silo that fails while the server still owes it an
OUTPUT, or while it holds an OUTPUT it has not answered, closes those exchanges with ABANDON. The
server then never steps on the abandoned batches, keeps nothing for them, and serves the next silo
on the same channel normally (protocol errors or a leftover GRAD would fail the run).
"""
import copy

import pytest
import torch

from fedbiobert.comm.groups import shutdown
from fedbiobert.comm.messages import Control, Kind
from tests.support.distributed import run_processes
from tests.support.split_setup import build_split, end_round, train_silo, two_process_channel

STEPS = 3


def _serve_and_record(algorithm, server, channel, out_dir):
    """Serve until ROUND_DONE; record whether the weights moved after the failed silo and after the next one."""
    trainer = algorithm.server_trainer(server, channel, 0)
    initial = copy.deepcopy(server.state_dict())
    moved_by_failed_silo = None
    trained_sequences = 0  # what the next silo sent: the only batches the server steps on
    while True:
        message = channel.recv(None)
        if message.kind is Kind.CONTROL and message.control is Control.ROUND_DONE:
            break
        if message.silo_id == 1 and moved_by_failed_silo is None:  # the next silo's first message
            moved_by_failed_silo = _moved(initial, server)
        if message.silo_id == 1 and message.kind is Kind.ACTIVATION:
            trained_sequences += message.tensors[0].shape[0]
        trainer.handle(message)
    trainer.finish()  # raises if a batch still awaits its GRAD
    channel.flush()
    torch.save({"moved_by_failed_silo": moved_by_failed_silo, "moved_at_end": _moved(initial, server),
                "steps": trainer.stepper.optimizer.state_dict()["state"] != {},
                "samples_seen": trainer.samples_seen, "trained_sequences": trained_sequences}, out_dir / "server.pt")


def _moved(initial, module) -> bool:
    return any(not torch.equal(initial[name], value) for name, value in module.state_dict().items())


def _failing_final_head(model):
    original = model.final_logits

    def fail(*args):
        model.final_logits = original  # fail once
        raise RuntimeError("a failure inside the final head")
    model.final_logits = fail


def _worker(rank, world_size, options, corpus_dir, cache_dir, out_dir):
    algorithm, client, server, batches, _ = build_split(corpus_dir, cache_dir, STEPS, **options)
    client.eval(), server.eval()
    channel = two_process_channel()
    if rank == 0:
        _serve_and_record(algorithm, server, channel, out_dir)
    else:
        failed = algorithm.client_trainer(client, channel, 0, silo_id=0, round_idx=0)
        _failing_final_head(client)  # fails when the first OUTPUT comes back: that OUTPUT is held
        with pytest.raises(RuntimeError, match="inside the final head"):
            for step, batch in enumerate(batches):
                failed.step(batch, step)
            failed.finish()
        failed.abandon()
        client.zero_grad(set_to_none=True)
        train_silo(algorithm, client, channel, batches, silo_id=1)  # the next silo, served normally
        end_round(channel)
    shutdown()


@pytest.mark.parametrize("options", [
    {"algorithm": "fedbiobert", "max_inflight": 4},  # OUTPUTs of 3 batches owed, the first one held
    {"algorithm": "fedbert"},                        # fails holding the OUTPUT of its first step
], ids=["fedbiobert-client-head", "fedbert-client-head"])
def test_abandoned_batches_never_step_the_server_and_the_next_silo_is_served(tmp_path, small_corpus, options):
    run_processes(_worker, 2, options, small_corpus, tmp_path / "cache", tmp_path, timeout=120)
    record = torch.load(tmp_path / "server.pt")
    assert record["moved_by_failed_silo"] is False
    assert record["moved_at_end"] and record["steps"]
    # the replica's FedAvg weight counts the batches it trained on, not the abandoned ones
    assert record["samples_seen"] == record["trained_sequences"] > 0
