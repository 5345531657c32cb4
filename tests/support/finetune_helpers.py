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


def save_small_encoder(folder: Path, tokenizer_path: Path, arch: str = "bert", seed: int = 0) -> Path:
    """A real HF folder as the engine exports it: a tiny random *ForMaskedLM and its tokenizer."""
    from fedbiobert.data.tokenizer import load_tokenizer
    from fedbiobert.model.build import ModelSpec, build_full_model
    tokenizer = load_tokenizer(tokenizer_path)
    spec = ModelSpec(arch=arch, vocab_size=len(tokenizer), hidden_size=16, num_attention_heads=2,
                     intermediate_size=32, num_layers=1, max_len=64, pad_token_id=tokenizer.pad_token_id)
    build_full_model(spec, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
