"""A pre-allocated key/value cache for autoregressive decoding.

Without a cache, generating token t re-runs the whole prefix through every layer: O(t^2) work per token.
The cache keeps each layer's keys and values for the tokens already seen, so a decode step only runs the
new token and attends over stored keys. Buffers are allocated once for the longest sequence
(`max_len`), so decoding never reallocates or concatenates.

Batches of prompts with different lengths are left-padded to a common length. `pad[b]` counts the
padding slots at the start of row b: they are masked out as keys, and positions are counted from the
first real token, so a padded row produces exactly what it would alone. A padded cache may therefore
hold more slots than the model's context: what is limited is each row's last position.

Decoders change the cache only through its methods: `advance` after a forward pass, `rewind(n)` to
forget the last n entries (speculative decoding drops the entries of rejected drafts), and
`keep_rows` when finished rows leave the batch.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 pad: torch.Tensor | None = None, v_head_dim: int | None = None):
        shape_k = (batch_size, n_kv_heads, max_len, head_dim)
        shape_v = (batch_size, n_kv_heads, max_len, head_dim if v_head_dim is None else v_head_dim)
        self.k = [torch.zeros(shape_k, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape_v, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.batch_size = batch_size
        self.length = 0  # slots filled so far (the same for every row; padding counts as filled)
        self.pad: torch.Tensor | None = None  # (B,) left-padding per row; None when no row is padded
        self.min_pad = 0  # the least padding of any row (a Python int, for position checks without a sync)
        if pad is not None and bool(pad.any()):
            self.pad, self.min_pad = pad.to(device), int(pad.min())
        self.key_masks: dict[int, torch.Tensor] = {}  # Mixture-of-Depths layers only: see key_mask

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int | None = None,
                  pad: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                  n_layers: int | None = None) -> KVCache:
        """A cache shaped for `model`'s attention; `n_layers` overrides the layer count (an MTP module has one)."""
        c = model.config
        p = next(model.parameters())
        max_len = max_len or c.context_length
        most_pad = int(pad.max()) if pad is not None and len(pad) else 0  # the row with the most room
        if max_len - most_pad > c.context_length and c.positions != "none":
            raise ValueError(f"cache length {max_len} exceeds the model's context_length {c.context_length} "
                             f"even for the row with the most padding ({most_pad} slots)")
        n_layers = c.n_layers if n_layers is None else n_layers
        if c.attention == "mla":  # one [latent ; RoPE key] row per token in k, v unused: see model/mla.py
            return cls(n_layers, batch_size, 1, c.kv_lora_rank + c.qk_rope_head_dim, max_len,
                       dtype=dtype or p.dtype, device=p.device, pad=pad, v_head_dim=0)
        return cls(n_layers, batch_size, c.n_kv_heads, c.head_dim, max_len, dtype=dtype or p.dtype,
                   device=p.device, pad=pad)

    def end_position(self, T: int) -> int:
        """One past the largest position (over rows) that the next T tokens get."""
        return self.length + T - self.min_pad

    def positions(self, T: int) -> torch.Tensor:
        """Positions of the next T tokens: (T,) when no row is padded, else (B, T)."""
        device = self.k[0].device
        pos = torch.arange(self.length, self.length + T, device=device)
        if self.pad is None:
            return pos
        return (pos[None, :] - self.pad[:, None]).clamp_min(0)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, kv_heads, T, d) at the current slots; return all keys/values so far."""
        T = k.shape[2]
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} tokens > max_len {self.max_len}")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int) -> None:
        """Called once per forward pass, after every layer has stored its T new entries."""
        self.length += T

    def rewind(self, n: int) -> None:
        """Forget the last n entries of every row and layer; the next forward overwrites their slots."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot rewind {n} entries of a cache holding {self.length}")
        self.length -= n

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows at indices `rows` (1-D, in the new order); the others' buffers are freed."""
        rows = rows.to(self.k[0].device)
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.key_masks = {layer: m[rows] for layer, m in self.key_masks.items()}
        self.batch_size = len(rows)
        if self.pad is not None:
            pad = self.pad[rows]
            self.pad, self.min_pad = (pad, int(pad.min())) if bool(pad.any()) else (None, 0)

    def attention_mask(self, T: int, window: int | None = None) -> torch.Tensor | None:
        """Boolean mask (B or 1, 1, T, length+T) of allowed (query, key) pairs for the next T queries.

        None means "every stored key is visible", which lets attention skip the mask entirely (the
        common decode step without padding or window).
        """
        L = self.length + T
        if T == 1 and self.pad is None and (window is None or L <= window):
            return None
        device = self.k[0].device
        q = torch.arange(self.length, L, device=device)[:, None]
        kpos = torch.arange(L, device=device)[None, :]
        allowed = kpos <= q  # causal
        if window is not None:
            allowed = allowed & (kpos > q - window)
        allowed = allowed[None, None]  # (1, 1, T, L)
        if self.pad is not None:
            real_key = kpos[None] >= self.pad[:, None, None]  # (B, 1, L)
            allowed = allowed & real_key[:, None]
            # A padding query sees no real key; let it see itself so softmax stays finite (it is ignored).
            allowed = allowed | (q == kpos)[None, None]
        return allowed

    def key_mask(self, layer: int) -> torch.Tensor:
        """(B, max_len) bool: which stored keys of `layer` exist. Mixture-of-Depths layers skip tokens, so
        they mark the slots of skipped tokens False (see model/depth.py); other layers never call this."""
        if layer not in self.key_masks:
            self.key_masks[layer] = torch.ones(self.batch_size, self.max_len, dtype=torch.bool,
                                               device=self.k[layer].device)
        return self.key_masks[layer]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
