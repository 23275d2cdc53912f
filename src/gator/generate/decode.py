"""KV-cached batched decoding, as a token iterator: prefill the prompts once, then one token per step.

    prefill:  run the whole prompt once, store every layer's keys/values, sample token 1 from the last logits
    decode:   feed only the newest token; attention reads the stored keys/values; sample the next token

A batch of prompts of different lengths is left-padded, so every row's newest token sits in the same
column; the cache masks the padding and counts positions from each row's first real token. The caller
(gator/generate/completions.py) decides when a row is finished (a stop token or string, its own budget)
and marks it in `done`; a finished row leaves the batch before the next forward pass. So each row gets
exactly the tokens it would get alone, including near the end of the context: a short prompt keeps
going after a long one in the same batch has run out of room.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gator.generate.sampling import SamplingParams, sample_next
from gator.model.cache import KVCache


@torch.inference_mode()
def decode(model: torch.nn.Module, batch: list[list[int]], p: SamplingParams, budgets: list[int],
           done: list[bool]) -> Iterator[tuple[int, int]]:
    """Yield (row, token) for every running row, one forward pass at a time, until every row is done.

    `budgets[i]` (>= 1) is the most tokens row i may get (it sizes the cache); the caller sets `done[i]`
    once row i needs no more tokens, at the latest after its budget. `done` is read after each step.
    """
    device = next(model.parameters()).device
    B, T0 = len(batch), max(len(b) for b in batch)
    pad = torch.tensor([T0 - len(b) for b in batch])
    ids = torch.tensor([[0] * (T0 - len(b)) + b for b in batch], device=device)  # (B, T0), left-padded
    cache = KVCache.for_model(model, B, max_len=T0 + max(budgets) - 1, pad=pad)
    generator = None
    if p.seed is not None:
        generator = torch.Generator(device=device).manual_seed(p.seed)
    seen = None  # (B, V) bool: tokens already in each row's text, for the repetition penalty
    if p.repetition_penalty != 1.0:
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
        seen.scatter_(1, ids, True)
        for i in range(B):  # padding slots are not part of the text
            seen[i, 0] = 0 in batch[i]
    running = list(range(B))  # the batch row of each cache row
    logits, _ = model(ids, cache=cache, last_only=True)
    while True:
        nxt = sample_next(logits[:, -1], p, seen, generator)  # (len(running),)
        yield from zip(running, nxt.tolist())
        keep = [j for j, row in enumerate(running) if not done[row]]
        if not keep:
            return
        if len(keep) < len(running):  # finished rows leave the batch
            index = torch.tensor(keep, device=device)
            cache.keep_rows(index)
            nxt = nxt[index]
            seen = None if seen is None else seen[index]
            running = [running[j] for j in keep]
        if seen is not None:
            seen.scatter_(1, nxt[:, None], True)
        logits, _ = model(nxt[:, None], cache=cache)
