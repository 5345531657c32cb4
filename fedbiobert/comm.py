"""The only module that touches torch.distributed.

- `launch_info_from_env`: rank, world and rendezvous address from torchrun, DeepSpeed, Open MPI,
  MPICH / Intel MPI or SLURM variables; `init_distributed`: the process groups.
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
import dataclasses
import datetime
import logging
import os
import queue
import threading
import time
import zlib
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
# Launchers, in the order their variables are read. torchrun and the DeepSpeed launcher set RANK and
# WORLD_SIZE (and MASTER_ADDR/PORT) themselves; an MPI launcher started inside a SLURM allocation
# also leaves SLURM_PROCID in the environment (that of the batch step), so MPI variables come before
# SLURM's. Each: (name, rank, world size, local rank, local world size).
LAUNCHER_VARIABLES = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),  # MPICH's and Intel MPI's Hydra
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", None),
)
# Variables that name one job, whatever the launcher: a port derived from them is the same on every
# rank of the job and differs between jobs sharing a node.
JOB_ID_VARIABLES = ("SLURM_JOB_ID", "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_KVSNAME")
PORT_RANGE = (20000, 60000)
DEFAULT_PORT = 29500


class LaunchError(ValueError):
    """The launch environment is inconsistent or incomplete; the message is one line."""


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str = "single process"
    # where rank 0 listens (torch's MASTER_ADDR/MASTER_PORT); None when only the ranks themselves can
    # agree on it (MPI across nodes: see `agree_master_addr`)
    master_addr: str | None = "127.0.0.1"
    master_port: int = DEFAULT_PORT

    @property
    def single_node(self) -> bool:
        return self.local_world_size == self.world_size


def launch_info_from_env(env: dict[str, str] | None = None) -> LaunchInfo:
    """Rank, world and rendezvous address from torchrun or the DeepSpeed launcher, Open MPI, MPICH /
    Intel MPI, or SLURM srun (one task per rank); a lone process otherwise. Reads only `env`."""
    env = os.environ if env is None else env
    for name, rank_key, world_key, local_key, local_world_key in LAUNCHER_VARIABLES:
        if rank_key in env and world_key in env:
            if name == "slurm":
                return _slurm_launch(env)
            rank, world_size = _int_variable(env, rank_key), _int_variable(env, world_key)
            local_world = _int_variable(env, local_world_key) if local_world_key in env else None
            if name == "torchrun" and local_world is None and "LOCAL_SIZE" in env:
                name, local_world = "deepspeed", _int_variable(env, "LOCAL_SIZE")  # DeepSpeed's launcher
            info = LaunchInfo(rank, world_size, _int_variable(env, local_key) if local_key in env else 0,
                              local_world if local_world is not None else world_size, name)
            return _with_master(info, env)
    return LaunchInfo(0, 1, 0, 1, master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)))


def _slurm_launch(env) -> LaunchInfo:
    """srun with one task per rank. In a step SLURM_STEP_NUM_TASKS is the step's size (SLURM_NTASKS
    the job's); the local world is this node's entry of SLURM_STEP_TASKS_PER_NODE, e.g. '4(x2),3'."""
    world_key = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    world_size = _int_variable(env, world_key)
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    node = _int_variable(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
    local_world = _tasks_on_node(per_node, node) if per_node else world_size
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    info = LaunchInfo(_int_variable(env, "SLURM_PROCID"), world_size, int(env.get("SLURM_LOCALID", 0)),
                      local_world, "slurm", expand_nodelist(nodes)[0] if nodes else "127.0.0.1")
    return _with_master(info, env)


def _with_master(info: LaunchInfo, env) -> LaunchInfo:
    """MASTER_ADDR/MASTER_PORT when the launcher (or the user) set them; else the first node of a
    SLURM job, localhost for a one-node MPI job, or None (MPI across nodes); a port from the job id."""
    addr = env.get("MASTER_ADDR") or (info.master_addr if info.launcher == "slurm" else None)
    if addr is None and info.single_node:
        addr = "127.0.0.1"
    port = _int_variable(env, "MASTER_PORT") if env.get("MASTER_PORT") else job_port(env)
    return dataclasses.replace(info, master_addr=addr, master_port=port)


def _int_variable(env, key: str) -> int:
    value = env[key]
    if not value.strip().isdigit():
        raise LaunchError(f"launch environment: {key}='{value}' is not a non-negative integer")
    return int(value)


def _tasks_on_node(per_node: str, node: int) -> int:
    """SLURM's compressed count list ('4(x2),3': 4 tasks on nodes 0 and 1, 3 on node 2) at `node`."""
    counts = []
    for item in per_node.split(","):
        count, _, repeat = item.partition("(x")
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    if node >= len(counts):
        raise LaunchError(f"launch environment: SLURM_NODEID={node} but the tasks per node '{per_node}' "
                          f"cover {len(counts)} node(s)")
    return counts[node]


