"""Write a benchmark's outputs: results.json, machine.json, results.md and loss_vs_time.png."""
from __future__ import annotations

from pathlib import Path

from fedbiobert.atomic import atomic_write, write_json_atomically, write_text_atomically
from fedbiobert.bench.presets import Preset
from fedbiobert.bench.results import describe_link

TABLE_COLUMNS = ("run", "link", "s/round", "tokens/s", "speedup vs FedBERT (paper)", "like for like",
                 "vs 0-L masked", "link overhead", "of stage bound", "s to target", "MB up/round", "MB down/round",
                 "val loss ± SE", "vs like-for-like", "status")


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _megabytes(value) -> str:
    return "-" if value is None else f"{value / 1e6:,.2f}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _to_target(row: dict) -> str:
    if row.get("reached_target") is False:
        return "never"
    return _num(row.get("seconds_to_target"), 1)


def _quality(row: dict) -> str:
    if row.get("val_loss") is None:
        return "-"
    se = row.get("val_loss_se")
    return f"{row['val_loss']:.3f} ± {se:.3f}" if se is not None else f"{row['val_loss']:.3f}"


def _versus(row: dict) -> str:
    delta = row.get("val_loss_vs_baseline")
    if delta is None:
        return "-"
    verdict = {True: "beyond noise", False: "within noise", None: "no SE"}[row.get("val_loss_differs")]
    return f"{delta:+.3f} ({verdict})"


def table_row(row: dict) -> list[str]:
    return [row["name"], describe_link(row), _num(row.get("seconds_per_round"), 2),
            _num(row.get("tokens_per_second"), 0), _ratio(row.get("speedup_vs_fedbert")),
            _ratio(row.get("speedup_like_for_like")), _ratio(row.get("speedup_vs_fedbert_masked")),
            _ratio(row.get("link_overhead")), _percent(row.get("bound_fraction")), _to_target(row),
            _megabytes(row.get("bytes_up_per_round")), _megabytes(row.get("bytes_down_per_round")),
            _quality(row), _versus(row), row["status"]]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in table_row(row)) + " |" for row in rows]
    return "\n".join(lines)


