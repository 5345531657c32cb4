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
    assert topology.silos_at(1) == list(range(0, 32, 2))
    assert topology.silos_at(2) == list(range(1, 32, 2))
    assert all(topology.home_rank(cid) == 1 + cid % 2 for cid in range(32))


def test_sampling_is_deterministic_and_changes_between_rounds():
    topology = Topology(world_size=3, num_servers=1, n_clients=4, clients_per_round=2, seed=7)
    rounds = [topology.sample_silos(r) for r in range(20)]
    assert rounds == [Topology(3, 1, 4, 2, 7).sample_silos(r) for r in range(20)]
    assert all(len(set(sample)) == 2 for sample in rounds)  # without replacement
    assert len({tuple(sample) for sample in rounds}) > 1
    # the draw does not depend on how many processes host the silos
    assert rounds == [Topology(5, 1, 4, 2, 7).sample_silos(r) for r in range(20)]


def test_sampling_is_uniform_over_silos_whatever_their_home_process():
    """5 silos on 2 client processes (3 on one, 2 on the other), 2 drawn per round. Stratified
    sampling (one per process) drew the 2 silos of the smaller process with probability 1/2 each and
    the others with 1/3; uniform sampling draws every silo with probability 2/5."""
    topology = Topology(world_size=3, num_servers=1, n_clients=5, clients_per_round=2, seed=3)
    num_rounds = 20_000
    counts = collections.Counter(cid for r in range(num_rounds) for cid in topology.sample_silos(r))
    expected = num_rounds * 2 / 5
    standard_deviation = (num_rounds * 0.4 * 0.6) ** 0.5
    for silo_id in range(5):
        assert abs(counts[silo_id] - expected) < 4 * standard_deviation, (silo_id, counts)
    # pairs are uniform too: each of the 10 pairs about 1/10 of the rounds
    pairs = collections.Counter(tuple(topology.sample_silos(r)) for r in range(num_rounds))
    assert len(pairs) == 10
    assert all(abs(count - num_rounds / 10) < 4 * (num_rounds * 0.1 * 0.9) ** 0.5 for count in pairs.values())


def test_clients_for_partitions_the_sample_between_processes():
    topology = Topology(world_size=4, num_servers=1, n_clients=10, clients_per_round=5, seed=1)
    for round_idx in range(5):
        per_process = [topology.silos_for(rank, round_idx) for rank in topology.client_ranks]
        assert sorted(sum(per_process, [])) == topology.sample_silos(round_idx)
        for rank, silos in zip(topology.client_ranks, per_process):
            assert all(topology.home_rank(cid) == rank for cid in silos)


@pytest.mark.parametrize("args", [(2, 2, 4, 4, 0), (5, 1, 3, 3, 0), (3, 1, 4, 5, 0)])
def test_invalid_topologies_are_refused(args):
    with pytest.raises(ValueError):
        Topology(*args)
