"""The real command line on GPUs with NCCL (`--on_cuda True`), payloads above NCCL's internal buffers.

Each message at the cut is 8 x 512 x 1024 fp32 = 16 MiB (batch x length x hidden), well above the
few MiB NCCL buffers per connection, while the model stays tiny (1 layer each side, intermediate
64, vocabulary 1500). That is the size at which a send can no longer complete before its receive
is posted, so a run whose sends and receives share one NCCL stream in the wrong order deadlocks
(comm/channel.py's docstring: one data group per direction of each pair prevents it); here every
algorithm and head placement must finish and write its metrics.

Every process gets a GPU of its own: NCCL refuses two ranks of one communicator on one GPU
("Duplicate GPU detected"), so a case needing more GPUs than the machine has is skipped, never
mapped onto shared GPUs. Runs by default wherever CUDA is present (not marked slow); `-m gpu`
selects only these.
"""
import json

import pytest
import torch

from fedbiobert.metrics import read_events
from tests.support.launch import torchrun

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL runs on GPUs)")]

BATCH, LENGTH, HIDDEN = 8, 512, 1024
ACTIVATION_BYTES = BATCH * LENGTH * HIDDEN * 4  # fp32 hidden states at the cut: 16 MiB per message
NUM_BATCH = 6  # above the default --max_inflight 4: a client-head client runs ahead of its server
BIG_MODEL_TINY_WEIGHTS = ["--hidden_size", str(HIDDEN), "--num_attention_heads", "2", "--intermediate_size", "64",
                          "--vocab_size", "1500", "--max_len", str(LENGTH), "--batch_size", str(BATCH),
                          "--num_client_encoder", "1", "--num_server_encoder", "1"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


# (processes, flags): every algorithm, both head placements; with --server_output full the OUTPUT
# (and GRAD) of the client-head modes are activation-sized too.
CASES = {
    "fedbiobert-client-head-full-output": (3, ["--algorithm", "fedbiobert", "--server_output", "full"]),
    "fedbiobert-client-head": (2, ["--algorithm", "fedbiobert"]),
    "fedbiobert-server-head": (2, ["--algorithm", "fedbiobert", "--head_placement", "server"]),
    "fedbert-client-head": (2, ["--algorithm", "fedbert"]),
    "fedbert-server-head": (2, ["--algorithm", "fedbert", "--head_placement", "server"]),
    "fedbert-sequential": (3, ["--algorithm", "fedbert", "--server_schedule", "sequential"]),
    "fedavg": (2, ["--algorithm", "fedavg"]),
    "centralized": (1, ["--algorithm", "centralized"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_nccl_run_with_payloads_above_nccl_buffers(tmp_path, small_corpus, cache_dir, name):
    nproc, flags = CASES[name]
    if torch.cuda.device_count() < nproc:
        pytest.skip(f"{name} runs {nproc} processes, one GPU each (NCCL refuses two ranks of a group on one GPU), "
                    f"but this machine has {torch.cuda.device_count()} GPU(s)")
    output = tmp_path / "out"
    n_clients = [] if name == "centralized" else ["--n_clients", "2"]
    result = torchrun(nproc, [*BIG_MODEL_TINY_WEIGHTS, *flags, *n_clients, "--on_cuda", "True",
                              "--n_comm_rounds", "1", "--num_batch", str(NUM_BATCH), "--comm_timeout", "120",
                              "--data_dir", str(small_corpus), "--output_dir", str(output)], cache_dir, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rounds = [event for event in read_events(output) if event["event"] == "round"]
    assert [event["round"] for event in rounds] == [1]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rounds_completed"] == 1
    if name.startswith(("fedbiobert", "fedbert")):  # activations crossed the wire, each above 8 MB
        assert ACTIVATION_BYTES > 8e6 and summary["bytes_up"] >= NUM_BATCH * ACTIVATION_BYTES
