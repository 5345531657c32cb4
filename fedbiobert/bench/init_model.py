"""`python -m fedbiobert.bench.init_model --preset base --out DIR`: a randomly initialised HF masked-LM folder
(weights, config, tokenizer) of a benchmark preset's shape, for benchmarks of runs that need `--init_from`.

LoRA (`--lora_rank`) adapts a pre-trained model, so its runs need a folder to start from; the packaged
general model is 6 layers of width 384, not the BERT-base shape the `base` preset measures. Stage times
and bytes depend on the shape, not on what the weights know, so a random folder of the right shape
measures them faithfully (quality is measured elsewhere, from the real pre-trained model):

    python -m fedbiobert.bench.init_model --preset base --out runs/base-init
    python -m fedbiobert.bench --preset base --only 'fedbiobert-6-6,fedbert-0-12' --out runs/bench-base-lora \\
        --run_flags '--init_from runs/base-init --lora_rank 8'
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedbiobert.bench.presets import PRESETS, PUBLIC_PRESETS

DEFAULT_TOKENIZER = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "vocab" /
                     "scivocab_uncased.txt").resolve()
PROG = "python -m fedbiobert.bench.init_model"


def write_init_model(preset_name: str, out: Path, tokenizer_path: Path, seed: int = 0) -> Path:
    """The folder: BERT of the preset's layers, width, heads and feed-forward size; the tokenizer's vocabulary."""
    from fedbiobert.data.tokenizer import load_tokenizer
    from fedbiobert.model.build import ModelSpec, build_full_model
    preset = PRESETS[preset_name]
    tokenizer = load_tokenizer(tokenizer_path)
    spec = ModelSpec(arch="bert", vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
                     num_attention_heads=preset.num_attention_heads, intermediate_size=preset.intermediate_size,
                     num_layers=preset.num_layers, max_len=max(512, preset.max_len),
                     pad_token_id=tokenizer.pad_token_id)
    model = build_full_model(spec, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", help=f"accepted: {', '.join(PUBLIC_PRESETS)} (default base)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (created)")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="vocab.txt or tokenizer folder "
                        "(default: the shared SciBERT vocabulary)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.preset not in PUBLIC_PRESETS:
        parser.exit(2, f"{PROG}: error: --preset '{args.preset}' is unknown (accepted: {', '.join(PUBLIC_PRESETS)})\n")
    if not args.tokenizer.exists():
        parser.exit(2, f"{PROG}: error: --tokenizer '{args.tokenizer}' does not exist (accepted: a vocab.txt or an "
                    "HF tokenizer folder)\n")
    if args.out.exists() and any(args.out.iterdir()):
        parser.exit(2, f"{PROG}: error: --out '{args.out}' exists and is not empty (accepted: a new folder)\n")
    folder = write_init_model(args.preset, args.out, args.tokenizer, args.seed)
    print(f"random-init {args.preset} model written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
