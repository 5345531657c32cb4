"""The only module that touches torch.distributed.

- `init_distributed`: rank/world from torchrun, SLURM or MPI environment variables; process groups.
- `Channel`: typed point-to-point messages (header + tensors, see messages.py) between a server and
  its client processes, with byte accounting per kind and direction and a timeout on every wait.
- `Collectives`: the few collectives the round end needs (sum all-reduce, gather/broadcast objects).

NCCL cannot receive "from any source", so headers always travel over a gloo group (which can), and
the payload travels over the data backend (NCCL on GPUs, gloo on CPUs) from the named source.

One data group per direction of each server-client link (`ProcessGroups.up` / `.down`): NCCL runs
the sends and receives of one communicator in the order they were posted, on one stream. Over a
single group, a client-head client that posted sends of ACTIVATIONs 0..4 and then the receive of
OUTPUT 0, facing a server that posted receive ACTIVATION 0, send OUTPUT 0, receive ACTIVATION 1,
deadlocks once a payload exceeds NCCL's internal buffers (the client's send of ACTIVATION 1 waits
for the server's receive, queued behind its send of OUTPUT 0, which waits for the client's receive,
queued behind the send of ACTIVATION 1). With a group per direction each stream carries one
direction only. CPU runs use the same groups (over gloo), so the path is one and tested.

Protocol on the data groups (payloads; headers on the gloo link group, in the same order):

    fedbiobert, head on the client (default)
        client, up:    send ACTIVATION b, ..., (b - max_inflight settled) send GRAD b - max_inflight, ...
        client, down:  recv OUTPUT 0, OUTPUT 1, ...         (at most max_inflight + 1 behind its sends)
        server, up:    recv the client's messages in the order it sent them (ACTIVATION or GRAD)
        server, down:  send OUTPUT b right after recv ACTIVATION b
    fedbiobert, head on the server
        client, up:    send ACTIVATION 0, 1, ... ; server, up: recv them in order; down: unused
    fedbert (either head; one step at a time: the client waits for the GRAD at the cut)
        client, up:    send ACTIVATION b [, GRAD b]      down: recv [OUTPUT b,] GRAD b
        server, up:    recv ACTIVATION b [, GRAD b]      down: send [OUTPUT b,] GRAD b

Why no cycle of waits can form: within one direction both sides post in the same order (the
receiver takes one peer's messages in the order sent: per pair, messages are FIFO), so the k-th
receive always meets the k-th send; and the two directions run on different groups (streams), so a
send of one direction never waits behind an operation of the other. Sends never block the sender
(see `Channel.send`): the only blocking waits are receives, and each is for a message its peer
posts without first waiting on that receiver.
"""
from __future__ import annotations

import collections
import datetime
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

from fedbiobert.messages import HEADER_BYTES, HEADER_LEN, Message, decode_header, encode_header
from fedbiobert.topology import Topology

logger = logging.getLogger(__name__)


class PeerError(RuntimeError):
    """A peer timed out or failed; the message names the peer's role and rank."""


# ------------------------------------------------------------------------------------------------
# Environment and process groups
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_info_from_env(env: dict[str, str] | None = None) -> LaunchInfo:
    """Rank and world from torchrun, then SLURM, then Open MPI variables; a lone process otherwise."""
    env = os.environ if env is None else env
    for rank_key, world_key, local_key, local_world_key in (
            ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
            ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
            ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
             "OMPI_COMM_WORLD_LOCAL_SIZE")):
        if rank_key in env and world_key in env:
            world_size = int(env[world_key])
            local_world = env.get(local_world_key, str(world_size)).split("(")[0]
            return LaunchInfo(int(env[rank_key]), world_size, int(env.get(local_key, 0)), int(local_world))
    return LaunchInfo(0, 1, 0, 1)


