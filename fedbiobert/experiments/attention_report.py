"""The attention experiment's outputs: results.json, results.md and attention.png.

Definitions (repeated in results.md): a head's entropy is the mean over a document's queries of its
attention row's entropy (nats), averaged over documents; `spearman_entropy` is Spearman's rho between two
models' per-head entropies (every layer's heads); `js_matrix_mad` is the mean absolute difference of two
models' head-by-head Jensen-Shannon matrices (bits, off-diagonal entries); `same_head_js` the mean over
heads of the JS (bits) between head h of one model and head h of the other on the same tokens.
"""
from __future__ import annotations

import numpy as np

from fedbiobert.atomic import atomic_write, write_json_atomically, write_text_atomically
from fedbiobert.experiments import attention_analysis as stats


def summarise(analysis: dict) -> dict:
    """The JSON view: per model its entropies (layer x head) and summaries; per pair the comparisons."""
    layers, heads = analysis["layers"], analysis["heads"]
    models = {}
    for name, entropy in analysis["entropy"].items():
        grid = np.asarray(entropy).reshape(layers, heads)
        js = np.asarray(analysis["js"][name])
        models[name] = {"mean_entropy": float(grid.mean()), "entropy_by_layer": grid.mean(axis=1).tolist(),
                        "entropy": grid.tolist(), "mean_js_between_heads": _off_diagonal_mean(js),
                        "js_matrix": js.tolist()}
    pairs = []
    for (a, b), moved in analysis["moved"].items():
        moved = np.asarray(moved).reshape(layers, heads)
        pairs.append({"a": a, "b": b,
                      "spearman_entropy": stats.spearman(analysis["entropy"][a], analysis["entropy"][b]),
                      "js_matrix_mad": stats.mean_abs_difference(analysis["js"][a], analysis["js"][b]),
                      "same_head_js": float(moved.mean()), "same_head_js_by_layer": moved.mean(axis=1).tolist()})
    return {"layers": layers, "heads": heads, "documents": analysis["documents"],
            "mean_tokens": analysis["mean_tokens"], "models": models, "pairs": pairs}


def _off_diagonal_mean(matrix: np.ndarray) -> float:
    return float(matrix[~np.eye(matrix.shape[0], dtype=bool)].mean())


def write_results(out_dir, header: dict, analysis: dict) -> None:
    results = {**header, **summarise(analysis)}
    write_json_atomically(out_dir / "results.json", results)
    write_text_atomically(out_dir / "results.md", markdown(results))
    plot(results, out_dir / "attention.png")


def markdown(results: dict) -> str:
    layers = results["layers"]
    lines = [f"# Attention experiment ({results['preset']['name']} preset)", "",
             f"Command: `{results['command']}`  ",
             f"Commit: {results['machine'].get('git_commit')}; {results['documents']} documents (medical-abstracts "
             f"test texts, {results['mean_tokens']:.0f} sub-tokens on average, at most {results['max_len']}).", ""]
    if results.get("pretraining"):
        lines += [f"Continual pre-training from `{results['init_from']}`: {results['pretraining']}.", ""]
    lines += ["## Attention entropy per model (nats; mean over heads, and per layer)", "",
              "| model | mean | " + " | ".join(f"layer {i + 1}" for i in range(layers)) + " | mean JS between heads |",
              "|---|---|" + "---|" * layers + "---|"]
    for name, model in results["models"].items():
        cells = " | ".join(f"{value:.3f}" for value in model["entropy_by_layer"])
        lines.append(f"| {name} | {model['mean_entropy']:.3f} | {cells} | {model['mean_js_between_heads']:.3f} |")
    lines += ["", "## Between models", "",
              "| models | Spearman rho of head entropies | mean abs. difference of JS matrices | same-head JS |",
              "|---|---|---|---|"]
    for pair in results["pairs"]:
        lines.append(f"| {pair['a']} vs {pair['b']} | {pair['spearman_entropy']:.3f} | {pair['js_matrix_mad']:.4f} "
                     f"| {pair['same_head_js']:.4f} |")
    lines += ["", _DEFINITIONS]
    return "\n".join(lines) + "\n"


_DEFINITIONS = """Definitions: a head's entropy is the mean over a document's queries of its attention row's entropy
(nats), averaged over documents; Spearman's rho compares two models' per-head entropies (every layer's heads,
ties averaged); the JS matrix holds Clark et al.'s head distances (mean over queries of the Jensen-Shannon
divergence, in bits, between two heads' rows on the same tokens), and its difference between models is the
mean absolute difference of the off-diagonal entries; same-head JS is the mean over heads and queries of the
JS between head h of one model and head h of the other (0: the head did not move; 1: disjoint attention)."""


def plot(results: dict, path) -> None:
    """Row 1: each model's entropy heatmap (layers x heads, one colour scale); row 2: its JS matrix."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = results["models"]
    grids = {name: np.asarray(model["entropy"]) for name, model in models.items()}
    matrices = {name: np.asarray(model["js_matrix"]) for name, model in models.items()}
    low, high = min(g.min() for g in grids.values()), max(g.max() for g in grids.values())
    js_high = max(m.max() for m in matrices.values())
    figure, axes = plt.subplots(2, len(models), figsize=(3.6 * len(models), 7), squeeze=False)
    for column, name in enumerate(models):
        image = axes[0, column].imshow(grids[name], vmin=low, vmax=high, cmap="viridis", aspect="auto")
        axes[0, column].set_title(f"{name}\nentropy (nats)", fontsize=9)
        axes[0, column].set_xlabel("head")
        axes[0, column].set_yticks(range(results["layers"]), [str(i + 1) for i in range(results["layers"])])
        if column == 0:
            axes[0, column].set_ylabel("layer")
        js_image = axes[1, column].imshow(matrices[name], vmin=0, vmax=js_high, cmap="magma")
        axes[1, column].set_title("JS between heads (bits)", fontsize=9)
        axes[1, column].set_xlabel("head (layer-major)")
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8)
    figure.colorbar(js_image, ax=list(axes[1]), shrink=0.8)
    with atomic_write(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)
