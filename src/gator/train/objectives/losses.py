"""The pieces that preference and reinforcement-learning objectives are made of, each one formula.

Notation: a batch holds B sequences `ids` (B, T) = prompt + response (+ padding). `response_mask` (B, T)
is 1 on the response tokens, the ones being scored or trained; `attention_mask` (B, T) is 1 on every
real token (prompt and response), 0 on padding, which may sit on the left or on the right.
Per-token tensors are aligned with `ids`: column t holds what concerns token ids[:, t], e.g.
logp[:, t] = log pi(ids[:, t] | ids[:, :t]). Column 0 has no prediction and is 0.

    token log-probs     logp_t = z_{t-1}[y_t] - logsumexp(z_{t-1})          z = logits, y = ids
    token entropy       H_t = logsumexp(z_{t-1}) - sum_v softmax(z_{t-1})_v z_{t-1, v}
    group advantages    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)  (GRPO; Dr. GRPO skips the /std)
    REINFORCE           L_t = -(R - b) logp_t                                (Williams, 1992)
    clipped surrogate   L_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A),
                        rho_t = exp(logp_t - old_logp_t)                    (PPO, Schulman et al., 2017)
    KL to reference     k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1   (Schulman, 2020, "k3")
    DPO                 -log sigmoid(beta ((logp_w - ref_w) - (logp_l - ref_l)))   (Rafailov et al., 2023)
    IPO                 (h - 1 / (2 beta))^2, h = (logp_w - ref_w) - (logp_l - ref_l)  (Azar et al., 2023)

Per-token losses become one number by one of three named aggregations (`aggregate`): the GRPO paper's
per-sequence mean, the token-level mean over all tokens of the batch (DAPO), and Dr. GRPO's constant
normaliser.

Empty masks. A row whose response mask is all 0 has no token to average, and no per-token loss can
say anything about it. Every reduction here raises ValueError naming such rows instead of letting them
become 0 or NaN: an empty response is a bug in the data or the rollout, which must drop the row first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gator.model.heads import padded_forward

AGGREGATIONS = ("sequence_mean", "token_mean", "constant")


# ---------------------------------------------------------------------------------------------------
# log-probabilities and entropy
# ---------------------------------------------------------------------------------------------------

def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logp (B, T): logp[:, t] = log softmax(logits[:, t-1])[ids[:, t]] for t >= 1, and logp[:, 0] = 0.

    logits (B, T, V) are the model's outputs for ids (B, T); computed in fp32 as gather - logsumexp.
    """
    z = logits[:, :-1].float()  # (B, T-1, V): position t-1 predicts token t
    picked = torch.gather(z, -1, ids[:, 1:, None].long()).squeeze(-1)
    logp = picked - torch.logsumexp(z, dim=-1)
    return F.pad(logp, (1, 0))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H (B, T): entropy in nats of the distribution that predicts token t, i.e. of softmax(logits[:, t-1]);
    H[:, 0] = 0. H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v."""
    z = logits[:, :-1].float()
    p = torch.softmax(z, dim=-1)
    entropy = torch.logsumexp(z, dim=-1) - (p * z).sum(-1)
    return F.pad(entropy, (1, 0))


def check_response_mask(response_mask: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The response mask as bool after checks: the same shape as the attention mask, only on real tokens,
    never on a row's first real token (it has nothing to be predicted from), and no row empty."""
    mask = response_mask.bool()
    if attention_mask is not None:
        if attention_mask.shape != mask.shape:
            raise ValueError(f"response_mask {tuple(mask.shape)} and attention_mask {tuple(attention_mask.shape)} "
                             "must have the same shape")
        real = attention_mask.bool()
        if bool((mask & ~real).any()):
            raise ValueError("response_mask marks padding tokens; it must be 0 wherever attention_mask is 0")
        first = real.int().argmax(1)
    else:
        first = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    if bool(mask.gather(1, first[:, None]).any()):
        raise ValueError("response_mask marks the first real token of a row; a response needs a prompt "
                         "(at least one token, e.g. a begin-of-text token) before it")
    _check_nonempty(mask)
    return mask


def response_logprobs(model: nn.Module, ids: torch.Tensor, response_mask: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, with_entropy: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp, entropy) (B, T) of the response tokens of a (left- or right-) padded batch, 0 elsewhere.

    logp[b, t] = log pi(ids[b, t] | prompt and response before t) where response_mask[b, t] = 1; each row
    gives what it would give alone (see model/heads.py for the padding). entropy is None unless asked.
    Gradients flow to the model unless the caller wraps the call in torch.no_grad().
    """
    mask = check_response_mask(response_mask, attention_mask)
    logits = padded_forward(model, ids, attention_mask)
    logp = token_logprobs(logits, ids.masked_fill(~attention_mask.bool(), 0) if attention_mask is not None else ids)
    logp = logp.masked_fill(~mask, 0.0)
    entropy = token_entropy(logits).masked_fill(~mask, 0.0) if with_entropy else None
    return logp, entropy


def sequence_logprobs(model: nn.Module, ids: torch.Tensor, response_mask: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(response | prompt) = sum over response tokens of logp_t, one per row (B,). What DPO compares."""
    logp, _ = response_logprobs(model, ids, response_mask, attention_mask)
    return logp.sum(-1)


