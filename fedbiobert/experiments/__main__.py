"""`python -m fedbiobert.experiments NAME ...`: NAME is an experiment (parity, liu_miller, hilmkil, attention, lora)."""
from __future__ import annotations

import argparse
import sys

from fedbiobert.bench.matrix import BenchError
from fedbiobert.bench.runner import interrupt_on_sigterm
from fedbiobert.experiments import attention, hilmkil, liu_miller, lora, parity

EXPERIMENTS = {"parity": parity, "liu_miller": liu_miller, "hilmkil": hilmkil, "attention": attention,
               "lora": lora}
PROG = "python -m fedbiobert.experiments"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for name, module in EXPERIMENTS.items():
        sub = commands.add_parser(name, help=module.__doc__.split("\n")[0], description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    interrupt_on_sigterm()
    try:
        return EXPERIMENTS[args.experiment].run(args, argv)
    except BenchError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; finished work is kept (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