@dataclass
class ProcessGroups:
    """Every group a run uses; created in the same order on every rank (a torch requirement)."""
    data_backend: str
    cpu: object                      # gloo over all ranks: headers, objects, control
    link: dict[int, object]          # server rank -> gloo group {server} + its client processes
    clients: object                  # all client processes: FedAvg of client parts
    servers: object                  # all server processes: FedAvg of server replicas
    round_end: object = None         # gloo over all ranks, timeout --round_timeout: the round-end meeting
    # (server, client process) -> a group {server, client} of the data backend per direction, for the
    # payload only: up carries client -> server, down server -> client (see the module docstring).
    up: dict[tuple[int, int], object] = field(default_factory=dict)
    down: dict[tuple[int, int], object] = field(default_factory=dict)


def init_distributed(launch: LaunchInfo, topology: Topology, on_cuda: bool, timeout_s: float,
                     round_timeout_s: float | None = None) -> ProcessGroups:
    """Every group, created in the same order on every rank. Each group's timeout bounds every wait
    on it: --comm_timeout for exchanges and FedAvg, and --round_timeout for the one group whose
    barrier waits for a whole round (Collectives.round_barrier)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    backend = "nccl" if on_cuda else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size, timeout=timeout)
    cpu = dist.group.WORLD if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    link = {server: dist.new_group([server] + topology.client_ranks_of(server), backend="gloo",
                                   timeout=timeout)
            for server in topology.server_ranks}
    clients = dist.new_group(topology.client_ranks, backend=backend, timeout=timeout)
    # new_group([]) would mean "every rank": a world without servers has no server group.
    servers = dist.new_group(topology.server_ranks, backend=backend, timeout=timeout) if topology.num_servers else None
    round_end = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=round_timeout_s or timeout_s))
    up, down = _direction_groups(topology, backend, timeout)
    return ProcessGroups(backend, cpu, link, clients, servers, round_end, up, down)


def _direction_groups(topology: Topology, backend: str, timeout: datetime.timedelta) -> tuple[dict, dict]:
    """Two 2-rank groups of the data backend per (server, client process): up, then down, for each
    server in rank order and each of its client processes in rank order (every rank, same order)."""
    up, down = {}, {}
    for server in topology.server_ranks:
        for client in topology.client_ranks_of(server):
            up[(server, client)] = dist.new_group([server, client], backend=backend, timeout=timeout)
            down[(server, client)] = dist.new_group([server, client], backend=backend, timeout=timeout)
    return up, down


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Point-to-point messages
# ------------------------------------------------------------------------------------------------
@dataclass
class ByteCounter:
    """Bytes moved per (direction, kind); header bytes are counted separately from payload bytes."""
    payload: dict[tuple[str, str], int] = field(default_factory=lambda: collections.defaultdict(int))
    header: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    messages: dict[tuple[str, str], int] = field(default_factory=lambda: collections.defaultdict(int))

    def add(self, direction: str, message: Message) -> None:
        self.payload[(direction, message.kind.name)] += message.payload_bytes
        self.header[direction] += HEADER_BYTES
        self.messages[(direction, message.kind.name)] += 1

    def add_model_exchange(self, direction: str, nbytes: int) -> None:
        """FedAvg traffic: a client part uploaded to / downloaded from the aggregator (an all-reduce
        here, one transfer each way per trained silo in a real deployment)."""
        self.payload[(direction, "STATE")] += nbytes
        self.messages[(direction, "STATE")] += 1

    def total(self, direction: str) -> int:
        payload = sum(value for (way, _), value in self.payload.items() if way == direction)
        return payload + self.header[direction]

    def as_dict(self) -> dict[str, int]:
        flat = {f"{way}_{kind.lower()}": value for (way, kind), value in sorted(self.payload.items())}
        flat.update(bytes_sent=self.total("sent"), bytes_received=self.total("received"))
        return flat


class LinkModel:
    """An emulated WAN link per direction: a message of n bytes occupies the link for n / bandwidth
    after the previous one, then arrives `latency` later. The sender stamps the delivery time in the
    header and carries on; the receiver holds the message until then, so whatever an algorithm
    overlaps with communication stays overlapped. Clocks are those of one machine (or NTP)."""

    def __init__(self, bandwidth_mbps: float | None, latency_ms: float):
        self.bytes_per_second = bandwidth_mbps * 1e6 / 8 if bandwidth_mbps else None
        self.latency = latency_ms / 1000.0
        self.busy_until: dict[int, float] = collections.defaultdict(float)

    def transfer_seconds(self, nbytes: int) -> float:
        serialisation = nbytes / self.bytes_per_second if self.bytes_per_second else 0.0
        return serialisation + self.latency

    def delivery_time(self, dst: int, nbytes: int, now: float) -> float:
        start = max(now, self.busy_until[dst])
        serialisation = nbytes / self.bytes_per_second if self.bytes_per_second else 0.0
        self.busy_until[dst] = start + serialisation
        return start + serialisation + self.latency


@dataclass
class _PendingSend:
    """One posted message: its works and the tensors they read, kept alive until every work is done."""
    dst: int
    tensors: list          # the header, then the payload
    polled: list           # NCCL works: is_completed() polls the send's CUDA event
    waited: list           # gloo works: only one wait() completes them (made by a _SendWaiter thread)
    done: threading.Event = field(default_factory=threading.Event)  # every work in `waited` returned
    error: RuntimeError | None = None  # what a wait in `waited` raised

    @property
    def payload_tensors(self) -> int:
        return len(self.tensors) - 1

    @property
    def payload_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors[1:])


class _SendWaiter:
    """Completes gloo sends in the background: one thread per destination.

    A gloo send reports completion only to a wait() on it (is_completed() stays False until then,
    and a second wait blocks), so each is waited here, once, in posting order per destination, which
    is the order its receiver takes them (per pair, messages are FIFO). The main thread never blocks
    on a send's delivery (see Channel for why it must not); it drops the sends this has completed.
    NCCL needs none of this: is_completed() of an NCCL send polls its CUDA event.
    """

    def __init__(self, timeout: datetime.timedelta):
        self.timeout = timeout
        self._queues: dict[int, queue.SimpleQueue] = {}

    def track(self, pending: _PendingSend) -> None:
        if not pending.waited:
            pending.done.set()
            return
        if pending.dst not in self._queues:
            self._queues[pending.dst] = queue.SimpleQueue()
            threading.Thread(target=self._run, args=(self._queues[pending.dst],), daemon=True,
                             name=f"send-waiter-{pending.dst}").start()
        self._queues[pending.dst].put(pending)

    def _run(self, sends: queue.SimpleQueue) -> None:
        while True:
            pending = sends.get()
            try:
                for work in pending.waited:  # each bounded by the group's and this timeout
                    work.wait(self.timeout)
            except Exception as error:  # noqa: BLE001 -- handed to the main thread, raised there as PeerError
                pending.error = error if isinstance(error, RuntimeError) else RuntimeError(repr(error))
            pending.done.set()


class Channel:
    """Messages between this process and the peers of one link group (a server and its clients).

    Pairing: every `send(message, dst)` on one side is consumed by exactly one `recv(src)` (or
    `recv(None)` on a server) on the other, in the order sent: per pair of ranks, messages are FIFO.

    Headers go over `header_group` (gloo); payloads to `dst` over `data_group_to(dst)` and from
    `src` over `data_group_from(src)`: the per-direction groups of `link_channel`, or `data_group`
    for both directions when no map is given.

    Memory: a send keeps its tensors until delivered; every send, recv and flush first releases
    each send that has completed, wherever it is in the queue. There is deliberately no blocking
    window on a server or on a client-head client: a server blocking on delivery of an OUTPUT to
    client X while X blocks on delivery of its ACTIVATION to the server would deadlock. None is
    needed: the protocol bounds what is outstanding (a fedbiobert client runs ahead by at most
    --max_inflight batches, fedbert waits every step), so once completed sends are released about
    max_inflight + 1 messages per peer are held at most (`held_tensors`, `peak_held_tensors`).
    A gloo send not taken by its receiver within the timeout fails the next send, recv or flush.
    """

    def __init__(self, rank: int, header_group, data_group, device: torch.device, timeout_s: float,
                 describe: Callable[[int], str], link: LinkModel | None = None,
                 groups_to: dict[int, object] | None = None, groups_from: dict[int, object] | None = None):
        self.rank = rank
        self.link = link
        self.seconds = {"wait": 0.0, "comm": 0.0}  # blocked in recv / posting and flushing sends
        self.header_group = header_group
        self.data_group = data_group
        self._groups_to, self._groups_from = groups_to, groups_from
        self.device = device
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.describe = describe
        self.bytes = ByteCounter()
        self._pending: collections.deque[_PendingSend] = collections.deque()
        self._waiter = _SendWaiter(self.timeout)
        self._gloo: dict[int, bool] = {}  # id(group) -> whether its works complete only through wait()
        self.reset_peaks()

    # --- groups ----------------------------------------------------------------------------------
    def data_group_to(self, peer: int):
        """The group that carries this process's payloads to `peer`."""
        return self.data_group if self._groups_to is None else self._groups_to[peer]

    def data_group_from(self, peer: int):
        """The group that carries `peer`'s payloads to this process."""
        return self.data_group if self._groups_from is None else self._groups_from[peer]

    def _completes_on_wait(self, group) -> bool:
        if id(group) not in self._gloo:
            self._gloo[id(group)] = dist.get_backend(group) == "gloo"
        return self._gloo[id(group)]

    # --- memory held by sends in flight ----------------------------------------------------------
    @property
    def held_tensors(self) -> int:
        """Payload tensors kept alive by sends not yet completed (headers, 304 bytes each, excluded)."""
        return sum(pending.payload_tensors for pending in self._pending)

    @property
    def held_bytes(self) -> int:
        """Payload bytes kept alive by sends not yet completed."""
        return sum(pending.payload_bytes for pending in self._pending)

    def reset_peaks(self) -> None:
        """Start the peaks afresh from what is held now (the lead reports them per round)."""
        self.peak_held_tensors, self.peak_held_bytes = self.held_tensors, self.held_bytes

    # --- sending ---------------------------------------------------------------------------------
    def send(self, message: Message, dst: int) -> None:
        """Non-blocking: posts the header and the tensors; they are released once delivered."""
        started = time.perf_counter()
        self._reap()
        tensors = [tensor.detach().contiguous() for tensor in message.tensors]
        message.tensors = tensors
        if self.link is not None:
            message.deliver_at = self.link.delivery_time(dst, message.payload_bytes + HEADER_BYTES, time.time())
        header = encode_header(message)
        data_group = self.data_group_to(dst)
        works = [(dist.isend(header, dst, group=self.header_group), self.header_group)]
        works += [(dist.isend(tensor, dst, group=data_group), data_group) for tensor in tensors]
        pending = _PendingSend(dst, [header] + tensors,
                               polled=[work for work, group in works if not self._completes_on_wait(group)],
                               waited=[work for work, group in works if self._completes_on_wait(group)])
        self._pending.append(pending)
        self._waiter.track(pending)
        self.peak_held_tensors = max(self.peak_held_tensors, self.held_tensors)
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        self.bytes.add("sent", message)
        self.seconds["comm"] += time.perf_counter() - started

    def flush(self, max_pending: int = 0) -> None:
        """Release completed sends, then wait for the oldest until at most `max_pending` remain."""
        started = time.perf_counter()
        self._reap()
        while len(self._pending) > max_pending:
            self._settle(self._pending.popleft(), block=True)
        self.seconds["comm"] += time.perf_counter() - started

    def _reap(self) -> None:
        """Release every completed send, wherever it is in the queue (sends to one peer may complete
        before earlier sends to another)."""
        still_in_flight = collections.deque()
        for pending in self._pending:
            if pending.done.is_set() and all(work.is_completed() for work in pending.polled):
                self._settle(pending, block=False)
            else:
                still_in_flight.append(pending)
        self._pending = still_in_flight

    def _settle(self, pending: _PendingSend, block: bool) -> None:
        """Surface a failed send as PeerError; with `block`, first wait until it completes."""
        what = f"delivery of a message to {self.describe(pending.dst)}"
        pending.done.wait()  # bounded: the waiter thread's own waits time out
        if pending.error is not None:
            raise self._peer_error(pending.error, what)
        for work in pending.polled:
            if block:
                self._poll_until_completed(work, what)
            self._wait(work, what)

    def _poll_until_completed(self, work, what: str) -> None:
        """NCCL's wait() only orders the current CUDA stream after the send; this waits on the CPU."""
        deadline = time.monotonic() + self.timeout.total_seconds()
        while not work.is_completed():
            if time.monotonic() > deadline:
                raise self._peer_error(RuntimeError("timed out"), what)
            time.sleep(0.001)

    # --- receiving -------------------------------------------------------------------------------
    def recv(self, src: int | None = None) -> Message:
        """Blocking receive of the next message from `src`, or from any peer of the group if None."""
        self._reap()
        started = time.perf_counter()
        message = self._recv(src)
        if message.deliver_at:  # emulated link: hold the message until it would have arrived
            time.sleep(max(0.0, message.deliver_at - time.time()))
        self.seconds["wait"] += time.perf_counter() - started
        return message

    def _recv(self, src: int | None) -> Message:
        header = torch.empty(HEADER_LEN, dtype=torch.int64)
        work = dist.irecv(header, src=src, group=self.header_group)
        expected = self.describe(src) if src is not None else "any client of this server"
        self._wait(work, f"a message from {expected}")
        source = src if src is not None else dist.get_global_rank(self.header_group, work._source_rank())
        message, specs = decode_header(header)
        message.source = source
        message.tensors = [self._recv_tensor(dtype, shape, source) for dtype, shape in specs]
        self.bytes.add("received", message)
        return message

    def _recv_tensor(self, dtype: torch.dtype, shape: tuple[int, ...], source: int) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=dtype, device=self.device)
        work = dist.irecv(buffer, src=source, group=self.data_group_from(source))
        self._wait(work, f"a message payload from {self.describe(source)}")
        return buffer

    def _wait(self, work, what: str) -> None:
        try:
            work.wait(self.timeout)
        except RuntimeError as error:
            raise self._peer_error(error, what) from None

    def _peer_error(self, error: RuntimeError, what: str) -> PeerError:
        reason = "timed out" if "imed out" in str(error) else "failed"
        return PeerError(f"rank {self.rank} {reason} after waiting up to {self.timeout.total_seconds():.0f}s "
                         f"for {what}: {str(error).splitlines()[0][:200] if str(error) else type(error).__name__}")


def link_channel(session, server_rank: int) -> Channel:
    """The channel between `server_rank` and its client processes: headers over their gloo link
    group, payloads over the group of each direction of each pair (ProcessGroups.up / .down)."""
    groups, config, rank = session.groups, session.config, session.rank
    pairs = [(server_rank, client) for client in session.topology.client_ranks_of(server_rank)]
    if rank == server_rank:
        groups_to = {client: groups.down[(server, client)] for server, client in pairs}
        groups_from = {client: groups.up[(server, client)] for server, client in pairs}
    else:
        groups_to = {server_rank: groups.up[(server_rank, rank)]}
        groups_from = {server_rank: groups.down[(server_rank, rank)]}
    link = LinkModel(config.link_bandwidth_mbps, config.link_latency_ms) if config.link else None
    return Channel(rank, groups.link[server_rank], None, session.device, config.comm_timeout,
                   session.topology.describe, link, groups_to=groups_to, groups_from=groups_from)


# ------------------------------------------------------------------------------------------------
# Collectives
# ------------------------------------------------------------------------------------------------
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
