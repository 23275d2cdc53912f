"""`gator tokenizer ...`: train a BPE tokenizer, encode and decode with it, see its tokens, measure it.

    gator tokenizer train --input corpus.txt --vocab-size 4096 --special '<|endoftext|>' --out tok/
    gator tokenizer encode --tokenizer tok/ "Hello world"        # ids, one line
    gator tokenizer decode --tokenizer tok/ 15496 995            # text
    gator tokenizer show   --tokenizer tok/ "Hello world"        # token boundaries in colour
    gator tokenizer stats  --tokenizer tok/ --input corpus.txt   # bytes per token, vocabulary usage

`--tokenizer` takes a directory saved by gator, a directory with GPT-2's vocab.json and merges.txt, or a
Hugging Face tokenizer.json (or its directory): anything `Tokenizer.load` reads. `encode`, `show` and
`stats` treat special-token text ("<|endoftext|>") as the special token, as training does; `--ordinary`
encodes it as plain text instead (how a chat template encodes what users type).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from itertools import islice
from pathlib import Path

from gator.cli_args import add_field, add_force, add_out, add_progress, non_negative_int, positive_int

from .bpe import Tokenizer, train_bpe
from .corpus import read_text_file

RATIO_SAMPLE_BYTES = 16 << 20  # the compression ratio after training is measured on at most this much
_COLOURS = [153, 180, 151, 217, 187, 182]  # pastel 256-colour backgrounds, cycled token by token


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train, use and inspect byte-level BPE tokenizers",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="learn a BPE vocabulary from text files")
    train.add_argument("--input", nargs="+", required=True, metavar="FILE",
                       help="UTF-8 text files, JSONL files (their --field of each record) or folders of them")
    add_field(train)
    train.add_argument("--vocab-size", type=positive_int, required=True, metavar="N",
                       help="total vocabulary: 256 bytes + special tokens + merges")
    train.add_argument("--special", nargs="+", action="extend", default=[], metavar="TOKEN",
                       help="special tokens, e.g. '<|endoftext|>' (never split, never merged)")
    train.add_argument("--pattern", default="gpt2", help="pre-tokenizer: gpt2, gpt4, o200k, or a regex")
    add_out(train, "folder to save the tokenizer in")
    add_force(train, "a tokenizer already in --out (the folder is replaced as a whole)")
    train.add_argument("--hf", action="store_true", help="also write a Hugging Face tokenizer.json to DIR")
    train.add_argument("--workers", type=non_negative_int, default=None,
                       help="processes for pre-tokenizing (default: all cores; 0 or 1: this process)")
    add_progress(train)
    train.set_defaults(func=cmd_train)

    for name, helptext, func in [("encode", "text -> token ids", cmd_encode),
                                 ("show", "text -> tokens, coloured by boundary", cmd_show)]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--tokenizer", "-t", required=True, metavar="PATH", help="saved tokenizer")
        p.add_argument("text", nargs="?", help="the text (or use --input)")
        p.add_argument("--input", metavar="FILE", help="read the text from a UTF-8 file ('-' for stdin)")
        p.add_argument("--ordinary", action="store_true",
                       help="encode special-token text as ordinary text (default: as the special token)")
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
    stats.add_argument("--input", nargs="+", required=True, metavar="FILE",
                       help="UTF-8 text files, JSONL files (their --field of each record) or folders of them")
    add_field(stats)
    stats.add_argument("--top", type=non_negative_int, default=10, help="show the N most frequent tokens")
    stats.set_defaults(func=cmd_stats)


def _input_files(names: list[str], folders: bool = False) -> list[Path]:
    paths = [Path(name) for name in names]
    for path in paths:
        if not (path.is_file() or (folders and path.is_dir())):
            raise FileNotFoundError(f"no such file: {path}; check the --input path")
    return paths


def _corpus(paths: list[Path], field: str):
    """What training reads, the same way `gator prepare` and the demo read it: a plain text file as it is
    (streamed from disk), a JSONL file as the `field` of each record, a folder as its files (gator.data)."""
    from gator.data.sources import iter_documents

    for path in paths:
        if path.is_file() and path.suffix != ".jsonl":
            yield path
        else:
            yield from iter_documents(path, field=field, doc_chars=None)


def _corpus_blocks(paths: list[Path], field: str):
    """The corpus as blocks of text (for measuring): a text file in 1 MiB blocks, a JSONL record at a time."""
    for item in _corpus(paths, field):
        yield from (read_text_file(item) if isinstance(item, Path) else [item])


def _read_text(args) -> str:
    if args.input == "-":
        return sys.stdin.read()
    if args.input:
        return "".join(read_text_file(_input_files([args.input])[0]))
    if args.text is None:
        raise ValueError("give the text as an argument or with --input FILE")
    return args.text


TOKENIZER_FILES = ("tokenizer.gator.json", "tokenizer.json", "tokenizer_config.json", ".*.tmp")


def cmd_train(args) -> int:
    from gator.outputs import output_dir, replace_dir

    paths = _input_files(args.input, folders=True)
    # before training (minutes, perhaps): refuse to replace a tokenizer (shards made with it would no longer
    # match), and make sure --out can be written
    output_dir(args.out, earlier_work=TOKENIZER_FILES, force=args.force, what="a tokenizer", create=False)
    plain = all(p.is_file() and p.suffix != ".jsonl" for p in paths)
    start = time.perf_counter()
    tok = train_bpe(paths if plain else _corpus(paths, args.field), args.vocab_size, args.special, args.pattern,
                    progress=args.progress, workers=args.workers)
    seconds = time.perf_counter() - start

    def save(directory: Path) -> None:
        tok.save(directory)
        if args.hf:
            tok.save_hf(directory)

    replace_dir(args.out, save, replaceable=TOKENIZER_FILES)  # --force: no file of the old tokenizer stays
    totals = [0, 0]  # bytes, characters
    blocks = _read_blocks(_corpus_blocks(paths, args.field), totals, RATIO_SAMPLE_BYTES)
    n_tokens = sum(1 for _ in tok.encode_iterable(blocks, allowed_special="all"))
    n_bytes = totals[0]
    total = sum(p.stat().st_size for p in paths) if plain else n_bytes
    sample = "" if n_bytes >= total else f" (measured on the first {n_bytes / 1e6:.0f} MB)"
    print(f"trained {len(tok)} tokens ({len(tok.merges)} merges, {len(tok.special_tokens)} special) "
          f"on {total / 1e6:.2f} MB in {seconds:.2f} s")
    print(f"compression: {n_bytes / max(n_tokens, 1):.2f} bytes per token{sample}")
    print(f"saved to {args.out}")
    return 0


def _read_blocks(blocks, totals: list[int], limit: float = float("inf")):
    """Blocks of text, as one stream, until about `limit` bytes; totals += [bytes, characters]."""
    for block in blocks:
        if totals[0] >= limit:
            return
        totals[0] += len(block.encode("utf-8"))
        totals[1] += len(block)
        yield block


def _encode(tok: Tokenizer, args) -> list[int]:
    text = _read_text(args)
    return tok.encode_ordinary(text) if args.ordinary else tok.encode(text, allowed_special="all")


def cmd_encode(args) -> int:
    tok = Tokenizer.load(args.tokenizer)
    print(" ".join(map(str, _encode(tok, args))))
    return 0


def cmd_decode(args) -> int:
    tok = Tokenizer.load(args.tokenizer)
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
    tok = Tokenizer.load(args.tokenizer)
    ids = _encode(tok, args)
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
    tok = Tokenizer.load(args.tokenizer)
    paths = _input_files(args.input, folders=True)
    counts: Counter = Counter()
    totals = [0, 0]  # bytes, characters
    counts.update(tok.encode_iterable(_read_blocks(_corpus_blocks(paths, args.field), totals), allowed_special="all"))
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
