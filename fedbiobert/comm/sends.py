"""Sends in flight: what a posted send keeps alive, and the threads that complete gloo sends."""
from __future__ import annotations

import datetime
import queue
import threading
from dataclasses import dataclass, field


@dataclass
class PendingSend:
    """One posted message: its works and the tensors they read, kept alive until every work is done."""
    dst: int
    tensors: list          # the header, then the payload
    polled: list           # NCCL works: is_completed() polls the send's CUDA event
    waited: list           # gloo works: only one wait() completes them (made by a SendWaiter thread)
    done: threading.Event = field(default_factory=threading.Event)  # every work in `waited` returned
    error: RuntimeError | None = None  # what a wait in `waited` raised

    @property
    def payload_tensors(self) -> int:
        return len(self.tensors) - 1

    @property
    def payload_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors[1:])


class SendWaiter:
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

    def track(self, pending: PendingSend) -> None:
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
