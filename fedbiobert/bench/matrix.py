"""The benchmark matrix: which runs, with which run.py flags, on one preset's token budget.

The matrix is data: `ALGORITHMS` says how each algorithm is launched (servers or not, one process or
many, whether the emulated client-server link applies), `entries(preset)` lists the algorithm x cut
entries, and `build_matrix` crosses them with the link settings into `RunSpec`s.

Token budget: every run trains n_clients x num_batch batches of batch_size x max_len tokens per round
(participation 1.0). Centralized training has one client holding all data, so it gets
num_batch x n_clients batches per round on one process: the same tokens per round.

Processes (--nproc N): fedbiobert runs 1 server + N-1 client processes, and so does the baseline
fedbert 0-L with its one shared server (--server_schedule sequential, FedBERT's single server model):
the same processes on the same cores. `fedbert-0-L-parallel` gives each client process its own
server replica instead (2(N-1) processes, averaged each round), shown for reference when N-1 > 1
(with one client process it is the same run). `fedbert-0-L-masked` is FedBERT with the server's
output and its gradient cut to the masked positions (--server_output masked): a stronger baseline
than the paper's, for reference. `fedbert-0-L-serverhead` is FedBERT with the MLM head on the server
(labels sent along, the server returns only the gradient at the cut): the like-for-like baseline of
`fedbiobert-k-(L-k)-serverhead`. fedavg runs N client processes; centralized 1.

Links: a link emulates the WAN between each client process and its server (--wan_bandwidth_mbps,
--wan_latency_ms): split traffic and the per-round model exchange. FedAvg runs with every link
setting too (its per-round model exchange crosses the link); centralized training runs once, link None.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from fedbiobert.bench.presets import Preset


class BenchError(ValueError):
    """A bad benchmark option; its message is one line naming the bad value."""


@dataclass(frozen=True)
class Link:
    bandwidth_mbps: float
    latency_ms: float

    @property
    def slug(self) -> str:
        """File-name-safe label, e.g. 100mbit-5ms."""
        return f"{self.bandwidth_mbps:g}mbit-{self.latency_ms:g}ms"

    @property
    def label(self) -> str:
        return f"{self.bandwidth_mbps:g} Mbit/s, {self.latency_ms:g} ms"

    def to_json(self) -> dict:
        return {"bandwidth_mbps": self.bandwidth_mbps, "latency_ms": self.latency_ms}

    def flags(self) -> list[str]:
        return ["--wan_bandwidth_mbps", f"{self.bandwidth_mbps:g}", "--wan_latency_ms", f"{self.latency_ms:g}"]


def link_label(link: Link | None) -> str:
    return "none" if link is None else link.label


def parse_links(text: str) -> list[Link | None]:
    """'none,100:5' -> [None, Link(100, 5)]; raises BenchError naming the first bad item."""
    links: list[Link | None] = []
    for item in (part.strip() for part in text.split(",")):
        link = _parse_link(item, text)
        if link in links:
            raise BenchError(f"--links '{text}' lists '{item}' twice")
        links.append(link)
    return links


def _parse_link(item: str, text: str) -> Link | None:
    if item.lower() == "none":
        return None
    accepted = "accepted: none or BANDWIDTH_MBPS:LATENCY_MS, e.g. none,100:5"
    bandwidth, sep, latency = item.partition(":")
    try:
        link = Link(float(bandwidth), float(latency))
    except ValueError:
        raise BenchError(f"--links '{text}': '{item}' is not a link setting ({accepted})") from None
    if not sep or not all(map(math.isfinite, (link.bandwidth_mbps, link.latency_ms))) \
            or link.bandwidth_mbps <= 0 or link.latency_ms < 0:
        raise BenchError(f"--links '{text}': '{item}' needs a bandwidth > 0 and a latency >= 0 ({accepted})")
    return link


@dataclass(frozen=True)
class AlgorithmKind:
    """How an algorithm is launched, given the client processes of a run."""
    servers: str               # "none", "one" (shared by all client processes) or "per_client" (a replica each)
    single_process: bool       # one process holding every silo's data (centralized)
    link_applies: bool         # an emulated link slows it down (client-server traffic and/or model exchange)
    flags: tuple[str, ...] = ()

    def num_device(self, client_processes: int) -> int:
        return {"none": 0, "one": 1, "per_client": client_processes}[self.servers]


ALGORITHMS: dict[str, AlgorithmKind] = {
    "fedbert": AlgorithmKind("per_client", False, True, ("--server_schedule", "parallel")),
    "fedbiobert": AlgorithmKind("one", False, True),
    "fedavg": AlgorithmKind("none", False, True),       # the link carries its per-round model exchange
    "centralized": AlgorithmKind("none", True, False),
}
FEDBERT_SCHEDULES: dict[str, AlgorithmKind] = {
    "parallel": ALGORITHMS["fedbert"],                  # a server replica per client process
    "sequential": AlgorithmKind("one", False, True, ("--server_schedule", "sequential")),  # one shared server
}
BASELINE = "fedbert"  # speedups are against fedbert with 0 client layers (the original FedBERT)
PARALLEL = "fedbert-parallel"  # the kind of the reference entry fedbert-0-L-parallel


def algorithm_kinds(fedbert_schedule: str = "sequential") -> dict[str, AlgorithmKind]:
    if fedbert_schedule not in FEDBERT_SCHEDULES:
        raise BenchError(f"--fedbert_schedule '{fedbert_schedule}' is unknown (accepted: "
                         f"{', '.join(FEDBERT_SCHEDULES)})")
    return {**ALGORITHMS, "fedbert": FEDBERT_SCHEDULES[fedbert_schedule], PARALLEL: FEDBERT_SCHEDULES["parallel"]}


@dataclass(frozen=True)
class Entry:
    """One algorithm at one cut, before link settings are applied."""
    name: str
    algorithm: str
    num_client_encoder: int
    num_server_encoder: int
    kind: str = ""                    # key of the AlgorithmKind (default: the algorithm)
    flags: tuple[str, ...] = ()       # further run.py flags of this entry

    @property
    def kind_name(self) -> str:
        return self.kind or self.algorithm


def masked_baseline_name(num_layers: int) -> str:
    """The stronger FedBERT reference: its server returns the masked positions' rows only."""
    return f"{BASELINE}-0-{num_layers}-masked"