# ---------------------------------------------------------------------------------------------------
# masked reductions
# ---------------------------------------------------------------------------------------------------

def _check_nonempty(mask: torch.Tensor) -> None:
    """Raise ValueError naming the rows (first dimension) of `mask` that hold no 1; a 1-D mask is one row."""
    if mask.dim() < 2:
        if not bool(mask.any()):
            raise ValueError("the mask is empty (no token selected); a mean over no tokens is undefined")
        return
    counts = mask.reshape(mask.shape[0], -1).sum(1)
    if bool((counts == 0).any()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"rows {rows} have an empty mask (no response token); drop them before computing "
                         "the loss: a mean over no tokens is undefined")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum of x where mask is 1: over `dim`, or over everything when dim is None. Empty rows are refused."""
    _check_nonempty(mask)
    x = x * mask.to(x.dtype)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / sum(mask) over `dim` (or everything). Raises ValueError if a row's mask is empty."""
    _check_nonempty(mask)
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum()
    return (x * m).sum(dim) / m.sum(dim)


def masked_normalize(x: torch.Tensor, mask: torch.Tensor, normalizer: float, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / normalizer, a constant that does not depend on the lengths (Dr. GRPO's MAX_TOKENS)."""
    if normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    return masked_sum(x, mask, dim) / normalizer


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "sequence_mean",
              max_tokens: int | None = None) -> torch.Tensor:
    """One loss from per-token losses (B, T) over the response tokens (mask (B, T)), by `mode`:

    - "sequence_mean" (GRPO paper, Shao et al. 2024): (1/B) sum_i (1/|o_i|) sum_t L_it; each sequence
      weighs the same, so a token of a long response counts less than one of a short response.
    - "token_mean" (DAPO, Yu et al. 2025): sum_i sum_t L_it / sum_i |o_i|; each token weighs the same.
    - "constant" (Dr. GRPO, Liu et al. 2025): sum_i sum_t L_it / (B * max_tokens), with max_tokens the
      generation budget, so no length enters the normaliser.
    """
    if mode == "sequence_mean":
        return masked_mean(per_token, mask, dim=-1).mean()
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "constant":
        if max_tokens is None:
            raise ValueError('aggregation "constant" needs max_tokens (the maximum response length)')
        return masked_normalize(per_token, mask, per_token.shape[0] * max_tokens)
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")


# ---------------------------------------------------------------------------------------------------
# advantages
# ---------------------------------------------------------------------------------------------------

@dataclass
class GroupAdvantages:
    """Advantages (N,) in the order of the rewards, the raw rewards (N,), and per-group statistics (G groups)."""

    advantages: torch.Tensor
    rewards: torch.Tensor
    group_mean: torch.Tensor
    group_std: torch.Tensor

    def stats(self) -> dict[str, float]:
        """Numbers to log: reward mean/std/max/min, and the share of groups where every reward is equal
        (those groups have zero advantage and teach nothing)."""
        r = self.rewards
        return {"reward_mean": float(r.mean()), "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
                "reward_max": float(r.max()), "reward_min": float(r.min()),
                "groups_without_signal": float((self.group_std == 0).float().mean())}


def group_advantages(rewards: torch.Tensor | list[float], group_size: int, eps: float = 1e-4,
                     scale: bool = True) -> GroupAdvantages:
    """GRPO's group-relative advantage (Shao et al., 2024): for the G = group_size samples of one prompt,

        A_i = (r_i - mean(r)) / (std(r) + eps)    with the unbiased std (divide by G - 1),

    or A_i = r_i - mean(r) with scale=False (Dr. GRPO, Liu et al. 2025: dividing by the std favours
    prompts that are too easy or too hard). Rewards (N,) come group after group (samples 0..G-1 of the
    first prompt, then of the second, ...), or as (N / G, G).
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group of one has no mean to compare with), got {group_size}")
    if r.numel() == 0 or r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards contain NaN or infinity; check the reward functions")
    groups = r.reshape(-1, group_size)
    mean = groups.mean(1)
    std = groups.std(1, correction=1)
    adv = groups - mean[:, None]
    if scale:
        adv = adv / (std[:, None] + eps)
    return GroupAdvantages(adv.reshape(r.shape), r, mean, std)


# ---------------------------------------------------------------------------------------------------
# policy-gradient losses (per token; combine with `aggregate`)
# ---------------------------------------------------------------------------------------------------

def _per_sequence(values: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A per-sequence (B,) or per-token (B, T) tensor, or a number, as (B, 1) / (B, T), detached."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device).detach()
    return v[:, None] if v.dim() == 1 else v


def reinforce_loss(logprobs: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor | float | None = None
                   ) -> torch.Tensor:
    """REINFORCE (Williams, 1992), per token: L_t = -(R - b) logp_t, with b = 0 when no baseline is given.

    Summed over a response's tokens its gradient is -(R - b) grad log pi(response), the score-function
    estimator of -grad E[R]; a baseline b that does not depend on the response (a batch mean, a group
    mean, a value estimate) leaves it unbiased and lowers its variance. R and b are constants (detached);
    rewards (B,) or (B, T), baseline a number, (B,) or (B, T).
    """
    advantage = _per_sequence(rewards, logprobs)
    if baseline is not None:
        advantage = advantage - _per_sequence(baseline, logprobs)
    return -advantage * logprobs


def clipped_surrogate_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                           eps_low: float = 0.2, eps_high: float | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO's clipped surrogate, per token, and where the clip is active (both (B, T)):

        rho_t = exp(logp_t - old_logp_t)
        L_t   = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)

    eps_high defaults to eps_low (PPO); a larger eps_high is DAPO's "clip-higher". `clipped` is True where
    the clipped term is the smaller one and differs, so the token gives no gradient: rho < 1 - eps_low with
    A < 0, or rho > 1 + eps_high with A > 0. old_logprobs and advantages (B,) or (B, T) are constants.
    """
    eps_high = eps_low if eps_high is None else eps_high
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    adv = _per_sequence(advantages, logprobs)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = ratio * adv
    clipped_term = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    loss = -torch.min(unclipped, clipped_term)
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return loss, clipped


def clip_fraction(clipped: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of response tokens whose clipped surrogate was active (gave no gradient)."""
    return float(masked_mean(clipped.float(), mask))


def reference_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman's "k3"; GRPO's KL term):

        k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1     >= 0, and 0 where logp_t = ref_t.

    Unbiased: E_{y ~ pi}[k3] = sum_y ref(y) - 1 + KL(pi || ref) = KL(pi || ref). The reference is a constant.
    """
    delta = ref_logprobs.detach() - logprobs
    return torch.exp(delta) - delta - 1


@dataclass
class GRPOLoss:
    """The loss to backpropagate and the numbers to log for one GRPO minibatch."""

    loss: torch.Tensor
    policy_loss: float
    kl: float
    clip_fraction: float


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              response_mask: torch.Tensor, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
              eps_low: float = 0.2, eps_high: float | None = None, aggregation: str = "sequence_mean",
              max_tokens: int | None = None) -> GRPOLoss:
    """GRPO's objective (Shao et al., 2024, eq. 3) as a loss: aggregate(clipped surrogate + beta * k3).

    logprobs are the current policy's (with gradient), old_logprobs the sampling policy's, advantages
    (B,) from `group_advantages`, ref_logprobs the reference's (needed when beta > 0).
    """
    mask = response_mask.bool()
    surrogate, clipped = clipped_surrogate_loss(logprobs, old_logprobs, advantages, eps_low, eps_high)
    per_token = surrogate
    kl_value = 0.0
    if beta:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs (the reference model's log-probabilities)")
        kl = reference_kl(logprobs, ref_logprobs)
        per_token = per_token + beta * kl
        kl_value = float(masked_mean(kl.detach(), mask))
    elif ref_logprobs is not None:
        kl_value = float(masked_mean(reference_kl(logprobs.detach(), ref_logprobs), mask))
    loss = aggregate(per_token, mask, aggregation, max_tokens)
    return GRPOLoss(loss, float(aggregate(surrogate.detach(), mask, aggregation, max_tokens)), kl_value,
                    clip_fraction(clipped, mask))


# ---------------------------------------------------------------------------------------------------
# preference losses: DPO and IPO
# ---------------------------------------------------------------------------------------------------

@dataclass
class PreferenceLoss:
    """A DPO/IPO loss (mean over pairs) and its diagnostics: the implicit rewards
    beta * (logp - ref_logp) of the chosen and rejected responses (B,), their margins, and the share of
    pairs where the chosen one's implicit reward is higher."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        return int((self.chosen_rewards > self.rejected_rewards).sum()) / self.chosen_rewards.numel()


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid") -> PreferenceLoss:
    """Direct Preference Optimization over pairs (y_w preferred to y_l), from sequence log-probs (B,):

        h = (logp(y_w) - ref(y_w)) - (logp(y_l) - ref(y_l))
        "sigmoid" (DPO, Rafailov et al. 2023):  L = -log sigmoid(beta h)
        "ipo"     (IPO, Azar et al. 2023):      L = (h - 1 / (2 beta))^2

    logp are sums over the response tokens (`sequence_logprobs`); the reference log-probs are constants
    (computed once, before training). TRL feeds IPO length-averaged log-probs; pass those to match it.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_ratio = chosen_logps.float() - ref_chosen_logps.detach().float()
    rejected_ratio = rejected_logps.float() - ref_rejected_logps.detach().float()
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose 'sigmoid' (DPO) or 'ipo' (IPO)")
    return PreferenceLoss(losses.mean(), losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
