"""The command line's vocabulary: one flag name per idea across every `gator` command, and argument types
that reject bad numbers when the command line is read, before any work starts.

    --model DIR      the model: a model folder, or a run folder (its best/, else its checkpoint/)
    --out PATH       where the command writes (a folder, or a file for one-file outputs)
    --force          replace an output that holds earlier work (see gator/outputs.py)
    --no-progress    no progress bars
    --device NAME    cpu, cuda, cuda:1, ... (default: cuda when a GPU is visible, else cpu)
    --field NAME     the text field of JSONL records (default: text)

Older spellings still work and are hidden from --help (argparse.SUPPRESS): `--checkpoint` for `--model`,
`--output` for `--out`, `--quiet` for `--no-progress`, and the positional MODEL / OUT arguments of
`gator info`, `gator export`, `gator import` and `gator serve`. A command that accepts a positional
spelling reads the value with `pick(args, "model")`.

This module imports nothing heavy: `gator --help` must answer without loading torch.
"""

from __future__ import annotations

import argparse
import re

from gator.errors import GatorError

# ---------------------------------------------------------------------------------------------------
# argument types: each returns the value or raises ArgumentTypeError (argparse prints it with the flag)
# ---------------------------------------------------------------------------------------------------


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (a count, a size, a limit)."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (minutes, a scale)."""
    value = _number(text, float, "a positive number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0 (a temperature)."""
    value = _number(text, float, "a number >= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a share of the data)."""
    value = _number(text, float, "a number between 0 and 1")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (both excluded), got {text}")
    return value


def probability(text: str) -> float:
    """A number in (0, 1] (top-p)."""
    value = _number(text, float, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def duration(text: str) -> str:
    """A positive time budget: 90, 90s, 3m or 1.5h (returned as written)."""
    m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a duration; write e.g. 60s, 3m or 1.5h")
    if float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive duration such as 60s, 3m or 1.5h, got {text!r}")
    return text


# ---------------------------------------------------------------------------------------------------
# the shared flags
# ---------------------------------------------------------------------------------------------------

MODEL_HELP = "model folder, or a run folder (uses its best/, else checkpoint/)"


def add_model(p: argparse.ArgumentParser, help: str = MODEL_HELP, *, positional: bool = False) -> None:
    """--model (required; checked by `pick`), with --checkpoint and, where it was one, a positional as
    hidden old spellings."""
    p.add_argument("--model", metavar="MODEL", help=f"{help} (required)")
    p.add_argument("--checkpoint", dest="model", help=argparse.SUPPRESS)
    if positional:
        p.add_argument("model_positional", nargs="?", help=argparse.SUPPRESS)


def add_out(p: argparse.ArgumentParser, help: str, *, positional: bool = False, required: bool = True,
            default: str | None = None) -> None:
    """--out, with --output and, where it was one, a positional as hidden old spellings (read with `pick`).
    Without a positional spelling, argparse itself requires one of --out / --output."""
    group = p.add_mutually_exclusive_group(required=required and not positional)
    group.add_argument("--out", metavar="PATH", default=default, help=help + (" (required)" if required else ""))
    group.add_argument("--output", dest="out", help=argparse.SUPPRESS)
    if positional:
        p.add_argument("out_positional", nargs="?", help=argparse.SUPPRESS)


def add_force(p: argparse.ArgumentParser, what: str = "an existing output") -> None:
    p.add_argument("--force", action="store_true", help=f"replace {what}")


def add_progress(p: argparse.ArgumentParser, default: bool | None = True) -> None:
    """--no-progress (and the hidden --quiet) set args.progress to False."""
    p.add_argument("--no-progress", dest="progress", action="store_false", default=default, help="no progress bars")
    p.add_argument("--quiet", dest="progress", action="store_false", help=argparse.SUPPRESS)


def add_device(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", default=default,
                   help="cpu, cuda, cuda:N, ... (default: cuda when a GPU is visible, else cpu)")


def add_field(p: argparse.ArgumentParser) -> None:
    p.add_argument("--field", default="text", metavar="NAME", help="text field of JSONL records (default: text)")


def pick(args: argparse.Namespace, name: str, required: bool = True):
    """The value of --NAME, or of its hidden positional spelling; both given differently, or neither (when
    required), is an error that names the flag."""
    flag, positional = getattr(args, name, None), getattr(args, f"{name}_positional", None)
    if flag is not None and positional is not None and flag != positional:
        raise GatorError(f"the {name} is given twice ({positional!r} and --{name} {flag!r}); give it once, "
                         f"with --{name}")
    value = flag if flag is not None else positional
    if value is None and required:
        raise GatorError(f"the following argument is required: --{name}")
    return value
