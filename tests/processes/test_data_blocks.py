"""Tests of fedbiobert.data.blocks and of what each process keeps of the corpus: rows read across
files, keep_only holding exactly the rows given (and refusing others), and, on real gloo processes
running build_session, a client process holding exactly its silos' blocks and a server none but
(rank 0) the validation sample."""
import numpy as np
import pytest
import torch

from fedbiobert.comm.groups import init_distributed, shutdown
from fedbiobert.comm.launch_env import launch_info_from_env
from fedbiobert.config import Config
from fedbiobert.data.blocks import BlockStore
from fedbiobert.session import build_session, rows_this_process
from fedbiobert.topology import Topology
from tests.conftest import SCIVOCAB
from tests.support.distributed import run_processes


def two_files() -> BlockStore:
    """Rows 0-2 from one int32 array, rows 3-6 from another; row i starts with 100 + i."""
    first = np.arange(12, dtype=np.int32).reshape(3, 4)
    second = np.arange(12, 28, dtype=np.int32).reshape(4, 4)
    first[:, 0], second[:, 0] = 100 + np.arange(3), 103 + np.arange(4)
    return BlockStore([first, second])


def test_rows_are_read_across_files_as_int64():
    store = two_files()
    assert len(store) == 7 and store.shape == (7, 4) and store.held_rows is None
    rows = store[torch.tensor([5, 0, 2, 3])]
    assert rows.dtype == torch.int64 and rows[:, 0].tolist() == [105, 100, 102, 103]
    assert store[4].tolist() == [104, 17, 18, 19] and store[-1][0] == 106
    assert store[torch.arange(7) % 2 == 0][:, 0].tolist() == [100, 102, 104, 106]
    assert store[:][:, 0].tolist() == list(range(100, 107))
    with pytest.raises(IndexError, match="block 7 is out of range"):
        store[[1, 7]]


def test_keep_only_holds_exactly_the_rows_given():
    store, everything = two_files(), two_files()[:]
    store.keep_only(torch.tensor([6, 1, 4, 1]))
    assert store.held_rows.tolist() == [1, 4, 6] and store.held_bytes == 3 * 4 * 4  # int32 copies
    assert torch.equal(store[[6, 1]], everything[[6, 1]]) and len(store) == 7
    with pytest.raises(LookupError, match="block 2 is not held by this process: it holds 3 blocks"):
        store[[1, 2]]
    store.keep_only([4])  # narrowing what is held keeps a subset
    assert store.held_rows.tolist() == [4] and torch.equal(store[[4]], everything[[4]])
    with pytest.raises(LookupError, match="block 1 is not held"):
        store.keep_only([1, 4])
    store.keep_only([])
    assert store.held_rows.tolist() == [] and store.held_bytes == 0
    with pytest.raises(LookupError, match="block 0 is not held"):
        store[[0]]


def test_rows_this_process_without_servers():
    """fedavg/centralized: rank 0 is a client process, holding its silos and the validation sample."""
    topology = Topology(world_size=2, num_servers=0, n_clients=3, clients_per_round=3, seed=0)
    parts = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([3, 4])]
    val = torch.tensor([9])
    assert rows_this_process(topology, 0, parts, val).tolist() == [0, 1, 3, 4, 9]
    assert rows_this_process(topology, 1, parts, val).tolist() == [2]


def _build_and_record(rank, world_size, corpus, cache, output, results):
    """Build the session on this rank as run.py does, use what the roles read, record what it holds."""
    config = Config(data_dir=str(corpus), tokenizer=str(SCIVOCAB), cache_dir=str(cache), output_dir=str(output),
                    max_len=64, n_clients=5, val_ratio=0.1, val_blocks=6, batch_size=2, num_batch=2)
    launch = launch_info_from_env()
    topology = Topology(world_size, config.num_servers, config.n_clients, config.clients_per_round, 0)
    groups = init_distributed(launch, topology, on_cuda=False, timeout_s=60)
    session = build_session(config, launch, topology, groups)
    if rank == 0:
        from fedbiobert.roles.round_end import RoundWriter  # builds (masks) the validation set, as rank 0 does
        assert len(RoundWriter(session).validation) == 6
    else:
        from fedbiobert.data import BatchLoader  # one pass over every silo this process hosts
        loader = BatchLoader(session.corpus, 2, 2, session.masking)
        for silo_id in topology.silos_at(rank):
            assert len(list(loader.batches(session.silo_indices[silo_id], seed=silo_id))) == 2
    torch.save({"held": session.corpus.blocks.held_rows, "parts": session.silo_indices,
                "val_indices": session.val_indices, "val_sample": session.val_sample,
                "hosted": topology.silos_at(rank) if rank else []}, results / f"{rank}.pt")
    shutdown()


def test_each_process_holds_only_the_blocks_it_reads(tmp_path, small_corpus):
    results = tmp_path / "results"
    results.mkdir()
    run_processes(_build_and_record, 3, small_corpus, tmp_path / "cache", tmp_path / "out", results, timeout=180)
    server, *clients = [torch.load(results / f"{rank}.pt", weights_only=False) for rank in range(3)]
    parts = server["parts"]
    assert [sorted(client["hosted"]) for client in clients] == [[0, 2, 4], [1, 3]]
    for client in clients:
        assert client["held"].tolist() == sorted(torch.cat([parts[cid] for cid in client["hosted"]]).tolist())
    assert server["held"].tolist() == server["val_sample"].tolist()
    assert len(server["val_sample"]) == 6 < len(server["val_indices"])  # only the sample, not every held-out block
    training = set(torch.cat(parts).tolist())
    assert not training & set(server["held"].tolist())
    assert len(clients[0]["held"]) + len(clients[1]["held"]) == len(training)  # disjoint, together all of it