def job_port(env) -> int:
    """A port in [20000, 60000) derived from the job's id (the same on every rank), or 29500."""
    for key in JOB_ID_VARIABLES:
        if env.get(key):
            return PORT_RANGE[0] + zlib.crc32(env[key].encode()) % (PORT_RANGE[1] - PORT_RANGE[0])
    return DEFAULT_PORT


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list ('gpu[01-03,07],login1') -> host names in order, as
    `scontrol show hostnames` prints them (zero padding kept)."""
    hosts, depth, start = [], 0, 0
    for index, char in enumerate(nodelist + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            hosts += _expand_host(nodelist[start:index].strip(), nodelist)
            start = index + 1
    if depth != 0:
        raise LaunchError(f"launch environment: SLURM node list '{nodelist}' has an unclosed '['")
    return [host for host in hosts if host]


def _expand_host(item: str, nodelist: str) -> list[str]:
    """One entry: 'gpu[01-03,07]' or 'rack[1-2]-n[1-2]' (every bracket expanded, left to right)."""
    if "[" not in item:
        return [item]
    prefix, _, rest = item.partition("[")
    ranges, closed, suffix = rest.partition("]")
    if not closed:
        raise LaunchError(f"launch environment: SLURM node list '{nodelist}' has an unclosed '['")
    names = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise LaunchError(f"launch environment: SLURM node list '{nodelist}' has a bad range '{part}'")
        for number in range(int(first), int(last or first) + 1):
            names += [f"{prefix}{number:0{len(first)}d}{tail}" for tail in _expand_host(suffix, nodelist)]
    return names


def agree_master_addr(launch: LaunchInfo) -> str:
    """MPI across nodes without MASTER_ADDR: rank 0's host name, broadcast over MPI (mpi4py)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise LaunchError(f"{launch.launcher} started {launch.world_size} processes on several nodes but "
                          "MASTER_ADDR is not set: pass it (mpirun -x MASTER_ADDR=<first host>) or install "
                          "mpi4py (pip install -e '.[mpi]') so the ranks agree on it") from None
    import socket
    return MPI.COMM_WORLD.bcast(socket.gethostname() if launch.rank == 0 else None, root=0)


def backend_for(on_cuda: bool, backend: str = "auto") -> str:
    """The data backend: NCCL on GPUs, gloo on CPUs, unless --backend names one."""
    return ("nccl" if on_cuda else "gloo") if backend == "auto" else backend


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
                     round_timeout_s: float | None = None, backend: str = "auto") -> ProcessGroups:
    """Every group, created in the same order on every rank. Each group's timeout bounds every wait
    on it: --comm_timeout for exchanges and FedAvg, and --round_timeout for the one group whose
    barrier waits for a whole round (Collectives.round_barrier)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    backend = backend_for(on_cuda, backend)
    # torch's env:// rendezvous reads these; the launcher's own values (torchrun, DeepSpeed) are kept
    os.environ.setdefault("MASTER_ADDR", launch.master_addr or agree_master_addr(launch))
    os.environ.setdefault("MASTER_PORT", str(launch.master_port))
    if launch.rank == 0:
        logger.info("launched by %s: %d processes, %d on this node; rank 0 listens at %s:%s; backend %s",
                    launch.launcher, launch.world_size, launch.local_world_size, os.environ["MASTER_ADDR"],
                    os.environ["MASTER_PORT"], backend)
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
            # Drop this thread's reference now: otherwise the last message to each peer (an activation
            # of 25 MB at BERT-base length 512) stays alive until the next send to it, across round ends.
            del pending


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
