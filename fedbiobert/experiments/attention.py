"""`python -m fedbiobert.experiments attention`: how continual pre-training moved the general model's heads.

Liu & Miller 2020 (Table 2) and Clark et al. 2019: for the general model and its continual pre-trainings
(centralized, FedAvg, FedBioBERT; trained here with the bench's runner on a small budget, or any HF folders
given with --models NAME=PATH,...), on the same held-out biomedical documents (medical-abstracts test
texts, never pre-trained on): each head's attention entropy (mean over queries, then documents); the
Spearman correlation of two models' per-head entropies; the mean absolute difference of their
head-by-head Jensen-Shannon matrices (Clark's head distances); and how far each head moved (mean JS of
head h in one model against head h in the other, same tokens). Attention probabilities come from eager
attention (`attn_implementation="eager"`), the only kind that returns them.

    python -m fedbiobert.experiments attention --preset small --out runs/attention

OUT gets results.json, results.md, attention.png (per model: the layer x head entropy heatmap and the JS
matrix), runs/ (pre-training outputs) and logs/. `--resume` keeps finished pre-training runs.
"""
from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedbiobert.bench.matrix import BenchError
from fedbiobert.experiments import attention_analysis as stats
from fedbiobert.experiments.attention_report import write_results
from fedbiobert.experiments.common import (PRETRAINING, add_common_arguments, add_pretraining_arguments,
                                           check_common, check_cut, header, pretrain)
from fedbiobert.experiments.parity_plan import GENERAL, pretraining_specs
from fedbiobert.experiments.progress import say

DOCUMENTS = "classification/medical_abstracts/test.csv"


@dataclass(frozen=True)
class AttentionPreset:
    name: str
    description: str
    documents: int                   # the first N medical-abstracts test texts
    max_len: int                     # sub-tokens per document, specials included
    pretraining: str                 # a budget of common.PRETRAINING
    entries: str = "centralized,fedavg,fedbiobert-H-H"


PRESETS = {
    "tiny": AttentionPreset("tiny", "test-sized", documents=4, max_len=32, pretraining="tiny",
                            entries="centralized,fedbiobert-H-H"),
    "small": AttentionPreset("small", "2-core CPU, about 6 minutes: 3 continual pre-trainings of 81,920 tokens, "
                             "64 documents of up to 128 sub-tokens", documents=64, max_len=128, pretraining="small"),
    "full": AttentionPreset("full", "GPU: 3 continual pre-trainings of the full budget, 1,000 documents of up to "
                            "256 sub-tokens", documents=1000, max_len=256, pretraining="full"),
}
PUBLIC_PRESETS = ("small", "full")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, PUBLIC_PRESETS)
    add_pretraining_arguments(parser)
    parser.add_argument("--models", help="NAME=PATH,... HF folders to compare with the general model instead of "
                        "pre-training (e.g. centralized=runs/parity/runs/centralized/round2)")
    parser.add_argument("--documents", type=int, help="documents to analyse (default: the preset's)")
    parser.add_argument("--max_len", type=int, help="sub-tokens per document (default: the preset's)")


@dataclass
class Plan:
    preset: AttentionPreset
    out: Path
    init_from: Path
    given: dict[str, Path]           # --models (empty: pre-train the preset's entries)
    specs: list
    documents: int
    max_len: int


def parse_models(text: str | None) -> dict[str, Path]:
    if not text:
        return {}
    models = {}
    for part in (piece.strip() for piece in text.split(",") if piece.strip()):
        name, _, path = part.partition("=")
        if not name or not path or name in models or name == GENERAL:
            raise BenchError(f"--models '{text}' (accepted: NAME=PATH,... with distinct names other than "
                             f"{GENERAL})")
        if not (Path(path) / "config.json").is_file():
            raise BenchError(f"--models: '{path}' is not an HF model folder (accepted: a folder with config.json)")
        models[name] = Path(path)
    return models


def make_plan(args) -> Plan:
    """Every input checked before any work; BenchError (one line) for the first bad one."""
    check_common(args, PRESETS, ("classification/medical_abstracts",))
    preset = PRESETS[args.preset]
    given = parse_models(args.models)
    documents = preset.documents if args.documents is None else args.documents
    max_len = preset.max_len if args.max_len is None else args.max_len
    if documents < 1:
        raise BenchError(f"--documents {documents} (accepted: an integer >= 1)")
    if not 8 <= max_len <= 512:
        raise BenchError(f"--max_len {max_len} (accepted: 8..512)")
    specs = []
    if not given:
        if not (Path(args.data_root) / "pretrain").is_dir():
            raise BenchError(f"--data_root '{args.data_root}' has no pretrain/ (accepted: the shared data folder)")
        budget = replace(PRETRAINING[preset.pretraining], entries=preset.entries)
        specs = pretraining_specs(budget, Path(args.init_from), check_cut(args), None)
    return Plan(preset, Path(args.out), Path(args.init_from), given, specs, documents, max_len)


