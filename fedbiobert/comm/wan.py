"""The emulated wide-area network between silos and servers (--wan_bandwidth_mbps, --wan_latency_ms)."""
from __future__ import annotations

import collections


class WanModel:
    """An emulated wide-area network, per destination: a message of n bytes occupies the link for n / bandwidth
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