def serverhead_baseline_name(num_layers: int) -> str:
    """FedBERT with its head on the server: the like-for-like baseline of fedbiobert's server-head runs."""
    return f"{BASELINE}-0-{num_layers}-serverhead"


def entries(preset: Preset) -> list[Entry]:
    """fedbert 0-L as published (shared server; with a replica per client; with the server's output
    cut to the masked rows, for reference; and with the head on the server, like for like with
    fedbiobert's server-head entry), fedbert k-(L-k) at k=L/2, fedbiobert at each preset cut,
    fedbiobert L/2 with the head on the server, fedavg, centralized."""
    layers, half = preset.num_layers, preset.num_layers // 2
    split = [("fedbert", 0), ("fedbert", half)] + [("fedbiobert", k) for k in preset.fedbiobert_cuts]
    found = [Entry(f"{algorithm}-{k}-{layers - k}", algorithm, k, layers - k) for algorithm, k in split]
    found.insert(1, Entry(f"fedbert-0-{layers}-parallel", "fedbert", 0, layers, kind=PARALLEL))
    found.insert(2, Entry(masked_baseline_name(layers), "fedbert", 0, layers, flags=("--server_output", "masked")))
    found.insert(3, Entry(serverhead_baseline_name(layers), "fedbert", 0, layers,
                          flags=("--head_placement", "server")))
    found.append(Entry(f"fedbiobert-{half}-{layers - half}-serverhead", "fedbiobert", half, layers - half,
                       flags=("--head_placement", "server")))
    # full-model algorithms: every layer is local (num_server_encoder 0)
    return found + [Entry(name, name, layers, 0) for name in ("fedavg", "centralized")]


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run: everything needed to launch it, except paths and port."""
    name: str
    entry: str
    algorithm: str
    num_client_encoder: int
    num_server_encoder: int
    link: Link | None
    nproc: int
    num_device: int
    n_clients: int
    num_batch: int
    batch_size: int
    max_len: int
    model_flags: tuple[str, ...]

    @property
    def tokens_per_round(self) -> int:
        return self.n_clients * self.num_batch * self.batch_size * self.max_len

    @property
    def is_baseline(self) -> bool:
        return self.entry == f"{BASELINE}-0-{self.num_server_encoder}" and self.num_client_encoder == 0

    @property
    def is_masked_baseline(self) -> bool:
        return self.entry == masked_baseline_name(self.num_server_encoder) and self.num_client_encoder == 0

    @property
    def is_serverhead_baseline(self) -> bool:
        return self.entry == serverhead_baseline_name(self.num_server_encoder) and self.num_client_encoder == 0

    @property
    def head_placement(self) -> str:
        """Where the final MLM head runs: server only with --head_placement server (full-model
        algorithms hold the head locally, like a client)."""
        flags = list(self.model_flags)
        for index, flag in enumerate(flags[:-1]):
            if flag == "--head_placement":
                return flags[index + 1]
        return "client"

    def flags(self) -> list[str]:
        """run.py flags (without --data_dir, --output_dir, --cache_dir)."""
        flags = ["--algorithm", self.algorithm, "--num_client_encoder", str(self.num_client_encoder),
                 "--num_server_encoder", str(self.num_server_encoder), "--num_device", str(self.num_device),
                 "--n_clients", str(self.n_clients), "--num_batch", str(self.num_batch), *self.model_flags]
        return flags + (self.link.flags() if self.link is not None else [])


def run_name(entry: Entry, link: Link | None) -> str:
    return entry.name if link is None else f"{entry.name}@{link.slug}"


def client_processes(kind: AlgorithmKind, nproc: int) -> int:
    """--nproc counts one server + client processes for split algorithms, all clients for fedavg."""
    if kind.single_process:
        return 1
    return nproc if kind.servers == "none" else nproc - 1


def make_spec(entry: Entry, link: Link | None, preset: Preset, nproc: int, kind: AlgorithmKind) -> RunSpec:
    pooled = kind.single_process
    clients = client_processes(kind, nproc)
    servers = kind.num_device(clients)
    return RunSpec(name=run_name(entry, link), entry=entry.name, algorithm=entry.algorithm,
                   num_client_encoder=entry.num_client_encoder, num_server_encoder=entry.num_server_encoder,
                   link=link, nproc=clients + servers, num_device=servers,
                   n_clients=1 if pooled else preset.n_clients,
                   num_batch=preset.num_batch * (preset.n_clients if pooled else 1),
                   batch_size=preset.batch_size, max_len=preset.max_len,
                   model_flags=tuple(preset.model_flags()) + kind.flags + entry.flags)


def build_matrix(preset: Preset, links: list[Link | None], nproc: int,
                 kinds: dict[str, AlgorithmKind] | None = None) -> list[RunSpec]:
    """Every entry with every link setting; algorithms the link does not apply to run once, link None."""
    check_nproc(nproc, preset)
    kinds = kinds or algorithm_kinds()
    specs = []
    for entry in entries(preset):
        kind = kinds[entry.kind_name]
        if entry.kind_name == PARALLEL and client_processes(kind, nproc) == 1:
            continue  # one client process: a replica per client process is the shared server, run twice
        entry_links = links if kind.link_applies else [None]
        specs += [make_spec(entry, link, preset, nproc, kind) for link in entry_links]
    return specs


def check_nproc(nproc: int, preset: Preset) -> None:
    if not 2 <= nproc <= preset.n_clients:
        raise BenchError(f"--nproc {nproc} is outside [2, {preset.n_clients}] (preset {preset.name}: 1 server "
                         f"+ at least 1 client process; fedavg runs {nproc} client processes on "
                         f"{preset.n_clients} silos)")


def select(specs: list[RunSpec], only: str | None) -> list[RunSpec]:
    """Keep runs whose name or entry matches a comma-separated pattern (shell globs allowed)."""
    if only is None:
        return specs
    patterns = [part.strip() for part in only.split(",") if part.strip()]
    if not patterns:
        raise BenchError(f"--only '{only}' names no run")
    for pattern in patterns:
        if not any(_matches(spec, pattern) for spec in specs):
            names = ", ".join(dict.fromkeys(spec.entry for spec in specs))
            raise BenchError(f"--only '{pattern}' matches no run (accepted: {names}, or NAME@LINK, e.g. "
                             f"{specs[0].entry}@100mbit-5ms)")
    return [spec for spec in specs if any(_matches(spec, pattern) for pattern in patterns)]


def _matches(spec: RunSpec, pattern: str) -> bool:
    return fnmatch.fnmatchcase(spec.name, pattern) or fnmatch.fnmatchcase(spec.entry, pattern)