def read_documents(data_root: Path, count: int) -> list[str]:
    with (data_root / DOCUMENTS).open(encoding="utf-8", newline="") as stream:
        texts = [row["text"] for row in csv.DictReader(stream) if row.get("text")]
    return texts[:count]


def load_models(models: dict[str, Path]) -> dict:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # an MLM export has no pooler and a head we do not use: expected, not news
    hf_logging.disable_progress_bar()
    loaded = {}
    for name, path in models.items():
        model = AutoModel.from_pretrained(str(path), attn_implementation="eager")  # eager: returns probabilities
        loaded[name] = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    shapes = {name: (m.config.num_hidden_layers, m.config.num_attention_heads) for name, m in loaded.items()}
    if len(set(shapes.values())) > 1:
        raise BenchError(f"the models' layers x heads differ: {shapes} (accepted: one architecture)")
    return loaded


def document_attention(model, inputs) -> np.ndarray:
    """[layers x heads, queries, keys] attention probabilities of one document."""
    import torch
    with torch.no_grad():
        output = model(**inputs, output_attentions=True)
    stacked = torch.cat([layer[0] for layer in output.attentions])  # each [1, heads, q, k] -> [L*H, q, k]
    return stacked.double().cpu().numpy()


def analyse(models: dict[str, Path], texts: list[str], max_len: int, tokenizer_path: Path) -> dict:
    """Per model: mean per-head entropy and mean JS matrix over documents; per pair: mean same-head JS."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))  # one tokenizer: the same tokens everywhere
    loaded = load_models(models)
    names = list(loaded)
    entropy = {name: 0.0 for name in names}
    js = {name: 0.0 for name in names}
    moved = {(a, b): 0.0 for i, a in enumerate(names) for b in names[i + 1:]}
    tokens = 0
    for index, text in enumerate(texts, 1):
        inputs = tokenizer(text, truncation=True, max_length=max_len, return_tensors="pt")
        tokens += int(inputs["input_ids"].shape[1])
        attention = {name: document_attention(model, inputs.to(model.device)) for name, model in loaded.items()}
        for name in names:
            entropy[name] = entropy[name] + stats.head_entropy(attention[name])
            js[name] = js[name] + stats.head_js_matrix(attention[name])
        for a, b in moved:
            moved[(a, b)] = moved[(a, b)] + stats.same_head_js(attention[a], attention[b])
        if index % 16 == 0 or index == len(texts):
            say(f"    {index}/{len(texts)} documents")
    count = len(texts)
    layers, heads = (loaded[names[0]].config.num_hidden_layers, loaded[names[0]].config.num_attention_heads)
    return {"layers": layers, "heads": heads, "documents": count, "mean_tokens": tokens / count,
            "entropy": {name: entropy[name] / count for name in names},
            "js": {name: js[name] / count for name in names},
            "moved": {pair: value / count for pair, value in moved.items()}}


def run(args: argparse.Namespace, argv: list[str]) -> int:
    plan = make_plan(args)
    plan.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    started = time.time()
    say(f"attention ({plan.preset.name}): outputs in {plan.out}")
    models = {GENERAL: plan.init_from}
    if plan.given:
        models.update(plan.given)
    else:
        say(f"continual pre-training: {', '.join(spec.name for spec in plan.specs)}")
        models.update(pretrain(PRETRAINING[plan.preset.pretraining], plan.specs, args, plan.out))
        missing = [spec.name for spec in plan.specs if spec.name not in models]
        if missing:
            say(f"experiments: error: pre-training failed for {', '.join(missing)} (logs in {plan.out / 'logs'})",
                error=True)
            if len(models) < 2:
                return 1
    texts = read_documents(Path(args.data_root), plan.documents)
    say(f"attention of {len(models)} models on {len(texts)} documents (max {plan.max_len} sub-tokens)")
    analysis = analyse(models, texts, plan.max_len, plan.init_from)
    head = header("attention", plan.preset, argv, init_from=str(plan.init_from),
                  models={name: str(path) for name, path in models.items()}, max_len=plan.max_len,
                  pretraining=PRETRAINING[plan.preset.pretraining].description if not plan.given else None)
    write_results(plan.out, head, analysis)
    say(f"attention done in {time.time() - started:.0f} s; see {plan.out / 'results.md'} and "
        f"{plan.out / 'attention.png'}")
    return 0 if len(models) == 1 + max(len(plan.given), len(plan.specs)) else 1
