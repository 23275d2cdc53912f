"""Benchmark: BPE training and encoding speed, gator against Hugging Face `tokenizers` and tiktoken.

Training: tinyshakespeare.txt to a 4096-token vocabulary with the GPT-2 pattern, timed for
  - gator.tokenizer.train_bpe (incremental pair counts, heap),
  - Hugging Face tokenizers' BpeTrainer with the same settings (Rust, multi-threaded),
  - a naive trainer written below, the textbook baseline: it recounts every pair before every merge
    (it does count each distinct pre-token once, weighted, as gator does).
Encoding: MB/s on the same corpus, for gator's fast path, tiktoken itself and gator's pure-Python path.
Timings are the best of several runs that alternate between the contenders (the naive trainer runs once).

    .venv/bin/python bench/tokenizer.py                     # full run (the naive trainer takes minutes)
    .venv/bin/python bench/tokenizer.py --naive-merges 200  # naive time extrapolated from 200 merges
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter
from pathlib import Path

import regex
from tokenizers import Regex, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from gator.tokenizer import GPT2_PATTERN, Tokenizer, train_bpe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def naive_train(path: Path, vocab_size: int, max_merges: int | None = None) -> list[tuple[bytes, bytes]]:
    """Recount all pairs before every merge: O(corpus) work per merge."""
    words = Counter(tuple(w.encode()) for w in regex.findall(GPT2_PATTERN, path.read_text(encoding="utf-8")))
    vocab = [bytes([i]) for i in range(256)]
    merges = []
    while len(vocab) < vocab_size and (max_merges is None or len(merges) < max_merges):
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], vocab[p[0]], vocab[p[1]]))
        new = len(vocab)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        merges.append((vocab[best[0]], vocab[best[1]]))
        merged: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def hf_train(path: Path, vocab_size: int) -> HFTokenizer:
    """tokenizers' BPE trainer, set up like gator: GPT-2 regex, all 256 bytes, no special tokens."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(path)], trainer)
    return tok


def timed(fn, *args):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(DATA / "text" / "tinyshakespeare.txt"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--naive-merges", type=int, default=None,
                        help="stop the naive trainer after N merges and extrapolate its time linearly")
    args = parser.parse_args()
    path = Path(args.corpus)
    text = path.read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"\nTraining on {path.name} ({megabytes:.2f} MB) to vocab {args.vocab_size}, GPT-2 pattern\n")

    # gator and tokenizers take turns, best of 3, so that other work on the machine slows both alike
    t_gator = t_hf = float("inf")
    for _ in range(3):
        seconds, tok = timed(lambda: train_bpe(path, args.vocab_size, progress=False))
        t_gator = min(t_gator, seconds)
        seconds, hf = timed(hf_train, path, args.vocab_size)
        t_hf = min(t_hf, seconds)
    t_naive, naive = timed(naive_train, path, args.vocab_size, args.naive_merges)
    n_merges = args.vocab_size - 256
    extrapolated = len(naive) < n_merges
    if extrapolated:
        t_naive *= n_merges / len(naive)
    same = tok.merges[: len(naive)] == naive
    rows = [("gator train_bpe", t_gator), ("HF tokenizers BpeTrainer", t_hf),
            ("naive recount every merge" + (f" (extrapolated from {len(naive)} merges)" if extrapolated else ""),
             t_naive)]
    print(f"| {'trainer':<58} | {'seconds':>8} | {'gator speedup':>13} |")
    print(f"|{'-' * 60}|{'-' * 9}:|{'-' * 14}:|")
    for name, seconds in rows:
        print(f"| {name:<58} | {seconds:8.2f} | {seconds / t_gator:12.2f}x |")
    print(f"\ngator vs naive: {t_naive / t_gator:.0f}x faster (target >= 100x: "
          f"{'met' if t_naive / t_gator >= 100 else 'NOT met'}); gator merges identical to naive's: {same}")
    print(f"gator vs tokenizers: {t_gator / t_hf:.2f}x its time (target <= 2x: "
          f"{'met' if t_gator <= 2 * t_hf else 'NOT met'}); vocab sizes {len(tok)} and {hf.get_vocab_size()}")

    print(f"\nEncoding {path.name} ({megabytes:.2f} MB)\n")
    gpt2 = Tokenizer.from_gpt2_files(DATA / "gpt2" / "vocab.json", DATA / "gpt2" / "merges.txt", ["<|endoftext|>"])
    print(f"| {'encoder':<45} | {'vocab':>6} | {'MB/s':>7} | {'vs tiktoken':>11} |")
    print(f"|{'-' * 47}|{'-' * 7}:|{'-' * 8}:|{'-' * 12}:|")
    for gator_tok in [tok, gpt2]:
        enc = gator_tok.to_tiktoken()
        # tiktoken and gator's fast path take turns, best of 15. (The text has no special tokens, so
        # tiktoken's encode_ordinary gives the same ids.)
        t_tiktoken, t_fast = float("inf"), float("inf")
        for _ in range(15):
            seconds, reference = timed(enc.encode_ordinary, text)  # tiktoken's fastest call
            t_tiktoken = min(t_tiktoken, seconds)
            seconds, fast_ids = timed(gator_tok.encode, text)
            t_fast = min(t_fast, seconds)
        gator_tok._cache.clear()  # the Python path caches pre-tokens: time it from a cold cache
        t_python, python_ids = timed(gator_tok.encode_python, text)
        assert fast_ids == python_ids == reference, "the three encoders disagree"
        for name, seconds in [("tiktoken Encoding (same vocabulary)", t_tiktoken),
                              ("gator encode (tiktoken fast path)", t_fast),
                              ("gator encode_python (pure Python, cold cache)", t_python)]:
            print(f"| {name:<45} | {len(gator_tok):>6} | {megabytes / seconds:7.2f} | "
                  f"{t_tiktoken / seconds:10.2f}x |")
    print("\nall three encoders gave identical ids")


if __name__ == "__main__":
    main()
