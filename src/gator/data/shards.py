"""Token shards: a corpus turned into flat files of token ids that training reads with `np.memmap`.

`prepare` streams documents (see `sources.py`) through the tokenizer in worker processes and appends
each document's ids, followed by the end-of-text token id, to the train or the val stream. A document is
encoded as ordinary text (`encode_ordinary`, as nanoGPT's prepare does), so special-token text inside it
never becomes a control token; the separator is the id itself:

    documents --(batches, in order)--> workers: tokenizer.encode_batch --> writer --> train-00000.bin ...
                                                                                  --> val-00000.bin ...

- Memory stays constant: at most 2 batches per worker are in flight, and ids go straight to disk.
- Ids are `uint16` when the vocabulary has at most 65,536 tokens, else `uint32`.
- The split is by document and deterministic: a document goes to val when a hash of (seed, its text)
  falls below `val_fraction`, so no document is in both splits (duplicates land together), and the
  result does not depend on the number of workers.
- `manifest.json` records the tokenizer (its fingerprint, vocabulary size, end-of-text id), the dtype,
  and per split the files, tokens, documents and UTF-8 bytes (bytes give bits per byte later).

`TokenData` reads a split back and cuts it into windows of T+1 tokens; `batch_indices` says which
windows make up global sample k..k+n: a new random permutation of all windows each epoch, a pure
function of (seed, k), so a resumed or multi-process run reads exactly the batches a single run would.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gator.data.sources import END_OF_TEXT, iter_documents
from gator.tokenizer import Tokenizer

MANIFEST = "manifest.json"
FORMAT = "gator-shards-1"
SHARD_TOKENS = 100_000_000  # tokens per shard file (200 MB as uint16)


# --------------------------------------------------------------------------------------------------
# The tokenizer as the data pipeline sees it
# --------------------------------------------------------------------------------------------------

def _tokenizer(tokenizer: Tokenizer | str | Path) -> Tokenizer:
    return Tokenizer.load(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer


def tokenizer_info(tok: Tokenizer) -> dict[str, Any]:
    """Vocabulary size, end-of-text id and a fingerprint (a hash of the vocabulary, merges and specials)."""
    if END_OF_TEXT not in tok.special_ids:
        raise ValueError(f"the tokenizer has no {END_OF_TEXT} special token, which separates documents; "
                         f"train it with special_tokens=['{END_OF_TEXT}']")
    h = hashlib.sha256()
    for i in sorted(tok.vocab):
        h.update(i.to_bytes(4, "little") + tok.vocab[i] + b"\x00")
    for a, b in tok.merges:
        h.update(a + b"\x01" + b + b"\x02")
    for s, i in sorted(tok.special_ids.items()):
        h.update(s.encode() + i.to_bytes(4, "little"))
    return {"vocab_size": tok.vocab_size, "eot_id": tok.special_ids[END_OF_TEXT], "fingerprint": h.hexdigest()[:16]}


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

class ShardWriter:
    """Appends token ids to `{split}-00000.bin`, `{split}-00001.bin`, ... of at most `shard_tokens` each."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS):
        self.out_dir, self.split, self.dtype, self.shard_tokens = Path(out_dir), split, dtype, shard_tokens
        self.files: list[dict[str, Any]] = []
        self.tokens = self.documents = self.bytes = 0
        self._f = None

    def write(self, ids: np.ndarray, n_bytes: int = 0, n_docs: int = 1) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        self.documents += n_docs
        self.bytes += n_bytes
        while len(ids):
            if self._f is None or self.files[-1]["tokens"] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.files[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            part.tofile(self._f)
            self.files[-1]["tokens"] += len(part)
            self.tokens += len(part)

    def _open_next(self) -> None:
        if self._f is not None:
            self._f.close()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self._f = open(self.out_dir / name, "wb")
        self.files.append({"name": name, "tokens": 0})

    def discard(self) -> None:
        """Close and delete the files written so far (after a failure: no half-made shards stay behind)."""
        if self._f is not None:
            self._f.close()
            self._f = None
        for f in self.files:
            (self.out_dir / f["name"]).unlink(missing_ok=True)

    def close(self) -> dict[str, Any]:
        if self._f is not None:
            self._f.close()
            self._f = None
        return {"files": self.files, "tokens": self.tokens, "documents": self.documents, "bytes": self.bytes}


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = Path(out_dir) / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, Path(out_dir) / MANIFEST)


