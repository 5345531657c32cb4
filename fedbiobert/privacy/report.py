"""The audit's outputs: results.json (everything measured), results.md (the tables) and privacy.png
(recovery per cut; recovery against F1 per defence), each written atomically."""
from __future__ import annotations

from pathlib import Path

from fedbiobert.atomic import atomic_write, write_json_atomically, write_text_atomically


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def cut_table(results: dict) -> list[str]:
    lines = ["| cut (client layers) | top-1 | top-5 | entity top-1 | entity top-5 | exact sequences | "
             "top-1, head on server | linear top-1 | mlp top-1 |", "|---|---|---|---|---|---|---|---|---|"]
    for cut, row in results["cuts"].items():
        decoders = row["decoders"]
        lines.append(f"| {cut} | {_pct(row['top1'])} | {_pct(row['top5'])} | {_pct(row['entity_top1'])} | "
                     f"{_pct(row['entity_top5'])} | {_pct(row['exact_sequences'])} | "
                     f"{_pct(row['top1_with_server_head'])} | {_pct(decoders['linear']['top1'])} | "
                     f"{_pct(decoders['mlp']['top1'])} |")
    for name, row in results["baselines"].items():
        lines.append(f"| baseline: {name} (no activations) | {_pct(row['top1'])} | {_pct(row['top5'])} | "
                     f"{_pct(row['entity_top1'])} | {_pct(row['entity_top5'])} | {_pct(row['exact_sequences'])} "
                     "| | | |")
    return lines


def defence_table(results: dict) -> list[str]:
    lines = ["| defence | noise multiplier (sigma / C) | top-1 | top-5 | entity top-1 | NER F1 | F1 change |",
             "|---|---|---|---|---|---|---|"]
    base = next((row["f1"]["f1"] for row in results["defences"] if row["defence"] == "none"), None)
    for row in results["defences"]:
        found, f1 = row["recovery"], row["f1"]["f1"]
        multiplier = "—" if row["noise_multiplier"] is None else f"{row['noise_multiplier']:.2f}"
        change = "" if base is None else f"{f1 - base:+.4f}"
        lines.append(f"| {row['defence']} | {multiplier} | {_pct(found['top1'])} | {_pct(found['top5'])} | "
                     f"{_pct(found['entity_top1'])} | {f1:.4f} | {change} |")
    return lines


def control_table(results: dict) -> list[str]:
    lines = ["| control | cut | top-1 | top-5 |", "|---|---|---|---|"]
    for name, per_cut in results["controls"].items():
        for cut, row in per_cut.items():
            lines.append(f"| {name.replace('_', ' ')} | {cut} | {_pct(row['top1'])} | {_pct(row['top5'])} |")
    return lines


def markdown(results: dict) -> str:
    silo, public, f1 = results["silo"], results["public"], results["preset"]["f1"]
    lines = [f"# Privacy audit of {results['model']}", "",
             f"Command: `{results['command']}` ({results['seconds']:.0f} s). The curious server trains its decoders "
             f"on {public['sequences']} public sequences ({public['tokens']:,} tokens) and attacks {silo['sequences']} "
             f"held-out silo sequences ({silo['tokens']:,} tokens, {silo['entity_tokens']:,} in entities). "
             "Recovery in % of the silo's text tokens; best of the linear and MLP decoders.", "",
             "## Recovery per cut (no defence)", "", *cut_table(results), "",
             f"## Defences at cut {results['defence_cut']}", "",
             f"NER F1 (strict, seqeval): {results['defences'][0]['f1']['train_examples']} training sentences of "
             f"{Path(results['ner']).name}, {f1['epochs']} epochs, {results['defences'][0]['f1']['test_sentences']} "
             "test sentences, the defence applied at the cut in training and test.", "",
             *defence_table(results), "", "## Controls (a random untrained model of the same config)", "",
             *control_table(results), "", "## Labels with the head on the server", "",
             results["label_leakage"]["head_on_server"] + ".", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Left: top-1/top-5 (all and entity tokens) per cut, the position baseline dashed. Right: top-1 recovery
    against NER F1, a point per defence."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cuts = [int(cut) for cut in results["cuts"]]
    for metric, style in (("top1", "o-"), ("top5", "s-"), ("entity_top1", "o--"), ("entity_top5", "s--")):
        left.plot(cuts, [100 * row[metric] for row in results["cuts"].values()], style, label=metric)
    left.axhline(100 * results["baselines"]["position"]["top1"], color="grey", linestyle=":",
                 label="position baseline top1")
    left.set(xlabel="cut (client encoder layers)", ylabel="tokens recovered (%)", ylim=(0, 102),
             title="recovery per cut")
    left.legend(fontsize=8)
    none = [row for row in results["defences"] if not row["clip"] and not row["sigma"]]
    for clip in sorted({row["clip"] for row in results["defences"]}):
        rows = none + [row for row in results["defences"] if row["clip"] == clip and row["sigma"]]
        x, y = [100 * row["recovery"]["top1"] for row in rows], [row["f1"]["f1"] for row in rows]
        right.plot(x, y, "s-" if clip else "o-", label=f"noise after clip {clip:g}" if clip else "noise only")
        for row, at in zip(rows, zip(x, y)):
            right.annotate(f"{row['sigma']:g}", at, fontsize=7, xytext=(3, 3), textcoords="offset points")
    right.legend(fontsize=8, title="sigma at each point", title_fontsize=8)
    right.set(xlabel="top-1 recovery (%)", ylabel="NER F1", title=f"defences at cut {results['defence_cut']}")
    figure.tight_layout()
    with atomic_write(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)


def write_outputs(results: dict, out: Path) -> None:
    write_json_atomically(out / "results.json", results, parents=True)
    write_text_atomically(out / "results.md", markdown(results))
    plot(results, out / "privacy.png")