def breakdown_table(rows: list[dict]) -> str | None:
    """Where each run's time went (summary.json time_breakdown, all rounds; None if no run has it)."""
    timed = [row for row in rows if row.get("time_breakdown")]
    if not timed:
        return None
    header = ["run", "pipeline efficiency"] + [f"{role} {key} s" for role in ("client", "server")
                                               for key in ("compute", "wait", "comm")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in timed:
        breakdown = row["time_breakdown"]
        cells = [row["name"], _num(row.get("pipeline_efficiency"), 2)]
        cells += [_num(breakdown.get(role, {}).get(key), 1) for role in ("client", "server")
                  for key in ("compute", "wait", "comm")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


GAP_COLUMNS = (("client", "start"), ("client", "switch"), ("client", "drain"), ("client", "barrier"),
               ("client", "fedavg"), ("client", "wait"), ("client", "comm"), ("server", "start"),
               ("server", "barrier"), ("server", "fedavg"))


def gaps_table(rows: list[dict]) -> str | None:
    """Per run, seconds per round (steady medians, results.round_gaps) of the round's parts besides the
    steps, beside the busiest stage's compute and the round (None if no run has them)."""
    measured = [row for row in rows if row.get("round_gaps") and row.get("stage_compute")]
    if not measured:
        return None
    header = ["run", "s/round", "busiest compute", "of stage bound"]
    header += [f"{role} {part}" for role, part in GAP_COLUMNS] + ["hand-off (not in s/round)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in measured:
        gaps = row["round_gaps"]
        cells = [row["name"], _num(row.get("seconds_per_round"), 3), _num(row["stage_compute"].get("busiest"), 3),
                 _percent(row.get("bound_fraction"))]
        cells += [_num(gaps.get(role, {}).get(part), 3) for role, part in GAP_COLUMNS]
        cells.append(_num(gaps.get("handoff"), 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stages_table(rows: list[dict]) -> str | None:
    """Per-step stage seconds, bytes and peak memory per role (None if no run has them)."""
    measured = [row for row in rows if row.get("per_step")]
    if not measured:
        return None
    header = ["run", "client s/step", "server s/step", "MB up/step", "MB down/step", "client peak MB",
              "server peak MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in measured:
        step, memory = row["per_step"], row.get("memory") or {}
        cells = [row["name"], _num(step["client_compute_seconds"], 3), _num(step["server_compute_seconds"], 3),
                 _megabytes(step["bytes_up"]), _megabytes(step["bytes_down"]),
                 _num(memory.get("client", {}).get("peak_rss_mb"), 0),
                 _num(memory.get("server", {}).get("peak_rss_mb"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# "How to read it", the notes under the table: those on the timing columns, then (with --repeat) how
# passes merge, then the other columns'.
_TIMING_NOTES = (
    "- **s/round** is the median wall time of the rounds after the first; round 1 includes warm-up and is "
    "left out (it is in results.json as first_round_seconds). A round's time covers training and FedAvg, "
    "up to the last process's end of FedAvg; the hand-off of the round's report to rank 0 and the round-end "
    "validation, export and checkpoint are not training and are left out (every process waits for them, "
    "so no algorithm absorbs them in idle time).",
    "- **tokens/s** is training tokens over the wall time of the same rounds.",
)
_COLUMN_NOTES = (
    "- **speedup vs fedbert 0-L** = s/round of `fedbert-0-L` (the original FedBERT: embeddings and MLM head "
    "on the client, every encoder layer on the server) under the same link / this run's s/round "
    "(> 1: faster); centralized, which has no link, compares with the no-link baseline. As the paper "
    "describes it, FedBERT's server returns its last hidden states at every position and the client returns "
    "their gradient: four activation-sized transfers per step.",
    "- **like for like**: against FedBERT with the same head placement (head on the server: "
    "`fedbert-0-L-serverhead`, whose client waits only for the gradient at the cut; head on the client and "
    "full-model algorithms: `fedbert-0-L`). The paper column compares every run with the published "
    "FedBERT (head on the client); this one does not credit a run for moving its head.",
    "- **link overhead**: s/round with the link / the same run's without (1.00x: the link costs nothing). "
    "A speed-up over an emulated link depends on how fast the machine computes (a faster machine spends "
    "a larger share of the round on the link); this ratio and the next depend on it far less.",
    "- **of stage bound** (fedbiobert without a link): the like-for-like speed-up as a share of what the "
    "run's own stage times allow, the baseline's s/round / this run's busiest process's compute per round; "
    "that share is the busiest stage's compute / this run's s/round (100%: the round took no longer than "
    "its busiest stage, every bit of overlap the stages allow). results.json keeps the earlier form, "
    "serial_stage_bound (FedBERT's client + server compute / the busiest stage): FedBERT's server steps "
    "its optimiser while its client back-propagates, so its round can be shorter than that sum.",
    "- **s to target**: cumulative training seconds until the validation loss first reaches the final "
    "validation loss of `fedbert-0-L` (no link), checked at round ends; `never` if it does not within the "
    "preset's rounds.",
    "- **val loss ± SE**: MLM loss of the joined model on a fixed validation set drawn from every corpus "
    "file's held-out documents (the same positions for every run), with its standard error over blocks; "
    "**vs like-for-like**: the difference to the like-for-like baseline, beyond noise when it exceeds "
    "1.96 standard errors of the difference.",
    "- **vs 0-L masked**: the same against `fedbert-0-L-masked`, whose server returns only the rows at the "
    "masked positions (and gets their gradient back): a stronger baseline than the paper's, shown so the "
    "gain from the protocol alone can be read.",
    "- **link**: emulated WAN between each client process and its server (bandwidth per direction, one-way "
    "latency); it carries split traffic and the per-round model exchange, and FedAvg's model exchange too. "
    "Centralized training has no link and runs once.",
    "- **processes** (results.json nproc, num_device): fedbiobert 1 server + client processes; fedbert "
    "(server_schedule parallel) a server replica per client process; fedavg client processes only; "
    "centralized 1. Every process of a run shares this machine's cores.",
    "- **MB up/down per round**: bytes client processes sent / received per round (activations, gradients, "
    "labels, and the model exchange of FedAvg), summed over client processes, as the engine counts them.",
    "- results.json also has each run's final global (training) MLM loss, validation perplexity and "
    "validation loss per corpus file (val_loss_by_file).",
    "- loss_vs_time.png: validation and global loss at each round end against cumulative training time.",
)


def results_markdown(rows: list[dict], machine: dict, preset: Preset, command: str) -> str:
    parts = [*_preamble(rows, machine, preset, command), "", markdown_table(rows), "", "How to read it:",
             *_TIMING_NOTES, *_repeats_note(rows), *_COLUMN_NOTES, *_appendices(rows)]
    return "\n".join(parts) + "\n"


def _preamble(rows: list[dict], machine: dict, preset: Preset, command: str) -> list[str]:
    """The title and what ran where: command, machine, model and the token budget every run shares."""
    budget = sorted({row["tokens_per_round_budget"] for row in rows})
    return [
        f"# FedBioBERT benchmark: preset `{preset.name}`",
        "",
        f"- command: `{command}`",
        f"- machine: {machine['device']} ({machine['processor']}, {machine['cpu_count']} CPU cores), "
        f"{machine['platform']}, Python {machine['python']}, torch {machine['torch']}, "
        f"commit {machine.get('git_commit') or 'unknown'}",
        f"- model: {preset.num_layers} layers, hidden {preset.hidden_size}, {preset.num_attention_heads} heads, "
        f"intermediate {preset.intermediate_size}, vocab {preset.vocab_size}; sequences of {preset.max_len} tokens, "
        f"batch {preset.batch_size}",
        f"- budget: {preset.n_comm_rounds} rounds; {preset.n_clients} clients x {preset.num_batch} batches per round "
        f"(centralized: 1 client x {preset.n_clients * preset.num_batch} batches) = "
        f"{', '.join(f'{tokens:,}' for tokens in budget)} tokens per round for every run",
    ]


def _appendices(rows: list[dict]) -> list[str]:
    """What follows the notes: the time breakdown and per-step tables (where any run has them), then the
    failed runs."""
    parts = []
    breakdown = breakdown_table(rows)
    if breakdown:
        parts += ["", "Where the time goes (seconds over all rounds, mean over a role's processes; pipeline "
                  "efficiency = busiest process's compute time / round time, 1.0 = it never waited):", "",
                  breakdown]
    gaps = gaps_table(rows)
    if gaps:
        parts += ["", "The round's gaps (seconds per round, medians of the steady rounds, mean over a role's "
                  "processes): start = from the round's start to the first step (a server: to the first "
                  "message, the pipeline's fill); switch = a client process between one silo's end and the "
                  "next silo's first step; drain = settling each silo's awaited OUTPUTs at its end (head on "
                  "the client; final-head compute as well as waiting); barrier = waiting at the round-end "
                  "barrier for the other processes; fedavg = from that barrier to the round's end (all-reduce, "
                  "server optimiser, download); wait and comm = all the round's blocked receives (the "
                  "barrier included) and sends; hand-off = building and gathering the round's report on rank "
                  "0 after FedAvg (not training: not in s/round). The busiest stage's compute is what the "
                  "stage bound allows: s/round beyond it is the gaps its process waited or sent in.", "", gaps]
    stages = stages_table(rows)
    if stages:
        parts += ["", "Per step (one batch of one silo; steady rounds): each role's compute seconds, the "
                  "split-learning bytes each way (the FedAvg model exchange is not in them), and each role's "
                  "peak resident memory (the largest process of the role):", "", stages]
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        parts += ["", "Failed runs:"] + [f"- `{row['name']}`: {row['error']} (log: {row['log']})" for row in failed]
    return parts


def _repeats_note(rows: list[dict]) -> list[str]:
    passes = max((row.get("passes", 1) for row in rows), default=1)
    if passes == 1:
        return []
    return [f"- **--repeat {passes}**: the matrix ran {passes} times over, interleaved; s/round and tokens/s are "
            "each run's medians over its passes (every pass's s/round is in results.json, "
            "seconds_per_round_passes), so a slow spell of this machine does not decide a ratio."]


def plot_loss_vs_time(rows: list[dict], path: Path) -> Path | None:
    """Two panels (validation loss, global training loss) vs cumulative training time, a line per run."""
    plotted = [row for row in rows if row["status"] == "ok" and row.get("curve")]
    if not plotted:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharex=True)
    colours = _colours(plotted, plt)
    for row in plotted:
        style = {"color": colours[row["entry"]], "linestyle": "-" if row.get("link") is None else "--",
                 "marker": "o", "markersize": 4, "label": f"{row['entry']} ({describe_link(row)})"}
        for axis, key in zip(axes, ("val_loss", "global_loss")):
            points = [(point["train_seconds"], point[key]) for point in row["curve"] if point.get(key) is not None]
            if points:
                axis.plot(*zip(*points), **style)
    for axis, title in zip(axes, ("validation MLM loss (round end)", "global MLM training loss (round mean)")):
        axis.set_title(title)
        axis.set_xlabel("training wall time (s)")
        axis.set_ylabel("MLM loss")
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    columns = min(4, len(labels))
    figure.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    figure.suptitle("MLM loss vs training time (solid: no link emulation, dashed: emulated link)")
    figure.tight_layout(rect=(0, 0.04 + 0.04 * -(-len(labels) // columns), 1, 1))
    with atomic_write(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=120)
    plt.close(figure)
    return path


def _colours(rows: list[dict], plt) -> dict[str, tuple]:
    entries = list(dict.fromkeys(row["entry"] for row in rows))
    palette = plt.get_cmap("tab10")
    return {entry: palette(index % 10) for index, entry in enumerate(entries)}


def write_outputs(out_dir: Path, rows: list[dict], machine: dict, preset: Preset, command: str,
                  plot: bool = True) -> list[Path]:
    """The JSON and markdown files (after every run, so a partial benchmark is readable), and the plot;
    each written atomically, so an interrupted benchmark never leaves half a file."""
    write_json_atomically(out_dir / "results.json", rows)
    write_json_atomically(out_dir / "machine.json", {**machine, "preset": preset.name, "command": command})
    write_text_atomically(out_dir / "results.md", results_markdown(rows, machine, preset, command))
    plot = plot_loss_vs_time(rows, out_dir / "loss_vs_time.png") if plot else None
    return [out_dir / "results.json", out_dir / "machine.json", out_dir / "results.md"] + ([plot] if plot else [])
