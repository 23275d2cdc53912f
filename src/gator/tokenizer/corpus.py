"""From a training corpus to pre-token counts: read in blocks, cut into chunks, count in parallel processes.

BPE training never looks at the order of pre-tokens, only at how often each one occurs, so a corpus of
any size reduces to a table {pre-token: count} whose size grows with the vocabulary of the text, not
with its length. This module builds that table:

1. Files are read in 1 MiB blocks and decoded as strict UTF-8 (a bad byte is reported by file, line,
   column and byte offset). Strings and iterables of strings are used as they are.
2. Text is cut into chunks of about `CHUNK_CHARS` characters, only at positions where cutting cannot
   change the pre-tokens (`patterns.cut_finder`: before a special token, or at certain newlines and
   spaces). Each file and each string of an iterable is its own text: no pre-token spans two of them.
3. Each chunk is split on the special tokens, pre-tokenized with the regex, and counted. From four chunks
   (about 4 MB) on, worker processes do this, with at most two chunks per worker in flight, so memory
   stays bounded however large the corpus is. (A text with no safe cut, say one huge line with a custom
   regex and no special tokens, becomes a single chunk: correct, but held in memory whole.)
"""

from __future__ import annotations

import codecs
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from multiprocessing import get_context

import regex
from tqdm import tqdm

from .patterns import cut_finder, last_cut, special_regex, split_on_special

CHUNK_CHARS = 1 << 20  # about 1 MB of text per unit of parallel work
BLOCK_BYTES = 1 << 20  # files are read this many bytes at a time
MIN_PARALLEL_CHUNKS = 4  # below this, starting worker processes costs more than it saves
_TEXT_SUFFIXES = (".txt", ".text", ".md", ".json", ".jsonl", ".csv", ".tsv")


def _is_path(item) -> bool:
    if isinstance(item, os.PathLike):
        return True
    if not isinstance(item, str) or "\n" in item or len(item) > 4096:
        return False
    if os.path.isfile(item):
        return True
    if not any(ch.isspace() for ch in item) and item.lower().endswith(_TEXT_SUFFIXES):
        raise FileNotFoundError(f"no such file: {item!r}; to train on this string itself, pass it in a "
                                "list together with other text, or fix the path")
    return False


def not_utf8_message(path, offset: int) -> str:
    """Say where in a file the first byte that is not UTF-8 sits (line, column, byte offset)."""
    with open(path, "rb") as f:
        head = f.read(offset)
        bad = f.read(1)
    line = head.count(b"\n") + 1
    column = offset - (head.rfind(b"\n") + 1) + 1
    return (f"{path} is not UTF-8 text: byte 0x{bad.hex() or '??'} at line {line}, column {column} "
            f"(byte offset {offset}) cannot be decoded; convert the file to UTF-8 first "
            f"(for example `iconv -f latin1 -t utf-8 {os.fspath(path)} > fixed.txt`)")


def read_text_file(path, on_bytes=None) -> Iterator[str]:
    """Yield a file's text in blocks, decoding strict UTF-8 across block boundaries."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                raise ValueError(not_utf8_message(path, offset - pending + err.start)) from None
            offset += len(block)
            if on_bytes is not None:
                on_bytes(len(block))
            if text:
                yield text
            if not block:
                return


def open_texts(source, on_bytes=None) -> Iterator[tuple[str, Iterator[str]]]:
    """Turn a source into (name, blocks of text) pairs: a path, a string, or an iterable of either."""
    if _is_path(source):
        yield os.fspath(source), read_text_file(source, on_bytes)
    elif isinstance(source, str):
        yield "text", iter([source])
    elif isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise TypeError(f"source must be a path, a string, or an iterable of them, not {type(source).__name__}"
                        " (decode bytes to str first)")
    else:
        for i, item in enumerate(source):
            if _is_path(item):
                yield os.fspath(item), read_text_file(item, on_bytes)
            elif isinstance(item, str):
                yield f"text {i}", iter([item])
            else:
                raise TypeError(f"item {i} of the source is a {type(item).__name__}; give paths or strings")


def chunk_texts(texts: Iterator[tuple[str, Iterator[str]]], finder, chunk_chars: int = CHUNK_CHARS
                ) -> Iterator[list[str]]:
    """Group texts into batches of about `chunk_chars` characters, cutting long texts at safe points."""
    batch: list[str] = []
    size = 0
    for _name, blocks in texts:
        buffer = ""
        for block in blocks:
            buffer += block
            while len(buffer) >= chunk_chars:
                cut = last_cut(buffer, finder)
                if cut == 0:
                    break  # no safe cut yet: keep reading until there is one
                batch.append(buffer[:cut])
                buffer = buffer[cut:]
                yield batch
                batch, size = [], 0
        if buffer:
            batch.append(buffer)
            size += len(buffer)
        if size >= chunk_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_chunk(texts: list[str], pattern: str, special_tokens: list[str]) -> Counter:
    """Count the pre-tokens of some texts, leaving special tokens out."""
    splitter = regex.compile(pattern)
    special = special_regex(special_tokens)
    counts: Counter = Counter()
    for text in texts:
        for piece, is_special in split_on_special(text, special):
            if not is_special:
                counts.update(splitter.findall(piece))
    return counts


def count_pretokens(source, pattern: str, special_tokens: list[str], workers: int | None = None,
                    progress: bool = False, chunk_chars: int = CHUNK_CHARS) -> Counter:
    """Count every pre-token of a corpus: {pre-token string: number of occurrences}."""
    paths = _all_paths(source)
    bar = tqdm(total=sum(os.path.getsize(p) for p in paths) if paths else None, unit="B" if paths else "char",
               unit_scale=True, desc="pre-tokenizing", disable=not progress, leave=False)
    chunks = chunk_texts(open_texts(source, on_bytes=bar.update if paths else None),
                         cut_finder(pattern, special_tokens), chunk_chars)
    total: Counter = Counter()
    for n_chars, counts in _count_chunks(chunks, pattern, special_tokens, workers):
        total.update(counts)
        if not paths:
            bar.update(n_chars)
    bar.close()
    return total


def _count_chunks(chunks: Iterator[list[str]], pattern: str, special_tokens: list[str], workers: int | None
                  ) -> Iterator[tuple[int, Counter]]:
    """(characters, counts) for each chunk: counted right here for a small corpus, else by worker processes
    with at most two chunks per worker in flight, so that memory stays bounded."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    head = list(islice(chunks, MIN_PARALLEL_CHUNKS))
    if len(head) < MIN_PARALLEL_CHUNKS or workers <= 1:
        for chunk in chain(head, chunks):
            yield sum(map(len, chunk)), count_chunk(chunk, pattern, special_tokens)
        return
    with get_context().Pool(workers) as pool:
        in_flight: deque = deque()
        for chunk in chain(head, chunks):
            in_flight.append((sum(map(len, chunk)), pool.apply_async(count_chunk, (chunk, pattern, special_tokens))))
            if len(in_flight) >= 2 * workers:  # wait for the oldest before reading more
                n_chars, result = in_flight.popleft()
                yield n_chars, result.get()
        for n_chars, result in in_flight:
            yield n_chars, result.get()


def _all_paths(source) -> list:
    """The paths of a source that is made only of paths (to size a progress bar), else []."""
    if _is_path(source):
        return [source]
    if isinstance(source, (list, tuple)) and source and all(_is_path(s) for s in source):
        return list(source)
    return []
