"""--activation_clip and --activation_noise reach the wire: what a real server process receives between two
real processes is the defended hidden states (fedbiobert/privacy/defence.py applied in the client's send,
fedbiobert/algorithms/split_parts.py), and training goes on around it."""
import pytest
import torch

from fedbiobert.comm.groups import shutdown
from fedbiobert.comm.messages import Kind
from tests.support.distributed import run_processes
from tests.support.split_setup import build_split, end_round, serve_and_record, train_silo, two_process_channel

STEPS = 3
CLIP, SIGMA = 1e-3, 0.5  # a clip this small leaves the noise alone on the wire: its scale is then measurable


def _worker(rank, world_size, algorithm_name, corpus_dir, cache_dir, out_dir):
    algorithm, client, server, batches, _ = build_split(corpus_dir, cache_dir, STEPS, algorithm=algorithm_name,
                                                        activation_clip=CLIP, activation_noise=SIGMA)
    channel = two_process_channel()
    if rank == 0:
        received = serve_and_record(algorithm, server, channel)
        hidden = [message.tensors[0] for message in received if message.kind is Kind.ACTIVATION]
        torch.save(hidden, out_dir / "hidden.pt")
    else:
        train_silo(algorithm, client, channel, batches)
        end_round(channel)
    shutdown()


@pytest.mark.parametrize("algorithm_name", ["fedbiobert", "fedbert"])
def test_the_server_receives_defended_activations(tmp_path, small_corpus, algorithm_name):
    run_processes(_worker, 2, algorithm_name, small_corpus, tmp_path / "cache", tmp_path, timeout=120)
    hidden = torch.load(tmp_path / "hidden.pt")
    assert len(hidden) == STEPS
    values = torch.cat([tensor.flatten() for tensor in hidden])
    # undefended, the cut's hidden states are LayerNorm outputs (norm ~ sqrt(32) per token); here each token
    # is clipped to norm 1e-3 and carries N(0, 0.5^2) noise
    assert abs(float(values.std()) - SIGMA) < 0.03 and abs(float(values.mean())) < 0.03
