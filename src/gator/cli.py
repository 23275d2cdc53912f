"""The `gator` command. Thin: each subsystem registers its own subcommands and calls library functions.

Every module listed in COMMAND_MODULES defines `register(subparsers)`, which adds its subcommands with
`set_defaults(func=...)`; `func(args)` returns an exit code (or None for 0). The flag names they share
(--model, --out, --force, --no-progress, --device, --field) and the argument types that reject bad
numbers are in gator/cli_args.py; the output-path policy is in gator/outputs.py. Command modules import
torch inside their command functions, so `gator --help` and every `gator ... --help` answer at once.

One error path: whatever a user can fix (a `GatorError`, a `ValueError`, an `OSError` such as a
read-only folder, a missing file or a full disk, a CUDA device that is not there) is printed as one line,

    gator tokenizer train: error: <what is wrong and what to do>

after any progress bar has been closed (so the line starts a line of its own), with exit status 1.
Programming errors keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from gator.errors import GatorError
from gator.runtime import choose_omp_wait_policy

# One line per subsystem; a new subsystem adds its module here.
COMMAND_MODULES = [
    "gator.autograd.cli",  # gator autograd demo
    "gator.eval.cli",  # gator eval ppl, gator eval mc, gator eval bleu
    "gator.model.cli",  # gator info, gator export hf|gguf, gator import hf
    "gator.model.lora_cli",  # gator lora merge
    "gator.tokenizer.cli",  # gator tokenizer train/encode/decode/show/stats
    "gator.viz",  # gator viz attention
    "gator.train.cli",  # gator prepare, gator pretrain, gator sample
    "gator.serve.cli",  # gator serve (OpenAI-compatible server and chat page)
    "gator.train.posttrain_cli",  # gator reward, gator dpo, gator grpo
]

_NEGATIVE_VALUE = re.compile(r"-\.?\d")  # "-5", "-5s", "-1e3", "-.5": a value, never a flag
# what torch says when a CUDA device is asked for on a machine without one
_NO_GPU = re.compile(r"not compiled with CUDA|no CUDA GPUs|NVIDIA driver|invalid device ordinal|CUDA driver")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gator", description="Gator: how large language models are made.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    choose_omp_wait_policy(serving=argv[:1] == ["serve"])  # before the subcommand modules import torch
    parser = build_parser()
    args, extra = parser.parse_known_args(attach_negative_values(parser, argv))
    command = chosen_parser(parser, args)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all(_is_override(x) for x in extra):
            args.overrides += extra  # KEY=VALUE overrides on both sides of a flag
        else:
            command.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        command.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        report(command.prog, "interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - sorted below: user errors become one line, the rest re-raise
        message = user_error(err)
        if message is None:
            raise
        report(command.prog, message)
        return 1


def user_error(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a programming error."""
    from gator.outputs import describe_os_error

    text = str(err)
    if isinstance(err, (RuntimeError, AssertionError)) and _NO_GPU.search(text):
        return f"{text.splitlines()[0]}: there is no usable GPU for --device; use --device cpu"
    if isinstance(err, GatorError):
        return (getattr(err, "strerror", None) or text) if isinstance(err, OSError) else text
    if isinstance(err, OSError):
        if err.errno is None or err.strerror is None:  # raised by Gator with its own message
            return text
        return describe_os_error(err)
    if isinstance(err, ValueError):
        return text
    if type(err).__module__.split(".")[0] == "yaml":  # malformed YAML that no caller explained
        return f"malformed YAML: {' '.join(text.split())}"
    return None


def report(prog: str, message: str) -> None:
    """Print `prog: error: message` on a line of its own: any live progress bar is closed first."""
    tqdm_std = sys.modules.get("tqdm.std")
    if tqdm_std is not None:
        for bar in list(getattr(tqdm_std.tqdm, "_instances", [])):
            bar.close()
    sys.stdout.flush()
    print(f"{prog}: error: {message}" if message != "interrupted" else f"{prog}: interrupted", file=sys.stderr)


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was given, e.g. the one whose prog is 'gator tokenizer train'."""
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subparsers[0].dest, None) if subparsers and subparsers[0].dest else None
        if name is None or name not in subparsers[0].choices:
            return parser
        parser = subparsers[0].choices[name]


def attach_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--max-time -5s` -> `--max-time=-5s`: argparse reads a value that starts with '-' as a flag (and says
    "expected one argument"); attached, the value reaches the flag's type check, which names the problem."""
    takes_value = set()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.option_strings and action.nargs != 0:
                takes_value.update(s for s in action.option_strings if s.startswith("--"))
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in takes_value and i + 1 < len(argv) and _NEGATIVE_VALUE.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _is_override(item: str) -> bool:
    return "=" in item and not item.startswith("-")


if __name__ == "__main__":
    sys.exit(main())
