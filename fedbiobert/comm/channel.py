"""Typed point-to-point messages between a server and its client processes.

Headers (messages.py) travel over the server's gloo header group; payloads over the data backend.

NCCL cannot receive "from any source", so headers always travel over a gloo group (which can), and
the payload travels over the data backend (NCCL on GPUs, gloo on CPUs) from the named source.

One data group per direction of each (server, client process) pair (`ProcessGroups.up` / `.down`): NCCL runs
the sends and receives of one communicator in the order they were posted, on one stream. Over a
single group, a client-head client that posted sends of ACTIVATIONs 0..4 and then the receive of
OUTPUT 0, facing a server that posted receive ACTIVATION 0, send OUTPUT 0, receive ACTIVATION 1,
deadlocks once a payload exceeds NCCL's internal buffers (the client's send of ACTIVATION 1 waits
for the server's receive, queued behind its send of OUTPUT 0, which waits for the client's receive,
queued behind the send of ACTIVATION 1). With a group per direction each stream carries one
direction only. CPU runs use the same groups (over gloo), so the path is one and tested.

Protocol on the data groups (payloads; headers on the server's gloo header group, in the same order):

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
import time
from typing import Callable

import torch
import torch.distributed as dist

from fedbiobert.comm.accounting import ByteCounter
from fedbiobert.comm.errors import PeerError
from fedbiobert.comm.messages import HEADER_BYTES, HEADER_LEN, Message, decode_header, encode_header
from fedbiobert.comm.sends import PendingSend, SendWaiter
from fedbiobert.comm.wan import WanModel


class Channel:
    """Messages between this process and the peers of one server's group (the server and its client processes).

    Pairing: every `send(message, dst)` on one side is consumed by exactly one `recv(src)` (or
    `recv(None)` on a server) on the other, in the order sent: per pair of ranks, messages are FIFO.

    Headers go over `header_group` (gloo); payloads to `dst` over `groups_to[dst]` and from `src`
    over `groups_from[src]`: the per-direction groups (`server_channel` picks them).

    Memory: a send keeps its tensors until delivered; every send, recv and flush first releases
    each send that has completed, wherever it is in the queue. There is deliberately no blocking
    window on a server or on a client-head client: a server blocking on delivery of an OUTPUT to
    client X while X blocks on delivery of its ACTIVATION to the server would deadlock. None is
    needed: the protocol bounds what is outstanding (a fedbiobert client runs ahead by at most
    --max_inflight batches, fedbert waits every step), so once completed sends are released about
    max_inflight + 1 messages per peer are held at most (`held_tensors`, `peak_held_tensors`).
    A gloo send not taken by its receiver within the timeout fails the next send, recv or flush.
    """

    def __init__(self, rank: int, header_group, groups_to: dict[int, object], groups_from: dict[int, object],
                 device: torch.device, timeout_s: float, describe: Callable[[int], str],
                 wan: WanModel | None = None):
        self.rank = rank
        self.wan = wan
        self.seconds = {"wait": 0.0, "comm": 0.0}  # blocked in recv / posting and flushing sends
        self.header_group = header_group
        self._groups_to, self._groups_from = groups_to, groups_from
        self.device = device
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.describe = describe
        self.bytes = ByteCounter()
        self._pending: collections.deque[PendingSend] = collections.deque()
        self._waiter = SendWaiter(self.timeout)
        self._gloo: dict[int, bool] = {}  # id(group) -> whether its works complete only through wait()
        self.reset_peaks()

    # --- groups ----------------------------------------------------------------------------------
    def data_group_to(self, peer: int):
        """The group that carries this process's payloads to `peer`."""
        return self._groups_to[peer]

    def data_group_from(self, peer: int):
        """The group that carries `peer`'s payloads to this process."""
        return self._groups_from[peer]

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
        if self.wan is not None:
            message.deliver_at = self.wan.delivery_time(dst, message.payload_bytes + HEADER_BYTES, time.time())
        header = encode_header(message)
        data_group = self.data_group_to(dst)
        works = [(dist.isend(header, dst, group=self.header_group), self.header_group)]
        works += [(dist.isend(tensor, dst, group=data_group), data_group) for tensor in tensors]
        pending = PendingSend(dst, [header] + tensors,
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

    def _settle(self, pending: PendingSend, block: bool) -> None:
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
        if message.deliver_at:  # emulated WAN: hold the message until it would have arrived
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


def server_channel(groups, rank: int, server_rank: int, client_ranks: list[int], device: torch.device,
                   timeout_s: float, describe: Callable[[int], str], wan: WanModel | None = None) -> Channel:
    """This process's channel in `server_rank`'s group (the server, or one of its `client_ranks`):
    headers over the server's gloo header group, payloads over each direction's own group
    (ProcessGroups.up / .down)."""
    if rank == server_rank:
        groups_to = {client: groups.down[(server_rank, client)] for client in client_ranks}
        groups_from = {client: groups.up[(server_rank, client)] for client in client_ranks}
    else:
        groups_to = {server_rank: groups.up[(server_rank, rank)]}
        groups_from = {server_rank: groups.down[(server_rank, rank)]}
    return Channel(rank, groups.headers[server_rank], groups_to, groups_from, device, timeout_s, describe, wan)
