"""DeepSeekMoE: shared experts plus fine-grained routed experts (DeepSeek-AI, DeepSeekMoE 2024; V2; V3).

A mixture-of-experts layer replaces the MLP by many small SwiGLU "experts"; each token is sent to only
`moe_top_k` of the `moe_routed_experts`, so parameters grow without growing the work per token:

    y = sum_shared FFN_s(x) + sum_{i in top-k} g_i * FFN_i(x)

- Shared experts see every token and hold common knowledge; routed experts are small ("fine-grained"),
  so a token combines many specialists.
- Scores: s_i = sigmoid(u_i . x) normalised over the chosen experts (V3), or softmax over all experts (V2);
  the chosen weights are multiplied by the routed scaling factor.
- Group-limited routing: experts form `moe_groups` groups; a token first keeps its best `moe_top_groups`
  groups (a group's score is the sum of its two best experts for sigmoid, its best expert for softmax)
  and chooses its experts only there (in DeepSeek-V3 a group is a machine, so this caps communication).
- Auxiliary-loss-free balancing (V3): a per-expert bias b_i is added to the scores for *choosing* only
  (the weights g_i use the unbiased scores). After each optimiser step, b_i moves by -gamma when expert i
  received more than the mean load and by +gamma when it received less (`update_bias`).
- Optional sequence-wise balance loss (V3 eq. 17-20): alpha * sum_i f_i P_i per sequence, where f_i is
  expert i's share of the sequence's routed slots (scaled so 1 is uniform) and P_i its mean normalised score.

Dispatch has no per-token Python loop: the (token, expert) assignments are sorted by expert, the tokens
gathered in that order, and each expert multiplies its contiguous block in one grouped matmul
(`torch.nn.functional.grouped_mm` where available, else one matmul per expert); results are weighted and
scattered back with `index_add`. Expert weights are stored as 3-D tensors, as transformers does.

Shapes: N tokens (B*T), d model width, E routed experts, k experts per token, F expert hidden width.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gator.config import ModelConfig
from gator.model.layers import SwiGLU


class Router(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        E = config.moe_routed_experts
        self.top_k, self.n_experts = config.moe_top_k, E
        self.scoring, self.norm_top_k, self.scale = config.moe_scoring, config.moe_norm_top_k, config.moe_routed_scale
        self.groups, self.top_groups = config.moe_groups, config.moe_top_groups
        self.weight = nn.Parameter(torch.empty(E, config.d_model))
        nn.init.normal_(self.weight, std=config.init_std)
        # The balancing bias: saved with the model (transformers calls it e_score_correction_bias).
        self.register_buffer("expert_bias", torch.zeros(E))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, d) -> weights (N, k), expert ids (N, k), scores (N, E); routing runs in fp32."""
        logits = F.linear(x.float(), self.weight.float())  # (N, E)
        scores = logits.sigmoid() if self.scoring == "sigmoid" else logits.softmax(dim=-1)  # (N, E)
        choice = scores + self.expert_bias.float()  # (N, E): the bias only steers the choice
        if self.groups > 1:
            N = x.shape[0]
            grouped = choice.view(N, self.groups, -1)  # (N, G, E/G)
            if self.scoring == "sigmoid":
                group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G)
            else:
                group_score = grouped.amax(dim=-1)  # (N, G)
            best = group_score.topk(self.top_groups, dim=-1).indices  # (N, top_groups)
            keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)  # (N, G)
            choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(N, -1)  # (N, E)
        idx = choice.topk(self.top_k, dim=-1).indices  # (N, k)
        weights = scores.gather(1, idx)  # (N, k)
        if self.norm_top_k:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scale, idx, scores


class Experts(nn.Module):
    """E SwiGLU experts with weights stacked as (E, 2F, d) [gate; up] and (E, d, F)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, d, Fh = config.moe_routed_experts, config.d_model, config.moe_ffn_dim
        self.n_experts, self.ffn_dim = E, Fh
        self.gate_up = nn.Parameter(torch.empty(E, 2 * Fh, d))
        self.down = nn.Parameter(torch.empty(E, d, Fh))
        nn.init.normal_(self.gate_up, std=config.init_std)
        nn.init.normal_(self.down, std=config.init_std / (2 * config.n_layers) ** 0.5)  # a residual projection

    def forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, d), idx/weights (N, k) -> (output (N, d), tokens per expert (E,))."""
        N, k = idx.shape
        flat = idx.reshape(-1)  # (N*k,): the expert of each (token, slot) assignment
        order = flat.argsort(stable=True)  # (N*k,): assignments grouped by expert
        token = order // k  # (N*k,): the token of each sorted assignment
        counts = torch.bincount(flat, minlength=self.n_experts)  # (E,)
        xs = x[token]  # (N*k, d): tokens in expert order
        gate, up = grouped_matmul(xs, self.gate_up, counts).chunk(2, dim=-1)  # (N*k, F) each
        ys = grouped_matmul(F.silu(gate) * up, self.down, counts)  # (N*k, d)
        ys = ys * weights.reshape(-1)[order, None].to(ys.dtype)
        return x.new_zeros(N, x.shape[1]).index_add(0, token, ys), counts


