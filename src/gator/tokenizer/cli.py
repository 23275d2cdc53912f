"""`gator tokenizer ...`: train a BPE tokenizer, encode and decode with it, see its tokens, measure it.

    gator tokenizer train --input corpus.txt --vocab-size 4096 --special '<|endoftext|>' --out tok/
    gator tokenizer encode --tokenizer tok/ "Hello world"        # ids, one line
    gator tokenizer decode --tokenizer tok/ 15496 995            # text
    gator tokenizer show   --tokenizer tok/ "Hello world"        # token boundaries in colour
    gator tokenizer stats  --tokenizer tok/ --input corpus.txt   # bytes per token, vocabulary usage

`--tokenizer` takes a directory saved by gator, a directory with GPT-2's vocab.json and merges.txt, or a
Hugging Face tokenizer.json (or its directory).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from itertools import islice
from pathlib import Path

from .bpe import train_bpe
from .corpus import read_text_file
from .formats import open_tokenizer

RATIO_SAMPLE_BYTES = 16 << 20  # the compression ratio after training is measured on at most this much
_COLOURS = [153, 180, 151, 217, 187, 182]  # pastel 256-colour backgrounds, cycled token by token


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train, use and inspect byte-level BPE tokenizers",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="learn a BPE vocabulary from text files")
    train.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text file(s)")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N",
                       help="total vocabulary: 256 bytes + special tokens + merges")
    train.add_argument("--special", nargs="+", action="extend", default=[], metavar="TOKEN",
                       help="special tokens, e.g. '<|endoftext|>' (never split, never merged)")
    train.add_argument("--pattern", default="gpt2", help="pre-tokenizer: gpt2, gpt4, o200k, or a regex")
    train.add_argument("--out", required=True, metavar="DIR", help="directory to save the tokenizer in")
    train.add_argument("--hf", action="store_true", help="also write a Hugging Face tokenizer.json to DIR")
    train.add_argument("--workers", type=int, default=None, help="processes for pre-tokenizing (default: all)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    for name, helptext, func in [("encode", "text -> token ids", cmd_encode),
                                 ("show", "text -> tokens, coloured by boundary", cmd_show)]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--tokenizer", "-t", required=True, metavar="PATH", help="saved tokenizer")
        p.add_argument("text", nargs="?", help="the text (or use --input)")
        p.add_argument("--input", metavar="FILE", help="read the text from a UTF-8 file ('-' for stdin)")
        p.set_defaults(func=func)
    show = sub.choices["show"]
    show.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="colour the tokens (auto: when writing to a terminal); never: mark them with |")
    show.add_argument("--ids", action="store_true", help="also print the token ids")

    decode = sub.add_parser("decode", help="token ids -> text")
    decode.add_argument("--tokenizer", "-t", required=True, metavar="PATH", help="saved tokenizer")
    decode.add_argument("ids", nargs="*", help="token ids (default: read them from stdin)")
    decode.set_defaults(func=cmd_decode)

    stats = sub.add_parser("stats", help="bytes per token and vocabulary usage on some text")
    stats.add_argument("--tokenizer", "-t", required=True, metavar="PATH", help="saved tokenizer")
    stats.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text file(s)")
    stats.add_argument("--top", type=int, default=10, help="show the N most frequent tokens")
    stats.set_defaults(func=cmd_stats)


def _input_files(names: list[str]) -> list[Path]:
    paths = [Path(name) for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}; check the --input path")
    return paths


def _read_text(args) -> str:
    if args.input == "-":
        return sys.stdin.read()
    if args.input:
        return "".join(read_text_file(_input_files([args.input])[0]))
    if args.text is None:
        raise ValueError("give the text as an argument or with --input FILE")
    return args.text


def cmd_train(args) -> int:
    paths = _input_files(args.input)
    start = time.perf_counter()
    tok = train_bpe(paths, args.vocab_size, args.special, args.pattern, progress=not args.quiet,
                    workers=args.workers)
    seconds = time.perf_counter() - start
    tok.save(args.out)
    if args.hf:
        tok.save_hf(args.out)
    totals = [0, 0]  # bytes, characters
    n_tokens = sum(1 for _ in tok.encode_iterable(_read_blocks(paths, totals, RATIO_SAMPLE_BYTES)))
    n_bytes, total = totals[0], sum(p.stat().st_size for p in paths)
    sample = "" if n_bytes >= total else f" (measured on the first {n_bytes / 1e6:.0f} MB)"
    print(f"trained {len(tok)} tokens ({len(tok.merges)} merges, {len(tok.special_tokens)} special) "
          f"on {total / 1e6:.2f} MB in {seconds:.2f} s")
    print(f"compression: {n_bytes / max(n_tokens, 1):.2f} bytes per token{sample}")
    print(f"saved to {args.out}")
    return 0


def _read_blocks(paths: list[Path], totals: list[int], limit: float = float("inf")):
    """The files' text in blocks, as one stream, until about `limit` bytes; totals += [bytes, characters]."""
    for path in paths:
        for block in read_text_file(path):
            if totals[0] >= limit:
                return
            totals[0] += len(block.encode("utf-8"))
            totals[1] += len(block)
            yield block


