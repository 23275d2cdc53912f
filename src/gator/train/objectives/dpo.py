"""Direct Preference Optimization (Rafailov et al., 2023) and IPO (Azar et al., 2023): learn from
preference pairs without a reward model or sampling.

RLHF maximises E[r(x, y)] - beta KL(pi || pi_ref). Its optimum is pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x),
so a reward can be read off a policy, r = beta log(pi / pi_ref) + beta log Z(x); put that into the
Bradley-Terry likelihood of a pair and Z cancels:

    h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
    DPO: loss = -log sigmoid(beta h)          IPO: loss = (h - 1 / (2 beta))^2

(`gator.train.objectives.losses.dpo_loss`; log pi(y|x) is the sum over the response tokens,
`sequence_logprobs`). pi_ref is the model training starts from. Its log-probabilities of every train
and held-out pair are computed once, in `prepare_model`, before any update: no second model is kept in
memory during training. With LoRA (`config.lora`, gator/train/lora.py) they are computed before the
adapters are added, i.e. by the base model, which is what the adapted model is with its adapters off.

Logged per step: the implicit rewards beta (log pi - log pi_ref) of the chosen and rejected responses,
their margin, and the preference accuracy (share of pairs whose chosen response has the higher implicit
reward); at each evaluation the same on the held-out pairs, with val_loss the DPO loss there.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from gator.data.preference import EncodedPair, PreferenceBatch
from gator.data.shards import WindowOrder
from gator.errors import TrainingError
from gator.runtime import resolve_dtype
from gator.train.checkpoint import resolve_model_dir
from gator.train.config import TrainConfig
from gator.train.objectives import LossOutput, Objective
from gator.train.objectives.losses import dpo_loss, sequence_logprobs
from gator.train.objectives.reward import PreferenceSplits, load_tokenizer, pair_batch

if TYPE_CHECKING:
    from gator.train.distributed import Env
    from gator.train.setup import Run


@dataclass
class DPOBatch:
    pairs: PreferenceBatch
    ref_chosen: torch.Tensor  # (N,) log pi_ref(y_w | x)
    ref_rejected: torch.Tensor  # (N,) log pi_ref(y_l | x)


class DirectPreference(Objective):
    """DPO / IPO on preference pairs (see the module docstring). loss_type "sigmoid" (DPO) or "ipo"."""

    name = "dpo"

    def __init__(self, config: TrainConfig, beta: float = 0.1, loss_type: str = "sigmoid",
                 val_data: str | None = None, eval_batch: int = 32):
        if beta <= 0:
            raise TrainingError(f"DPO beta must be > 0, got {beta}")
        if loss_type not in ("sigmoid", "ipo"):
            raise TrainingError(f"unknown DPO loss_type {loss_type!r}; choose sigmoid (DPO) or ipo (IPO)")
        self.config, self.beta, self.loss_type = config, beta, loss_type
        self.name = "dpo" if loss_type == "sigmoid" else "ipo"
        self.tokenizer = load_tokenizer(config)
        self.vocab_size = self.tokenizer.vocab_size
        self.val_data = val_data
        self.eval_batch = eval_batch
        self.splits: PreferenceSplits | None = None
        self.ref: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split -> (chosen, rejected) log-probs
        self.order: WindowOrder | None = None
        self.lora_model: nn.Module | None = None  # gator.train.lora.LoRAModel with config.lora

    def prepare_model(self, model: nn.Module, env: Env) -> nn.Module:
        max_length = self.config.seq_len or model.config.context_length
        cfg = self.config
        self.splits = PreferenceSplits.load(cfg.data, self.tokenizer, max_length, cfg.seed, cfg.val_fraction,
                                            self.val_data, cfg.skip_bad_lines)
        # the reference log-probs, once, from the initial weights (the base, before any adapter)
        # under the run's autocast, so that at step 0 log pi = log pi_ref exactly
        dtype = resolve_dtype(self.config.dtype, env.device)
        model.to(env.device)
        with nullcontext() if dtype == torch.float32 else torch.autocast(env.device.type, dtype=dtype):
            for split in ("train", "val"):
                self.ref[split] = pair_logprobs(model, getattr(self.splits, split), env.device, self.eval_batch)
        model.cpu()
        if cfg.lora:
            from gator.train.lora import prepare_lora

            base_dir = resolve_model_dir(cfg.init_from) if cfg.init_from else None
            model = self.lora_model = prepare_lora(model, cfg, env, base_dir)
        return model

    def start(self, run: Run) -> None:
        s = self.splits
        if len(s.train) < run.global_batch:
            raise TrainingError(f"{len(s.train)} training pairs are fewer than one batch ({run.global_batch}); "
                                "lower micro_batch or batch_tokens, or add pairs")
        self.order = WindowOrder(len(s.train), self.config.seed)
        run.say(f"data: {len(s.train):,} train / {len(s.val):,} held-out preference pairs from {self.config.data}; "
                f"{self.name} beta {self.beta}; reference log-probs computed once"
                + (f"; {self.lora_model.summary()}" if self.lora_model is not None else ""))

    def train_batch(self, run: Run, first: int, count: int) -> DPOBatch:
        index = self.order.indices(first, count)
        chosen, rejected = self.ref["train"]
        return DPOBatch(pair_batch([self.splits.train[i] for i in index], run.device),
                        chosen[index].to(run.device), rejected[index].to(run.device))

    def loss(self, model: nn.Module, batch: DPOBatch) -> LossOutput:
        b = batch.pairs
        logps = sequence_logprobs(model, b.ids, b.response_mask, b.attention_mask)
        n = b.n_pairs
        out = dpo_loss(logps[:n], logps[n:], batch.ref_chosen, batch.ref_rejected, self.beta, self.loss_type)
        metrics = {"reward_chosen": out.chosen_rewards.mean(), "reward_rejected": out.rejected_rewards.mean(),
                   "margin": out.margins.mean(), "accuracy": (out.margins > 0).float().mean()}
        return LossOutput(out.loss, int(b.attention_mask.sum()), metrics)

    def evaluate(self, run: Run) -> dict[str, float]:
        """Every process scores all held-out pairs (the same work everywhere, as FSDP needs)."""
        chosen, rejected = pair_logprobs(run.model, self.splits.val, run.device, self.eval_batch)
        ref_chosen, ref_rejected = self.ref["val"]
        out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_type)
        return {"val_loss": float(out.loss), "val_accuracy": float((out.margins > 0).float().mean()),
                "val_margin": float(out.margins.mean()), "val_reward_chosen": float(out.chosen_rewards.mean()),
                "val_reward_rejected": float(out.rejected_rewards.mean())}


@torch.no_grad()
def pair_logprobs(model: nn.Module, pairs: list[EncodedPair], device: torch.device, batch_size: int = 32
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(chosen | prompt) and log pi(rejected | prompt) (N,) each, on the CPU, in fp32 (no autocast)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        b = pair_batch(pairs[i:i + batch_size], device)
        logps = sequence_logprobs(model, b.ids, b.response_mask, b.attention_mask).float().cpu()
        chosen.append(logps[:b.n_pairs])
        rejected.append(logps[b.n_pairs:])
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)
