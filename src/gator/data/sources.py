"""Where text comes from: plain text files and folders, JSONL files, and Hugging Face datasets.

Everything here yields *documents* (one string each), lazily, so a corpus of any size streams through in
constant memory. Later stages put the tokenizer's end-of-text token between documents, which is how a
pretraining corpus tells the model "a new, unrelated text starts here".

- A `.jsonl` file holds one JSON object per line; the text is in one field (`"text"` unless told).
- A plain text file is split on the literal marker `<|endoftext|>` when it contains one (the layout of
  the TinyStories `.txt` release). A long text without markers (a book) is cut at blank lines into
  documents of about `doc_chars` characters, so a train/val split by document is still possible.
- A folder is read recursively, files in sorted order; `.jsonl` files as JSONL, every other file with a
  text suffix (`.txt`, `.md`, ...) as plain text.
- Anything else that looks like `owner/name` (for example `roneneldan/TinyStories`) is a dataset on the
  Hugging Face hub, streamed with the `datasets` library when the hub is reachable; `owner/name:config`
  picks a configuration (e.g. `HuggingFaceFW/fineweb-edu:sample-10BT`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from gator.jsonl import jsonl_objects

END_OF_TEXT = "<|endoftext|>"
TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ""}
DOC_CHARS = 8000


def iter_documents(source: str | Path | Iterable[str | Path], *, field: str = "text", split: str = "train",
                   doc_chars: int | None = DOC_CHARS, limit: int | None = None) -> Iterator[str]:
    """Yield the documents of a file, folder, list of those, or Hugging Face dataset name.

    `field` names the text field of JSONL records and HF rows; `limit` stops after that many documents.
    """
    n = 0
    for doc in _documents(source, field, split, doc_chars):
        if not doc:
            continue
        yield doc
        n += 1
        if limit is not None and n >= limit:
            return


def _documents(source, field: str, split: str, doc_chars: int | None) -> Iterator[str]:
    if isinstance(source, (list, tuple)):
        for s in source:
            yield from _documents(s, field, split, doc_chars)
        return
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in files if p.suffix == ".jsonl" or p.suffix in TEXT_SUFFIXES]
        if not files:
            raise ValueError(f"folder {path} has no .txt, .md or .jsonl files to read")
        for f in files:
            yield from _documents(f, field, split, doc_chars)
    elif path.is_file():
        yield from (read_jsonl(path, field) if path.suffix == ".jsonl" else read_text(path, doc_chars))
    elif looks_like_hub_name(str(source)):
        yield from read_hf_dataset(str(source), field=field, split=split)
    else:
        raise FileNotFoundError(f"{source} is neither a file, a folder, nor a Hugging Face dataset name "
                                "(owner/name)")


def read_jsonl(path: Path, field: str = "text") -> Iterator[str]:
    """The `field` of each JSON object in a JSONL file (blank lines are skipped)."""
    for lineno, record in jsonl_objects(path):
        if field not in record:
            raise ValueError(f"{path}:{lineno} has no field {field!r} (it has {sorted(record)}); "
                             "choose the text field with --field NAME")
        text = record[field]
        if not isinstance(text, str):
            raise ValueError(f"{path}:{lineno}: field {field!r} is a {type(text).__name__}, not text")
        yield text


def read_whole_text(path: str | Path) -> str:
    """A UTF-8 text file as one string; a file that is not UTF-8 (a binary file) is an error naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}, line {line}); is it a binary file? "
                         "Convert it to UTF-8 text first") from None


def read_text(path: Path, doc_chars: int | None = DOC_CHARS) -> Iterator[str]:
    """Documents of a plain text file: split on end-of-text markers, else cut at blank lines."""
    text = read_whole_text(path)
    if END_OF_TEXT in text:
        for doc in text.split(END_OF_TEXT):
            doc = doc.strip("\n")
            if doc:
                yield doc
        return
    if doc_chars is None or len(text) <= doc_chars:
        yield text
        return
    start = 0
    while start < len(text):
        cut = text.find("\n\n", start + doc_chars)  # the first paragraph break after doc_chars characters
        end = len(text) if cut < 0 else cut + 2
        yield text[start:end]
        start = end


def looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and " " not in name


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if huggingface.co answers on port 443 within `timeout` seconds (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_hf_dataset(name: str, *, field: str = "text", split: str = "train") -> Iterator[str]:
    """Stream the `field` of a Hugging Face dataset split. Fails fast, with a local alternative, offline."""
    if not hub_reachable():
        raise ValueError(
            f"cannot load the Hugging Face dataset {name!r}: the hub (huggingface.co) is not reachable from "
            "here. Download the data on a connected machine (for example "
            f"`datasets.load_dataset({name!r}, split={split!r}).to_json('data.jsonl')`) and pass the file, "
            "or use a local corpus such as ../shared/data/tinystories/tinystories_5k.jsonl")
    import datasets  # imported here: it is slow to import and only this path needs it

    repo, _, subset = name.partition(":")  # "owner/name:config" picks a configuration (e.g. sample-10BT)
    rows = datasets.load_dataset(repo, subset or None, split=split, streaming=True)
    for i, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"dataset {name!r} row {i} has no field {field!r} (it has {sorted(row)}); "
                             "choose the text field with --field NAME")
        yield row[field]