def cmd_encode(args) -> int:
    tok = open_tokenizer(args.tokenizer)
    print(" ".join(map(str, tok.encode(_read_text(args)))))
    return 0


def cmd_decode(args) -> int:
    tok = open_tokenizer(args.tokenizer)
    words = args.ids or sys.stdin.read().split()
    try:
        ids = [int(word) for word in words]
    except ValueError:
        raise ValueError(f"token ids must be integers, got {' '.join(words)[:80]!r}") from None
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0


def render_token(token: bytes) -> str:
    """How one token looks on screen: its text, or its bytes in hex when they are not whole characters."""
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        return "\u27e8" + " ".join(f"{b:02x}" for b in token) + "\u27e9"
    return text.replace("\n", "\u21b5\n").replace("\t", "\u2192")


def cmd_show(args) -> int:
    tok = open_tokenizer(args.tokenizer)
    ids = tok.encode(_read_text(args))
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    pieces = []
    for n, i in enumerate(ids):
        shown = render_token(tok.vocab[i])
        if colour:
            pieces.append(f"\x1b[48;5;{_COLOURS[n % len(_COLOURS)]}m\x1b[30m{shown}\x1b[0m")
        else:
            pieces.append(shown + "|")
    print("".join(pieces))
    print(f"{len(ids)} tokens")
    if args.ids:
        print(" ".join(map(str, ids)))
    return 0


def cmd_stats(args) -> int:
    tok = open_tokenizer(args.tokenizer)
    paths = _input_files(args.input)
    counts: Counter = Counter()
    totals = [0, 0]  # bytes, characters
    counts.update(tok.encode_iterable(_read_blocks(paths, totals)))
    n_bytes, n_chars = totals
    n_tokens = sum(counts.values())
    if n_tokens == 0:
        raise ValueError(f"{', '.join(map(str, paths))}: no text to measure; give a non-empty file")
    used = len(counts)
    print(f"text:        {n_bytes:,} bytes, {n_chars:,} characters in {len(paths)} file(s)")
    print(f"tokens:      {n_tokens:,}")
    print(f"compression: {n_bytes / n_tokens:.3f} bytes per token, {n_chars / n_tokens:.3f} characters per token")
    print(f"vocabulary:  {used:,} of {len(tok):,} tokens used ({100 * used / len(tok):.1f}%), "
          f"{len(tok) - used:,} never used")
    print(f"most frequent tokens (of {n_tokens:,}):")
    for i, count in islice(counts.most_common(), args.top):
        try:
            shown = repr(tok.vocab[i].decode("utf-8"))
        except UnicodeDecodeError:
            shown = render_token(tok.vocab[i])
        print(f"  {i:>7}  {100 * count / n_tokens:5.2f}%  {shown}")
    return 0
