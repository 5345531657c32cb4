"""The data path's process groups, on real processes (gloo): every payload travels on the group of
its direction (up: client -> server, down: server -> client), every header on the gloo link group,
through a real client/server exchange of each algorithm shape; and every rank creates the same
groups in the same order (torch requires it).

A server (rank 0) serves two client processes (ranks 1 and 2), so a payload put on the group of
the wrong pair, or of the wrong direction, is told apart. The workers wrap dist.isend, dist.irecv
and dist.new_group to record each call; the real call still happens.
"""
import json

import pytest
import torch
import torch.distributed as dist

from fedbiobert.comm.groups import shutdown
from fedbiobert.comm.messages import HEADER_LEN, MAGIC, Control, Kind
from tests.support.distributed import run_processes, world_channel
from tests.support.split_setup import build_split, end_round, train_silo

STEPS = 3
SHAPES = [("fedbiobert", "client"), ("fedbiobert", "server"), ("fedbert", "client"), ("fedbert", "server")]


def _record(calls: list, created: list) -> None:
    """Wrap the torch.distributed calls the comm module makes: record, then make the real call."""
    real_isend, real_irecv, real_new_group = dist.isend, dist.irecv, dist.new_group

    def isend(tensor, dst=None, group=None, tag=0, **kwargs):
        calls.append(("send", dst, group, tensor))
        return real_isend(tensor, dst, group=group, tag=tag, **kwargs)

    def irecv(tensor, src=None, group=None, tag=0, **kwargs):
        calls.append(("recv", src, group, tensor))
        return real_irecv(tensor, src=src, group=group, tag=tag, **kwargs)

    def new_group(ranks=None, *args, **kwargs):
        created.append([ranks, kwargs.get("backend")])
        return real_new_group(ranks, *args, **kwargs)
    dist.isend, dist.irecv, dist.new_group = isend, irecv, new_group


def _group_names(groups) -> dict[int, str]:
    """id(group) -> its name, for the groups this rank is a member of (others are one shared placeholder)."""
    rank = dist.get_rank()
    names = {id(group): f"headers{server}" for server, group in groups.headers.items()}
    for direction, mapping in (("up", groups.up), ("down", groups.down)):
        names.update({id(group): f"{direction}{server}-{client}" for (server, client), group in mapping.items()
                      if rank in (server, client)})
    return names


def _is_header(tensor: torch.Tensor) -> bool:
    return tensor.dtype == torch.int64 and tuple(tensor.shape) == (HEADER_LEN,) and int(tensor[0]) == MAGIC


def _serve(algorithm, server, channel, client_ranks) -> None:
    """fedbiobert: every client at once, in arrival order; fedbert: one client process at a time
    (its replica keeps one process's graph between OUTPUT and GRAD)."""
    trainer = algorithm.server_trainer(server, channel, 0)
    turns = [None] if algorithm.name == "fedbiobert" else client_ranks
    for source in turns:
        still_sending = set(client_ranks) if source is None else {source}
        while still_sending:
            message = channel.recv(source)
            if message.kind is Kind.CONTROL and message.control is Control.ROUND_DONE:
                still_sending.discard(message.source)
            else:
                trainer.handle(message)
    trainer.finish()
    channel.flush()


def _worker(rank, world_size, corpus_dir, cache_dir, out_dir):
    calls, created = [], []
    _record(calls, created)
    channel, groups, topology = world_channel()
    names = _group_names(groups)
    report = {"created": created, "shapes": {}}
    for algorithm_name, head in SHAPES:
        algorithm, client, server, batches, _ = build_split(corpus_dir, cache_dir, STEPS, algorithm=algorithm_name,
                                                            head_placement=head)
        calls.clear()
        if rank == 0:
            _serve(algorithm, server, channel, topology.client_ranks)
        else:
            train_silo(algorithm, client, channel, batches, silo_id=rank - 1)
            end_round(channel)
        report["shapes"][f"{algorithm_name}-{head}"] = [
            [op, peer, names.get(id(group), repr(group)), _is_header(tensor)] for op, peer, group, tensor in calls]
        dist.barrier(group=groups.cpu)  # the next shape starts once every rank is done with this one
    report["pair_ranks"] = {name: {f"{server}-{client}": dist.get_process_group_ranks(group)
                                   for (server, client), group in mapping.items() if rank in (server, client)}
                            for name, mapping in (("up", groups.up), ("down", groups.down))}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    shutdown()


@pytest.fixture(scope="module")
def reports(tmp_path_factory, small_corpus):
    out_dir, cache_dir = tmp_path_factory.mktemp("groups"), tmp_path_factory.mktemp("cache")
    build_split(small_corpus, cache_dir, STEPS)  # the token cache, built once before the workers read it
    run_processes(_worker, 3, small_corpus, cache_dir, out_dir, timeout=180)
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(3)]


def _expected_payload_group(rank: int, op: str, peer: int) -> str:
    """Server 0 sends to client c on down0-c and receives from it on up0-c; client c the reverse."""
    client = peer if rank == 0 else rank
    client_to_server = (op == "send") != (rank == 0)
    return f"{'up' if client_to_server else 'down'}0-{client}"


def test_every_payload_travels_on_the_group_of_its_direction_and_headers_on_the_link(reports):
    for rank, report in enumerate(reports):
        for shape, calls in report["shapes"].items():
            payloads = [(op, peer, group) for op, peer, group, is_header in calls if not is_header]
            assert all(group == "headers0" for _, _, group, is_header in calls if is_header), (rank, shape)
            for op, peer, group in payloads:
                assert peer is not None and (peer == 0) == (rank != 0), (rank, shape, op, peer)
                assert group == _expected_payload_group(rank, op, peer), (rank, shape, op, peer, group)
            # nothing vacuous: each direction that this shape uses carried payload
            server_sends = shape != "fedbiobert-server"
            if rank == 0:
                assert {peer for op, peer, _ in payloads if op == "recv"} == {1, 2}, shape
                assert {peer for op, peer, _ in payloads if op == "send"} == ({1, 2} if server_sends else set()), shape
            else:
                assert any(op == "send" for op, _, _ in payloads), (rank, shape)
                assert any(op == "recv" for op, _, _ in payloads) == server_sends, (rank, shape)


def test_every_rank_creates_the_same_groups_in_the_same_order(reports):
    created = [report["created"] for report in reports]
    assert created[0] == created[1] == created[2]
    pairs = [ranks for ranks, _ in created[0] if ranks is not None and len(ranks) == 2 and 0 in ranks]
    assert pairs == [[0, 1], [0, 1], [0, 2], [0, 2]]  # up then down, per client process in rank order
    server_pairs = {"0-1": [0, 1], "0-2": [0, 2]}
    assert reports[0]["pair_ranks"] == {"up": server_pairs, "down": server_pairs}
    for client in (1, 2):  # a client process is a member of its own link's two groups only
        own = {f"0-{client}": [0, client]}
        assert reports[client]["pair_ranks"] == {"up": own, "down": own}
