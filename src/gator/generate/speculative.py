"""Speculative decoding with multi-token-prediction drafts (`generate(..., draft="mtp")`).

Speculative decoding (Leviathan et al., 2023; Chen et al., 2023) lets a cheap drafter propose several
tokens and the full model check them all in ONE forward pass. DeepSeek-V3 (section 5.4.3) drafts with its
own MTP modules: they already predict tokens 2, 3, ... ahead from the main model's hidden state.

One round, with N tokens confirmed (t_0 .. t_{N-1}) and the main KV cache holding positions 0 .. N-2:

    draft:   MTP module k reads the depth-(k-1) hidden state at position N-2 and the embedding of the
             token k ahead (t_{N-1} for k = 1, then the previous drafts) -> draft d_k for t_{N-1+k}
    verify:  the main model runs [t_{N-1}, d_1, .., d_D] from its cache -> D+1 greedy choices g_0 .. g_D
    accept:  the longest prefix with d_j == g_{j-1}, plus g_a (the correction or the bonus token);
             then rewind the caches to the accepted length.

Every emitted token is the main model's own greedy choice given the tokens before it, so the output is
exactly that of plain greedy decoding (up to float rounding between a one-token and a multi-token
forward); drafts only change how many tokens one main forward yields. Completion.stats reports
`draft_tokens`, `accepted_tokens`, `acceptance_rate`, `forwards` and `tokens_per_forward`.

Each MTP module keeps its own one-layer KV cache and its hidden states by position, so it too only
processes new entries each round; entries that used rejected drafts are rewound (`KVCache.rewind`) like
the main cache. Greedy only (temperature 0, no repetition penalty); a batch is decoded one prompt after
another. `mtp_decode` is a token iterator like `decode.decode`: gator/generate/completions.py consumes it
and decides when a row stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from gator.generate.sampling import SamplingParams
from gator.model.cache import KVCache


def check_mtp_drafts(model: torch.nn.Module, p: SamplingParams) -> None:
    """Raise ValueError unless `model` can draft with MTP modules under sampling parameters `p`."""
    if getattr(model, "mtp", None) is None:
        raise ValueError("draft='mtp' needs a model with multi-token-prediction modules (config.mtp_depth > 0)")
    if p.temperature != 0 or p.repetition_penalty != 1.0:
        raise ValueError("draft='mtp' implements greedy decoding: use temperature=0 and repetition_penalty=1.0")


@torch.inference_mode()
def mtp_decode(model: torch.nn.Module, batch: list[list[int]], budgets: list[int], done: list[bool],
               stats: list[dict[str, Any]]) -> Iterator[tuple[int, int]]:
    """Yield (row, token): the greedy tokens of each prompt in turn, drafted by the MTP modules.

    The caller sets `done[i]` once row i needs no more tokens (at the latest after `budgets[i]`);
    draft counts go into `stats[i]`.
    """
    captured: list[torch.Tensor] = []  # the main model's final-norm output, caught by a hook
    hook = model.norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        for i, prompt in enumerate(batch):
            stats[i].update(draft_tokens=0, accepted_tokens=0, forwards=0)
            produced = 0
            for token in _speculate(model, prompt, budgets[i], stats[i], captured, lambda i=i: done[i]):
                produced += 1
                yield i, token
            drafted = stats[i]["draft_tokens"]
            stats[i].update(acceptance_rate=stats[i]["accepted_tokens"] / drafted if drafted else 0.0,
                            tokens_per_forward=produced / max(1, stats[i]["forwards"]))
    finally:
        hook.remove()


def _speculate(model: torch.nn.Module, prompt: list[int], budget: int, stats: dict[str, Any],
               captured: list[torch.Tensor], finished: Callable[[], bool]) -> Iterator[int]:
    """Greedy tokens for one prompt, until `finished()` after a token; `captured` receives final-norm outputs."""
    c = model.config
    device = next(model.parameters()).device
    P, D = len(prompt), len(model.mtp)
    max_len = min(c.context_length, P + budget + D)
    main_cache = KVCache.for_model(model, 1, max_len=max_len)
    mtp_caches = [KVCache.for_model(model, 1, max_len=max_len, n_layers=1) for _ in range(D)]
    hidden = [torch.zeros(1, max_len, c.d_model, device=device, dtype=next(model.parameters()).dtype)
              for _ in range(D + 1)]  # hidden[k][:, j]: depth-k state at position j (k = 0: the main model)
    valid = [0] * (D + 1)  # entries of each MTP depth computed from confirmed tokens only

    logits, _ = model(torch.tensor([prompt], device=device), cache=main_cache)  # prefill
    stats["forwards"] += 1
    hidden[0][:, :P] = captured.pop()
    seq = list(prompt) + [int(logits[0, -1].argmax())]
    yield seq[-1]
    produced = 1
    while not finished():
        N = len(seq)  # confirmed tokens; the main cache holds positions 0 .. N-2
        n_draft = max(0, min(D, max_len - N, budget - produced - 1))
        drafts: list[int] = []
        for k in range(1, n_draft + 1):  # MTP depth k: entries valid[k] .. N-2
            start, end = valid[k], N - 1
            ext = seq + drafts
            emb = model.tok_emb(torch.tensor([ext[start + k:end + k]], device=device))  # (1, T, d)
            positions = torch.arange(start + k, end + k, device=device)  # of the embedded tokens
            rope = model.rope_at(positions) if model.rope is not None else None
            cache = mtp_caches[k - 1]
            cache.rewind(cache.length - start)  # drop the entries that read rejected drafts
            mask = cache.attention_mask(end - start, c.sliding_window)
            h = model.mtp[k - 1](hidden[k - 1][:, start:end], emb, rope, cache, mask)  # (1, T, d)
            cache.advance(end - start)
            hidden[k][:, start:end] = h
            drafts.append(int(model.lm_head(h[:, -1]).argmax()))
        logits, _ = model(torch.tensor([[seq[-1]] + drafts], device=device), cache=main_cache)  # verify
        stats["forwards"] += 1
        h0 = captured.pop()  # (1, n_draft + 1, d)
        greedy = logits[0].argmax(dim=-1).tolist()  # g_0 .. g_n: the model's choice after each fed token
        a = 0
        while a < n_draft and drafts[a] == greedy[a]:
            a += 1
        new = drafts[:a] + [greedy[a]]
        hidden[0][:, N - 1:N + a] = h0[:, :a + 1]
        main_cache.rewind(n_draft - a)  # positions 0 .. N-1+a hold confirmed tokens
        for k in range(1, n_draft + 1):  # keep entries whose tokens are all confirmed
            valid[k] = min(N - 1, N + a + 1 - k)
        stats["draft_tokens"] += n_draft
        stats["accepted_tokens"] += a
        for t in new:
            yield t
            produced += 1
            if finished():
                return
        seq += new
