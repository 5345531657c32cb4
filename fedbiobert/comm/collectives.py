"""The few collectives the round end needs: sum all-reduces, object gather/broadcast, barriers."""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from fedbiobert.comm.errors import PeerError
from fedbiobert.comm.groups import ProcessGroups


def _collective(what: str):
    """Turn a collective's failure (a peer died or timed out) into a one-line PeerError."""
    def decorate(function):
        def wrapped(self, *args, **kwargs):
            try:
                return function(self, *args, **kwargs)
            except RuntimeError as error:  # gloo and NCCL failures (DistBackendError included)
                first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
                raise PeerError(f"rank {dist.get_rank()}: {what} failed (a peer died or stopped answering "
                                f"within --comm_timeout): {first_line}") from None
        return wrapped
    return decorate


class Collectives:
    """The round-end collectives. Every call is made by every member of its group, in the same order."""

    def __init__(self, groups: ProcessGroups, device: torch.device):
        self.groups = groups
        self.device = device

    @_collective("the FedAvg all-reduce among client processes")
    def sum_clients(self, flat: torch.Tensor) -> torch.Tensor:
        return self._sum(flat, self.groups.clients)

    @_collective("the FedAvg all-reduce among server processes")
    def sum_servers(self, flat: torch.Tensor) -> torch.Tensor:
        return self._sum(flat, self.groups.servers)

    def _sum(self, flat: torch.Tensor, group) -> torch.Tensor:
        flat = flat.to(self.device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        return flat

    @_collective("the round-end gather to rank 0")
    def gather_to_rank0(self, obj) -> list | None:
        """Every rank contributes one picklable object; rank 0 gets the list (others get None)."""
        output = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(obj, output, dst=0, group=self.groups.cpu)
        return output

    @_collective("the round-end broadcast from rank 0")
    def broadcast_from_rank0(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.groups.cpu)
        return box[0]

    @_collective("the round-end meeting of every process (within --round_timeout)")
    def round_barrier(self) -> None:
        """Every rank meets here once its part of the round is done, before the round-end
        collectives. Why: processes finish a round at different times (a client process may have
        drawn no silo this round, another three; a server drains its last batches), and the FedAvg
        all-reduces are bounded by --comm_timeout, which sizes one exchange, not a round. This
        barrier runs on a group of its own whose timeout is --round_timeout, so the all-reduces
        that follow start together. A dead peer is still noticed sooner: torchrun stops the job
        when a worker exits, and a server waiting on a hung client times out at --comm_timeout."""
        dist.barrier(group=self.groups.round_end)

    @_collective("waiting for local rank 0 to prepare the data")
    def long_barrier(self, timeout_s: float = 3 * 3600) -> None:
        """A barrier that waits long enough for one rank to tokenize a corpus (monitored: on a
        timeout it names the ranks that never arrived)."""
        dist.monitored_barrier(group=self.groups.cpu, timeout=datetime.timedelta(seconds=timeout_s),
                               wait_all_ranks=True)