_GROUPED_MM_FAILED: set[tuple[str, torch.dtype]] = set()


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of x (M, in) sorted by group, counts (E,) rows per group, w (E, out, in) -> (M, out)."""
    key = (x.device.type, x.dtype)
    w = w.to(x.dtype)  # under autocast x arrives in bf16/fp16 while the weights stay fp32
    if hasattr(F, "grouped_mm") and key not in _GROUPED_MM_FAILED:
        try:
            y = F.grouped_mm(x, w.transpose(1, 2), offs=counts.cumsum(0).to(torch.int32))  # (M, out)
            if y.requires_grad:  # its backward wants a dense gradient (a sum() gives a stride-0 one)
                y.register_hook(lambda g: g.contiguous())
            return y
        except (RuntimeError, NotImplementedError):
            _GROUPED_MM_FAILED.add(key)  # e.g. a dtype or device without a kernel: use one matmul per group
    chunks = x.split(counts.tolist())
    # unbind, not w[e]: the backward of unbind stacks E gradients once, indexing would build E full-size ones
    return torch.cat([chunk @ we.T for we, chunk in zip(w.unbind(0), chunks)])


def sequence_balance_loss(scores: torch.Tensor, idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss, without alpha. scores (B, T, E), idx (B, T, k) -> scalar.

    Equals 1 when every sequence spreads its tokens evenly over the experts; grows with imbalance.
    """
    B, T, k = idx.shape
    probs = scores / scores.sum(dim=-1, keepdim=True)  # (B, T, E): s'_{i,t}
    P = probs.mean(dim=1)  # (B, E)
    hits = torch.zeros(B, n_experts, device=idx.device).scatter_add_(
        1, idx.reshape(B, -1), torch.ones(B, T * k, device=idx.device))  # (B, E): slots per expert
    f = hits * n_experts / (k * T)  # (B, E)
    return (f * P).sum(dim=-1).mean()


class MoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.router = Router(config)
        self.experts = Experts(config)
        shared = config.moe_shared_experts * config.moe_ffn_dim
        self.shared = SwiGLU(config, ffn_dim=shared) if shared else None  # all shared experts as one SwiGLU
        self.bias_update, self.balance_loss = config.moe_bias_update, config.moe_balance_loss
        self.aux_loss: torch.Tensor | None = None  # set by a training forward when the balance loss is on
        self._since_update: torch.Tensor | None = None  # (E,) tokens per expert since the last bias update
        self._since_reset: torch.Tensor | None = None  # (E,) tokens per expert since stats were last reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        flat = x.reshape(B * T, d)  # (N, d)
        weights, idx, scores = self.router(flat)  # (N, k), (N, k), (N, E)
        y, counts = self.experts(flat, idx, weights)  # (N, d), (E,)
        if self.shared is not None:
            y = y + self.shared(flat)
        if self.training:
            self._record(counts)
            if self.balance_loss > 0:
                self.aux_loss = self.balance_loss * sequence_balance_loss(
                    scores.view(B, T, -1), idx.view(B, T, -1), self.router.n_experts)
        return y.view(B, T, d)

    # --- load statistics and auxiliary-loss-free balancing ---
    @torch.no_grad()
    def _record(self, counts: torch.Tensor) -> None:
        if self._since_update is None or self._since_update.device != counts.device:
            self._since_update = torch.zeros_like(counts, dtype=torch.float32)
            self._since_reset = torch.zeros_like(counts, dtype=torch.float32)
        self._since_update += counts
        self._since_reset += counts

    @torch.no_grad()
    def update_bias(self) -> None:
        """Nudge each expert's bias by -+gamma toward the mean load of the steps since the last call."""
        load = self._since_update
        if load is None or self.bias_update == 0:
            return
        if dist.is_available() and dist.is_initialized():  # every rank must apply the same update
            dist.all_reduce(load)
        if load.sum() > 0:
            self.router.expert_bias += self.bias_update * torch.sign(load.mean() - load).to(self.router.expert_bias)
        load.zero_()

    def load(self, reset: bool = False) -> torch.Tensor:
        """Tokens routed to each expert (E,) in training forwards since the last reset."""
        load = self._since_reset.clone() if self._since_reset is not None else torch.zeros(self.router.n_experts)
        if reset and self._since_reset is not None:
            self._since_reset.zero_()
        return load
