"""Bytes moved per direction and message kind: what the bench and summary.json report."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from fedbiobert.comm.messages import HEADER_BYTES, Message


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
