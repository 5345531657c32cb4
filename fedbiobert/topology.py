"""Which process does what: rank -> role, server <-> client-process wiring, clients per round.

Pure Python and deterministic: every rank builds the same `Topology` and gets the same answers
without talking to anyone, so nothing else in the code base does rank arithmetic.

Layout of a world of W processes with S servers (`--num_device S`):

    ranks 0 .. S-1     server processes
    ranks S .. W-1     client processes; client process p (p = rank - S) is served by server p % S

Rank 0 also writes checkpoints and shows progress. Algorithms without a server (fedavg,
centralized) have S = 0: every rank is a client process.

Logical clients (silos) have a fixed home process: client `silo_id` lives on client process
`silo_id % P` (P = W - S), as a hospital's data lives on its own machine. Each round samples
`round(n_clients * participation_ratio)` clients uniformly without replacement (as FedAvg and the
original code do: every silo has the same chance each round, whatever its home process), and each
process trains whichever of its silos were drawn, so processes may train different numbers of
silos in a round (some none).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    SERVER = "server"
    CLIENT = "client"


@dataclass(frozen=True)
class Topology:
    world_size: int
    num_servers: int
    n_clients: int
    clients_per_round: int
    seed: int

    def __post_init__(self) -> None:
        if not 0 <= self.num_servers < self.world_size:
            raise ValueError(f"num_servers {self.num_servers} must be in [0, world_size={self.world_size})")
        if self.num_client_processes > self.n_clients:
            raise ValueError(f"{self.num_client_processes} client processes exceed n_clients {self.n_clients}")
        if not 1 <= self.clients_per_round <= self.n_clients:
            raise ValueError(f"clients_per_round {self.clients_per_round} is outside [1, {self.n_clients}]")

    # --- ranks and roles ----------------------------------------------------------------------
    @property
    def num_client_processes(self) -> int:
        return self.world_size - self.num_servers

    @property
    def server_ranks(self) -> list[int]:
        return list(range(self.num_servers))

    @property
    def client_ranks(self) -> list[int]:
        return list(range(self.num_servers, self.world_size))

    def role(self, rank: int) -> Role:
        self._check_rank(rank)
        return Role.SERVER if rank < self.num_servers else Role.CLIENT

    def describe(self, rank: int) -> str:
        """'server rank 0' / 'client rank 2': used in every error message naming a peer."""
        return f"{self.role(rank).value} rank {rank}"

    def server_of(self, client_rank: int) -> int | None:
        """The server rank of a client process (None when the algorithm has no servers)."""
        if self.num_servers == 0:
            return None
        return self._client_process_index(client_rank) % self.num_servers

    def client_ranks_of(self, server_rank: int) -> list[int]:
        if self.role(server_rank) is not Role.SERVER:
            raise ValueError(f"rank {server_rank} is not a server")
        return [rank for rank in self.client_ranks if self.server_of(rank) == server_rank]

    # --- silos ----------------------------------------------------------------------------------
    def home_rank(self, silo_id: int) -> int:
        """The client process that holds silo `silo_id`'s data and private state."""
        if not 0 <= silo_id < self.n_clients:
            raise ValueError(f"silo_id {silo_id} is outside [0, {self.n_clients})")
        return self.num_servers + silo_id % self.num_client_processes

    def silos_at(self, client_rank: int) -> list[int]:
        """Every silo whose home is this client process."""
        index = self._client_process_index(client_rank)
        return list(range(index, self.n_clients, self.num_client_processes))

    def sample_silos(self, round_idx: int) -> list[int]:
        """The clients that train in round `round_idx` (0-based); the same on every rank.

        Uniform without replacement over all silos, from a generator seeded by (seed, round), so the
        draw does not depend on the number of processes: every silo is drawn with probability
        clients_per_round / n_clients each round.
        """
        rng = random.Random(f"{self.seed}-sample-{round_idx}")
        return sorted(rng.sample(range(self.n_clients), self.clients_per_round))

    def silos_for(self, client_rank: int, round_idx: int) -> list[int]:
        """The sampled clients that `client_rank` trains, in turn, in round `round_idx`."""
        return [cid for cid in self.sample_silos(round_idx) if self.home_rank(cid) == client_rank]

    # --- helpers -----------------------------------------------------------------------------------
    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside [0, {self.world_size})")

    def _client_process_index(self, client_rank: int) -> int:
        if self.role(client_rank) is not Role.CLIENT:
            raise ValueError(f"rank {client_rank} is not a client process")
        return client_rank - self.num_servers
