"""A KV cache with one slot per running request, each slot with its own length (for continuous batching).

`KVCache` (model/cache.py) serves one static batch: every row starts together and has the same length.
A serving engine instead runs requests that arrive and finish at different times (Yu et al., 2022,
"Orca: a distributed serving system for transformer-based generative models"; vLLM's scheduler).
Here each request owns a *slot*: a row of pre-allocated key/value buffers and a length of its own.

    slot 0:  [k k k k k k k . . . .]   length 7   (a request mid-answer)
    slot 1:  [k k k . . . . . . . .]   length 3   (a request that just joined)
    slot 2:  [. . . . . . . . . . .]   length 0   (free)

A forward pass runs on a contiguous range of slots through a `SlotView`, which speaks the protocol the
model's forward uses (`length`, `end_position`, `positions`, `update`, `attention_mask`, `advance`): row b's new tokens
sit at positions lengths[b], lengths[b]+1, ...; its keys are the first lengths[b]+T entries of its slot,
and the mask hides everything past them (stale keys of an earlier occupant included). So a request's
tokens are exactly what it would get alone, whatever else shares the step.

A prefill runs on one slot (T = prompt length); a decode step runs on all busy slots at once (T = 1).
Rows of free slots inside the range compute a throw-away token and do not advance. `copy_slot` clones a
prefilled prompt into more slots, so n completions of one prompt share its prefill.

Mixture-of-Depths models record, per layer, which tokens skipped it (`KVCache.key_mask`); this cache
does not, and refuses them.
"""

from __future__ import annotations

import torch


class SlotCache:
    def __init__(self, n_layers: int, n_slots: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 v_head_dim: int | None = None):
        shape_k = (n_slots, n_kv_heads, max_len, head_dim)
        shape_v = (n_slots, n_kv_heads, max_len, head_dim if v_head_dim is None else v_head_dim)
        self.k = [torch.zeros(shape_k, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape_v, dtype=dtype, device=device) for _ in range(n_layers)]
        self.n_slots, self.max_len = n_slots, max_len
        self.lengths = torch.zeros(n_slots, dtype=torch.long)  # tokens stored per slot (kept on the CPU)

    @classmethod
    def for_model(cls, model: torch.nn.Module, n_slots: int, max_len: int | None = None,
                  dtype: torch.dtype | None = None) -> SlotCache:
        c = model.config
        if c.mod_layers:
            raise ValueError("this model uses Mixture-of-Depths layers, whose skipped tokens need a per-layer key "
                             "mask the slot cache does not keep; serve it without batching (gator.generate."
                             "generate) or use a model without mod_layers")
        if n_slots < 1:
            raise ValueError(f"the cache needs at least one slot, got n_slots={n_slots}")
        p = next(model.parameters())
        max_len = max_len or c.context_length
        if max_len > c.context_length and c.positions != "none":
            raise ValueError(f"cache length {max_len} exceeds the model's context_length {c.context_length}")
        if c.attention == "mla":  # one [latent ; RoPE key] row per token in k, v unused: see model/mla.py
            return cls(c.n_layers, n_slots, 1, c.kv_lora_rank + c.qk_rope_head_dim, max_len,
                       dtype=dtype or p.dtype, device=p.device, v_head_dim=0)
        return cls(c.n_layers, n_slots, c.n_kv_heads, c.head_dim, max_len, dtype=dtype or p.dtype, device=p.device)

    def view(self, start: int, stop: int, live: list[bool] | None = None) -> SlotView:
        """The cache as the model sees it for one forward over slots [start, stop). `live[i]` False marks a
        free slot inside the range: it is computed but its length does not move."""
        if not 0 <= start < stop <= self.n_slots:
            raise ValueError(f"slot range [{start}, {stop}) is outside the cache's {self.n_slots} slots")
        return SlotView(self, start, stop, live)

    def copy_slot(self, src: int, dst: int) -> None:
        """Make slot dst a copy of slot src (its stored keys/values and its length)."""
        n = int(self.lengths[src])
        for buf in self.k + self.v:
            buf[dst, :, :n] = buf[src, :, :n]
        self.lengths[dst] = n

    def free(self, slot: int) -> None:
        """Forget a slot's contents; its stale keys stay in memory but are masked from now on."""
        self.lengths[slot] = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class SlotView:
    """One forward pass's window onto a SlotCache: rows = slots [start, stop)."""

    def __init__(self, cache: SlotCache, start: int, stop: int, live: list[bool] | None):
        self.cache, self.rows = cache, slice(start, stop)
        self.starts_cpu = cache.lengths[start:stop].clone()  # (B,) tokens each row already holds
        self.live = torch.ones(stop - start, dtype=torch.bool) if live is None else torch.tensor(live, dtype=torch.bool)
        device = cache.k[0].device
        self.starts = self.starts_cpu.to(device)
        self.length = int(self.starts_cpu.max())  # the longest row: the model checks it against its context

    def end_position(self, T: int) -> int:
        """One past the largest position (over rows) that the next T tokens get."""
        return self.length + T

    def positions(self, T: int) -> torch.Tensor:
        """(B, T): row b's new tokens continue its own sequence at lengths[b], lengths[b] + 1, ..."""
        return self.starts[:, None] + torch.arange(T, device=self.starts.device)[None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, kv_heads, T, d) after each row's stored tokens; return keys/values (B, kv_heads, L, d)
        for L = longest row + T (entries past a row's own length are stale and masked)."""
        B, _, T, _ = k.shape
        L = self.length + T
        if L > self.cache.max_len:
            raise ValueError(f"slot cache is full: {L} tokens > max_len {self.cache.max_len}")
        kb, vb = self.cache.k[layer][self.rows], self.cache.v[layer][self.rows]  # views, no copy
        if T == 1:  # the decode step: one scatter for the whole batch
            rows = torch.arange(B, device=k.device)
            kb[rows, :, self.starts] = k[:, :, 0]
            vb[rows, :, self.starts] = v[:, :, 0]
        else:
            for b, s in enumerate(self.starts_cpu.tolist()):
                kb[b, :, s:s + T] = k[b]
                vb[b, :, s:s + T] = v[b]
        return kb[:, :, :L], vb[:, :, :L]

    def attention_mask(self, T: int, window: int | None = None) -> torch.Tensor | None:
        """(B, 1, T, L) bool: row b's query t (at position lengths[b] + t) sees keys 0..lengths[b] + t
        (the last `window` of them with a sliding window). None when every row sees every key."""
        if T == 1 and window is None and bool((self.starts_cpu == self.length).all()):
            return None
        device = self.starts.device
        q = self.starts[:, None] + torch.arange(T, device=device)[None, :]  # (B, T) query positions
        kpos = torch.arange(self.length + T, device=device)[None, None, :]  # (1, 1, L)
        allowed = kpos <= q[:, :, None]  # (B, T, L): causal, and nothing past the row's own tokens
        if window is not None:
            allowed = allowed & (kpos > q[:, :, None] - window)
        return allowed[:, None]

    def advance(self, T: int) -> None:
        """Called by the model after every layer stored its T new entries: live rows grow by T."""
        self.cache.lengths[self.rows] += T * self.live.long()

    def key_mask(self, layer: int) -> torch.Tensor:
        raise ValueError("the slot cache does not support Mixture-of-Depths layers")
