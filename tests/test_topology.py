"""Rank -> role, server <-> client wiring and per-round client sampling (pure, no processes)."""
import collections

import pytest

from fedbiobert.topology import Role, Topology


def test_roles_and_wiring_for_two_servers_and_four_client_processes():
    topology = Topology(world_size=6, num_servers=2, n_clients=8, clients_per_round=8, seed=0)
    assert [topology.role(rank) for rank in range(6)] == [Role.SERVER] * 2 + [Role.CLIENT] * 4
    assert topology.client_ranks_of(0) == [2, 4]
    assert topology.client_ranks_of(1) == [3, 5]
    assert [topology.server_of(rank) for rank in (2, 3, 4, 5)] == [0, 1, 0, 1]
    assert topology.describe(3) == "client rank 3"


def test_silos_have_fixed_homes_and_every_process_hosts_several():
    topology = Topology(world_size=3, num_servers=1, n_clients=32, clients_per_round=32, seed=0)
    assert topology.clients_at(1) == list(range(0, 32, 2))
    assert topology.clients_at(2) == list(range(1, 32, 2))
    assert all(topology.home_rank(cid) == 1 + cid % 2 for cid in range(32))


def test_sampling_is_deterministic_stratified_and_changes_between_rounds():
    topology = Topology(world_size=3, num_servers=1, n_clients=4, clients_per_round=2, seed=7)
    rounds = [topology.sample_clients(r) for r in range(20)]
    assert rounds == [Topology(3, 1, 4, 2, 7).sample_clients(r) for r in range(20)]
    for sample in rounds:
        homes = collections.Counter(topology.home_rank(cid) for cid in sample)
        assert sorted(homes.values()) == [1, 1]  # one silo per client process each round
    assert len({tuple(sample) for sample in rounds}) > 1


def test_clients_for_partitions_the_sample_between_processes():
    topology = Topology(world_size=4, num_servers=1, n_clients=10, clients_per_round=5, seed=1)
    for round_idx in range(5):
        per_process = [topology.clients_for(rank, round_idx) for rank in topology.client_ranks]
        assert sorted(sum(per_process, [])) == topology.sample_clients(round_idx)
        assert max(map(len, per_process)) - min(map(len, per_process)) <= 1


@pytest.mark.parametrize("args", [(2, 2, 4, 4, 0), (5, 1, 3, 3, 0), (3, 1, 4, 5, 0)])
def test_invalid_topologies_are_refused(args):
    with pytest.raises(ValueError):
        Topology(*args)
