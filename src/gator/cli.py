"""The `gator` command. Thin: each subsystem registers its own subcommands and calls library functions.

Every module listed in COMMAND_MODULES defines `register(subparsers)`, which adds its subcommands with
`set_defaults(func=...)`; `func(args)` returns an exit code (or None for 0).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gator.runtime import choose_omp_wait_policy

# One line per subsystem; a new subsystem adds its module here.
COMMAND_MODULES = [
    "gator.autograd.cli",  # gator autograd demo
    "gator.eval.cli",  # gator eval ppl, gator eval mc, gator eval bleu
    "gator.model.cli",  # gator info, gator export hf, gator import hf
    "gator.tokenizer.cli",  # gator tokenizer train/encode/decode/show/stats
    "gator.viz",  # gator viz attention
    "gator.train.cli",  # gator prepare, gator pretrain, gator sample
]


class GatorError(Exception):
    """An error caused by the user's input: printed as one clear line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gator", description="Gator: how large language models are made.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    choose_omp_wait_policy()  # before the subcommand modules import torch: see gator/runtime.py
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (GatorError, FileNotFoundError, ValueError) as err:
        print(f"gator {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
