"""The small parsers of structured option values (booleans, --fl_aggregate, fault injections, GPU
lists) and the one-line ConfigError they raise."""
from __future__ import annotations

import argparse

AGGREGATE_WEIGHTINGS = ("samples", "uniform")


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not a boolean (accepted: True or False)")


def parse_fl_aggregate(text: str) -> dict[str, str]:
    """`scheme=federated_average,weighting=samples` -> dict; FedAvg is the only scheme."""
    options = {"scheme": "federated_average", "weighting": "samples"}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in options:
            raise ConfigError(f"--fl_aggregate '{text}' is not understood (accepted: "
                              "scheme=federated_average[,weighting=samples|uniform])")
        options[key] = value
    if options["scheme"] not in ("federated_average", "fedavg"):
        raise ConfigError(f"--fl_aggregate scheme '{options['scheme']}' is not supported "
                          "(accepted: federated_average)")
    if options["weighting"] not in AGGREGATE_WEIGHTINGS:
        raise ConfigError(f"--fl_aggregate weighting '{options['weighting']}' is not supported "
                          f"(accepted: {', '.join(AGGREGATE_WEIGHTINGS)})")
    return options


FAULT_KINDS = ("nan", "error", "stall")


def parse_injections(text: str | None, flag: str, default_kind: str | None = None) -> dict[tuple[int, int], str]:
    """'CLIENT:ROUND:KIND,...' (or 'CLIENT:ROUND,...' with a default kind) -> {(client, 0-based round): kind}."""
    accepted = ("CLIENT:ROUND pairs with ROUND >= 1, e.g. 1:2,3:2" if default_kind else
                f"CLIENT:ROUND:KIND with ROUND >= 1 and KIND one of {', '.join(FAULT_KINDS)}, e.g. 1:2:error")
    faults = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        fields = item.split(":")
        if default_kind is not None and len(fields) == 2:
            fields.append(default_kind)
        if not (len(fields) == 3 and fields[0].isdigit() and fields[1].isdigit() and int(fields[1]) >= 1
                and fields[2] in FAULT_KINDS):
            raise ConfigError(f"{flag} '{text}' is not understood (accepted: {accepted})")
        faults[(int(fields[0]), int(fields[1]) - 1)] = fields[2]
    return faults


def parse_gpu_ids(text: str | None) -> list[int] | None:
    if text is None or str(text).strip() == "":
        return None
    cleaned = str(text).strip().strip("[]")
    try:
        return [int(part) for part in cleaned.replace(" ", ",").split(",") if part]
    except ValueError:
        raise ConfigError(f"--gpu_ids '{text}' is not a list of integers (accepted: e.g. 0,1,2)") from None
