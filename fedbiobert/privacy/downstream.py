"""What a defence costs: NER F1 of a model fine-tuned with the defence at the cut, as a split deployment
would run it.

The fine-tuner's own pieces (fedbiobert/finetune: data, model with a fresh token-classification head,
training loop, prediction, seqeval scoring) run unchanged; a forward hook on the layer at the cut replaces
its output with the defended one (defence.defend: clipping, then noise) in training and at test time alike,
since the server only ever sees defended activations. Training back-propagates through the defence (the
noise is a constant; the clip is differentiable), the FedBERT-style split fine-tuning. One centralized
run per setting with the same seed, data and schedule: F1 differences are the defence's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fedbiobert.finetune.modeling import load_pretrained
from fedbiobert.finetune.run import encode, load_task_data, score
from fedbiobert.finetune.train import Hyper, predict, train_centralized
from fedbiobert.privacy.defence import Defence, defend


@dataclass(frozen=True)
class F1Settings:
    max_train: int = 1000
    max_test: int = 300
    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 16
    max_len: int = 64


def layer_at_cut(model, cut: int) -> torch.nn.Module:
    """The module whose output is the hidden state after `cut` layers (0: the embeddings)."""
    base = model.base_model
    return base.embeddings if cut == 0 else base.encoder.layer[cut - 1]


def install_defence(model, cut: int, defence: Defence, seed: int):
    """Defend the output of the layer at `cut` on every forward; returns the hook's handle."""
    generator = torch.Generator().manual_seed(seed)

    def hook(module, inputs, output):
        if isinstance(output, tuple):  # an encoder layer may return (hidden, extras...)
            return (defend(output[0], defence, generator).to(output[0].dtype), *output[1:])
        return defend(output, defence, generator).to(output.dtype)
    return layer_at_cut(model, cut).register_forward_hook(hook)


def defended_f1(model_dir: Path, ner_dir: Path, cut: int, defence: Defence, settings: F1Settings,
                seed: int = 1) -> dict:
    """Test-split scores of one fine-tuning of `model_dir` on the NER folder `ner_dir` with `defence` at `cut`."""
    task = load_task_data("ner", ner_dir, settings.max_train, settings.max_test, 0.1)
    model, tokenizer = load_pretrained(model_dir, "ner", len(task.labels), None, settings.max_len, seed)
    handle = install_defence(model, cut, defence, seed)
    pad_id = tokenizer.pad_token_id
    train = encode(task, task.train, tokenizer, settings.max_len)
    test = encode(task, task.test, tokenizer, settings.max_len)
    hyper = Hyper(lr=settings.lr, batch_size=settings.batch_size)
    started = time.perf_counter()
    losses = train_centralized(model, train, hyper, settings.epochs, seed, pad_id)
    scores = score(task, task.test, test, predict(model, test, hyper, pad_id))
    handle.remove()
    return {"f1": round(scores["f1"], 4), "precision": round(scores["precision"], 4),
            "recall": round(scores["recall"], 4), "steps": len(losses), "train_examples": len(task.train),
            "test_sentences": len(task.test), "seconds": round(time.perf_counter() - started, 1)}
