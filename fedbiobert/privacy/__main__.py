"""`python -m fedbiobert.privacy audit [MODEL] --out DIR`: what a curious server reads from the activations.

    python -m fedbiobert.privacy audit models/minilm-l6 --preset small --out runs/privacy

DIR gets results.json (per cut: top1, top5, entity and exact-sequence recovery; per defence: recovery and
NER F1; the controls; label leakage), results.md, privacy.png, and parts/ (finished units, for --resume).
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time

PROG = "python -m fedbiobert.privacy"


def build_parser() -> argparse.ArgumentParser:
    from fedbiobert.privacy.plan import add_arguments
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    audit = commands.add_parser("audit", help="audit a model's activations per cut and the defences",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    from fedbiobert.privacy.activations import encoder_layers
    from fedbiobert.privacy.plan import make_plan
    try:
        plan = make_plan(args, encoder_layers)
        if plan.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"--device {plan.device} but CUDA is not available here (accepted: cpu)")
    except ValueError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load would clutter the progress lines
    from fedbiobert.bench.results import machine_info
    from fedbiobert.experiments.progress import say
    from fedbiobert.privacy.audit import run_audit
    from fedbiobert.privacy.report import write_outputs
    header = {"audit": "privacy", "command": f"{PROG} " + shlex.join(argv), "model": str(plan.model_dir),
              "preset": dataclasses.asdict(plan.preset), "ner": str(plan.ner), "seed": plan.seed,
              "device": plan.device, "machine": machine_info()}
    say(f"privacy audit ({plan.preset.name}) of {plan.model_dir}: cuts {plan.cuts}, {len(plan.defences)} defence "
        f"setting(s) at cut {plan.defence_cut}; outputs in {plan.out}")
    started = time.time()
    try:
        results = run_audit(plan, header)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; finished parts are kept (continue with --resume)", file=sys.stderr)
        return 130
    say("[4/4] writing results.json, results.md, privacy.png")
    write_outputs(results, plan.out)
    say(f"privacy audit done in {time.time() - started:.0f} s; see {plan.out / 'results.md'} and "
        f"{plan.out / 'privacy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
