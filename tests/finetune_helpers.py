"""Shared helpers of the finetune tests: a tiny WordPiece vocab and small random models."""
from __future__ import annotations

import argparse
from pathlib import Path

from fedbiobert.finetune.cli import build_parser

WORDS = ["the", "patient", "has", "breast", "cancer", "and", "colon", "tumour", "no", "disease", ".", ",",
         "aspirin", "was", "given", "ataxia", "telangiectasia", "syndrome", "of", "a"]


def write_vocab(path: Path) -> Path:
    pieces = ["##s", "##e", "##a", "##t", "##o", "##i", "##n"] + list("abcdefghijklmnopqrstuvwxyz")
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *pieces]) + "\n",
                    encoding="utf-8")
    return path


def options(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(list(args))


def tiny_model_args(vocab: Path) -> list[str]:
    return ["--model", "none", "--tokenizer", str(vocab), "--hidden_size", "16", "--num_hidden_layers", "1",
            "--num_attention_heads", "2", "--intermediate_size", "32", "--lr", "1e-3"]
