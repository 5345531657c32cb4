"""What leaves a silo, measured on the wire between real processes.

Client-head mode (default): the client sends hidden states, a padding mask and the flat indices of
the masked positions: never token ids or labels. Server-head mode: the labels of the masked
positions are sent too (documented); token ids still never are.
"""
import json

import pytest
import torch

from fedbiobert.comm.groups import shutdown
from fedbiobert.model import masked_positions
from tests.support.distributed import run_processes
from tests.support.split_setup import build_split, end_round, serve_and_record, train_silo, two_process_channel

STEPS = 4


def _setup(head_placement, corpus_dir, cache_dir):
    algorithm, client, server, batches, _ = build_split(corpus_dir, cache_dir, STEPS, head_placement=head_placement)
    return algorithm, client, server, batches


def _worker(rank, world_size, head_placement, corpus_dir, cache_dir, out_dir):
    algorithm, client, server, batches = _setup(head_placement, corpus_dir, cache_dir)
    channel = two_process_channel()
    if rank == 0:
        received = serve_and_record(algorithm, server, channel)
        torch.save([(m.kind.name, m.step, m.tensors) for m in received], out_dir / "wire.pt")
    else:
        train_silo(algorithm, client, channel, batches)
        end_round(channel)
        (out_dir / "client_bytes.json").write_text(json.dumps(channel.bytes.as_dict()))
    shutdown()


@pytest.mark.parametrize("head_placement", ["client", "server"])
def test_what_a_client_sends(tmp_path, small_corpus, head_placement):
    run_processes(_worker, 2, head_placement, small_corpus, tmp_path / "cache", tmp_path, timeout=120)
    _, _, _, batches = _setup(head_placement, small_corpus, tmp_path / "cache")
    wire = torch.load(tmp_path / "wire.pt")
    activations = [entry for entry in wire if entry[0] == "ACTIVATION"]
    assert [entry[1] for entry in activations] == list(range(STEPS))
    for (_, step, tensors), batch in zip(activations, batches):
        positions = masked_positions(batch.labels)
        hidden, mask, sent_positions = tensors[:3]
        assert hidden.dtype == torch.float32 and hidden.shape == (*batch.input_ids.shape, 32)
        assert torch.equal(mask, batch.attention_mask.to(torch.uint8))
        assert torch.equal(sent_positions, positions)  # indices into B*T, not vocabulary ids
        for tensor in tensors:  # no tensor equals the token ids, whatever its dtype or shape
            assert not (tensor.shape == batch.input_ids.shape and torch.equal(tensor.long(), batch.input_ids))
        if head_placement == "client":
            assert len(tensors) == 3
        else:  # the documented exception: labels of masked positions go to the server
            assert len(tensors) == 4 and torch.equal(tensors[3], batch.labels.reshape(-1)[positions])
    grads = [entry for entry in wire if entry[0] == "GRAD"]
    if head_placement == "client":
        assert [entry[1] for entry in grads] == list(range(STEPS))
        assert all(len(t) == 1 and t[0].is_floating_point() for _, _, t in grads)
    else:
        assert grads == []