def write_tokens(out_dir: str | Path, splits: dict[str, np.ndarray], tokenizer: dict[str, Any],
                 split_bytes: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    """Write ready-made token arrays (e.g. raw bytes for a byte-level model) as shards plus a manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for(tokenizer["vocab_size"])
    manifest = {"format": FORMAT, "tokenizer": tokenizer, "dtype": dtype.name, "splits": {}, **extra}
    for split, ids in splits.items():
        w = ShardWriter(out_dir, split, dtype)
        w.write(ids, (split_bytes or {}).get(split, len(ids)))
        manifest["splits"][split] = w.close()
    write_manifest(out_dir, manifest)
    return manifest


def is_val(text: str, seed: int, val_fraction: float) -> bool:
    """The deterministic split: hash (seed, text) to a number in [0, 1) and compare with the fraction."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


_WORKER_TOK: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _WORKER_TOK
    _WORKER_TOK = _tokenizer(tokenizer)


def _encode_batch(docs: list[str], eot_id: int, dtype: str, seed: int, val_fraction: float
                  ) -> list[tuple[np.ndarray, int, bool]]:
    tok = _WORKER_TOK
    # Documents are ordinary text: "<|endoftext|>" written inside one is characters, not a boundary; the
    # boundary is the id appended below.
    encoded = tok.encode_batch(docs, disallowed_special=())
    out = []
    for doc, ids in zip(docs, encoded):
        arr = np.empty(len(ids) + 1, dtype=dtype)
        arr[:-1] = ids
        arr[-1] = eot_id
        out.append((arr, len(doc.encode("utf-8")), is_val(doc, seed, val_fraction)))
    return out


def _batches(docs: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def prepare(source: Any, tokenizer: Any, out_dir: str | Path, *, field: str = "text", val_fraction: float = 0.05,
            seed: int = 0, workers: int | None = None, shard_tokens: int = SHARD_TOKENS,
            doc_chars: int | None = 8000, limit: int | None = None, batch_chars: int = 1 << 20,
            progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Tokenize a corpus into train/val shards in `out_dir` and return the manifest (also written there).

    `tokenizer` is a Tokenizer or the directory it was saved in; `source` is anything `iter_documents`
    reads. `workers=None` uses every core, 0 encodes in this process. Shards already in `out_dir` (made
    perhaps with another tokenizer) are replaced only with `force` (gator/outputs.py).
    """
    from gator.outputs import output_dir

    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be 0 (encode in this process) or more, got {workers}")
    tok = _tokenizer(tokenizer)
    info = tokenizer_info(tok)
    out_dir = output_dir(out_dir, earlier_work=(MANIFEST, "train-*.bin", "val-*.bin"), force=force,
                         what="token shards")
    if not isinstance(tokenizer, (str, Path)):  # a Tokenizer object: save it with the shards
        tokenizer = out_dir / "tokenizer"
        tok.save(tokenizer)
    info["path"] = str(Path(tokenizer).resolve())
    dtype = dtype_for(info["vocab_size"])
    for old in [*out_dir.glob("train-*.bin"), *out_dir.glob("val-*.bin"), out_dir / MANIFEST]:
        old.unlink(missing_ok=True)
    writers = {s: ShardWriter(out_dir, s, dtype, shard_tokens) for s in ("train", "val")}
    workers = (os.cpu_count() or 1) if workers is None else workers
    batches = _batches(iter_documents(source, field=field, doc_chars=doc_chars, limit=limit), batch_chars)
    args = (info["eot_id"], dtype.name, seed, val_fraction)
    held: tuple[np.ndarray, int] | None = None  # the latest train document, kept back (see below)

    bar = _progress_bar(progress)
    if workers > 0:
        pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(tokenizer,))
        results = _ordered_window(pool, batches, args, window=2 * workers)
    else:
        _init_worker(tok)
        results = (_encode_batch(b, *args) for b in batches)
    try:
        for result in results:
            for ids, n_bytes, val in result:
                if val:
                    writers["val"].write(ids, n_bytes)
                else:
                    if held is not None:
                        writers["train"].write(*held)
                    held = (ids, n_bytes)
                bar.update(n_bytes)
            bar.set_postfix_str(f"{writers['train'].tokens + writers['val'].tokens:,} tokens")
    except BaseException:  # a full disk, a bad document, Ctrl-C: leave no half-made shards
        for w in writers.values():
            w.discard()
        raise
    finally:
        bar.close()
        if workers > 0:
            pool.shutdown(cancel_futures=True)
    if held is not None:
        # A small corpus may hash no document into val: then the last train document moves there, so
        # both splits exist whenever there are two documents.
        to_val = val_fraction > 0 and writers["val"].documents == 0 and writers["train"].documents > 0
        writers["val" if to_val else "train"].write(*held)
    splits = {s: w.close() for s, w in writers.items()}
    if splits["train"]["documents"] == 0:
        raise ValueError(f"no documents found in {source}; is the file empty or the --field wrong?")
    manifest = {"format": FORMAT, "tokenizer": info, "dtype": dtype.name, "source": str(source),
                "field": field, "seed": seed, "val_fraction": val_fraction, "splits": splits}
    write_manifest(out_dir, manifest)
    return manifest


def _ordered_window(pool: ProcessPoolExecutor, batches: Iterator[list[str]], args: tuple, window: int
                    ) -> Iterator[list]:
    """Results of pool.submit(_encode_batch, batch) in input order, with at most `window` batches in flight."""
    pending: deque = deque()
    for b in batches:
        pending.append(pool.submit(_encode_batch, b, *args))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _progress_bar(enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(desc="prepare", unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {data_dir}; make the shards first with "
                                f"`gator prepare --input CORPUS --tokenizer DIR --out {data_dir}`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it may be truncated: re-run `gator prepare` "
                         f"into a new --out folder (or with --force)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a gator shard manifest (format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    return manifest


class TokenData:
    """One split of a shard directory as a single read-only sequence of token ids."""

    def __init__(self, data_dir: str | Path, split: str, manifest: dict[str, Any] | None = None):
        self.dir = Path(data_dir)
        self.manifest = manifest or load_manifest(data_dir)
        if split not in self.manifest["splits"]:
            raise ValueError(f"{data_dir} has no {split!r} split (it has {sorted(self.manifest['splits'])})")
        info = self.manifest["splits"][split]
        self.split = split
        self.n_tokens, self.n_bytes = info["tokens"], info["bytes"]
        dtype = np.dtype(self.manifest["dtype"])
        self.parts = []
        for f in info["files"]:
            path = self.dir / f["name"]
            size = path.stat().st_size if path.exists() else -1
            if size != f["tokens"] * dtype.itemsize:
                raise ValueError(f"shard {path} should hold {f['tokens']} tokens ({f['tokens'] * dtype.itemsize}"
                                 f" bytes) but has {size} bytes; re-run `gator prepare`")
            if f["tokens"]:
                self.parts.append(np.memmap(path, dtype=dtype, mode="r"))
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return self.n_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, across shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        pos, filled = start, 0
        while filled < length:
            i = int(np.searchsorted(self.starts, pos, side="right")) - 1
            offset = pos - self.starts[i]
            take = min(length - filled, len(self.parts[i]) - offset)
            out[filled:filled + take] = self.parts[i][offset:offset + take]
            filled, pos = filled + take, pos + take
        return out

    def num_windows(self, seq_len: int) -> int:
        """How many non-overlapping windows of seq_len inputs (+1 target) the split holds."""
        return max(0, (self.n_tokens - 1) // seq_len)

    def windows(self, indices: Iterable[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x and targets y (each (n, seq_len), int64) for the given window indices."""
        rows = np.stack([self.read(int(i) * seq_len, seq_len + 1) for i in indices])
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def tokens_per_byte(self) -> float:
        return self.n_tokens / max(1, self.n_bytes)


class WindowOrder:
    """Which windows global samples k, k+1, ... read: epoch e is permutation e of all windows."""

    def __init__(self, num_windows: int, seed: int):
        self.n, self.seed = num_windows, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> list[int]:
        out = []
        for k in range(start, start + count):
            out.append(int(self._permutation(k // self.n)[k % self.n]))
        return out
