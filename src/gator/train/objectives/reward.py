"""Reward modelling: teach a transformer with a scalar head which of two responses people preferred.

    r = RewardModel(ids)                                    one number per (prompt, response), read at the
                                                           last real token (gator/model/heads.py)
    loss = mean over pairs of -log sigmoid(r_chosen - r_rejected)        (Bradley & Terry, 1952)

The model starts from a language model (`init_from`, usually the SFT model: it already reads the task),
whose LM head is replaced by a fresh Linear(d_model, 1) (`RewardModel.from_lm`). Data: preference
pairs in JSONL (gator/data/preference.py), plain text or conversational; a held-out split (a fraction of
the file, or a second file) measures pairwise accuracy, the share of pairs where the chosen response
gets the higher reward. That accuracy is what tells you whether the reward model can rank what a
policy will produce.

A sample is one pair. Global sample k is pair `WindowOrder(n_pairs, seed).indices(k, 1)` (epoch e is
permutation e of the pairs), so resume is exact. The run folder's best/ and checkpoint/ hold a reward
model: `RewardModel.from_pretrained(run_dir / "best")`, exported to transformers with
`gator.interop.hf_reward.export_reward_hf`.

`PreferenceSplits` (reading, encoding and splitting the pairs) is shared with DPO (dpo.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from gator.data.preference import (
    EncodedPair,
    PreferenceBatch,
    collate_preferences,
    encode_preference,
    read_preferences,
)
from gator.data.shards import WindowOrder
from gator.errors import TrainingError
from gator.model.heads import RewardModel, bradley_terry_loss, pairwise_accuracy
from gator.train.checkpoint import resolve_model_dir
from gator.train.config import TrainConfig
from gator.train.objectives import LossOutput, Objective

if TYPE_CHECKING:
    from gator.train.distributed import Env
    from gator.train.setup import Run

END_OF_TEXT = "<|endoftext|>"


def load_tokenizer(config: TrainConfig) -> Any:
    """The tokenizer of a post-training run: `config.tokenizer`, else the one saved with `init_from`."""
    from gator.tokenizer import Tokenizer

    where = config.tokenizer or (str(resolve_model_dir(config.init_from)) if config.init_from else None)
    if where is None:
        raise TrainingError("post-training needs a tokenizer: start from a model folder (init_from=DIR, which holds "
                            "one) or pass tokenizer=DIR")
    try:
        return Tokenizer.load(where)
    except FileNotFoundError:
        raise TrainingError(f"{where} holds no tokenizer; pass tokenizer=DIR") from None


def text_eos_id(tokenizer: Any) -> int | None:
    """The id appended to plain-text responses: <|endoftext|> when the tokenizer has it."""
    return getattr(tokenizer, "special_ids", {}).get(END_OF_TEXT)


@dataclass
class PreferenceSplits:
    """Encoded train and held-out pairs, and what was dropped on the way."""

    train: list[EncodedPair]
    val: list[EncodedPair]
    skipped: list[str]

    @classmethod
    def load(cls, path: str | Path, tokenizer: Any, max_length: int, seed: int, val_fraction: float = 0.1,
             val_path: str | Path | None = None, skip_bad_lines: bool = False) -> PreferenceSplits:
        """Read and encode `path`; the held-out split is `val_path`, or a random `val_fraction` of the pairs
        (the same ones for a given seed). Responses are cut so that prompt + response fits max_length."""
        if not path:
            raise TrainingError("no preference data: set data=FILE (JSONL with prompt/chosen/rejected)")
        if not Path(path).is_file():
            raise TrainingError(f"preference data {path} does not exist")
        data = read_preferences(path, skip_bad_lines)
        eos = text_eos_id(tokenizer)
        encoded = [encode_preference(p, tokenizer, eos, max_length) for p in data.pairs]
        skipped = list(data.skipped)
        if val_path:
            val = [encode_preference(p, tokenizer, eos, max_length) for p in read_preferences(val_path).pairs]
            train = encoded
        else:
            if not 0 < val_fraction < 1:
                raise TrainingError(f"val_fraction must be in (0, 1), got {val_fraction}")
            order = np.random.default_rng([seed, 7]).permutation(len(encoded))
            n_val = max(1, round(val_fraction * len(encoded)))
            if n_val >= len(encoded):
                raise TrainingError(f"{path} holds {len(encoded)} pairs, too few to hold {n_val} out; add pairs "
                                    "or give a separate validation file")
            val = [encoded[i] for i in order[:n_val]]
            train = [encoded[i] for i in order[n_val:]]
        return cls(train, val, skipped)


def pair_batch(pairs: list[EncodedPair], device: torch.device) -> PreferenceBatch:
    """Pairs as one right-padded batch on `device` (chosen rows first, then rejected rows)."""
    b = collate_preferences(pairs, pad_id=0, padding_side="right")
    return PreferenceBatch(b.ids.to(device), b.attention_mask.to(device), b.response_mask.to(device))


class RewardModeling(Objective):
    """Bradley-Terry training of a RewardModel on preference pairs (see the module docstring)."""

    name = "reward"

    def __init__(self, config: TrainConfig, val_data: str | None = None, eval_batch: int = 32):
        if config.lora:
            raise TrainingError("a reward model trains its new score head and the whole trunk; LoRA (lora=true) "
                                "is not supported for it")
        self.config = config
        self.tokenizer = load_tokenizer(config)
        self.vocab_size = self.tokenizer.vocab_size
        self.val_data = val_data
        self.eval_batch = eval_batch
        self.splits: PreferenceSplits | None = None
        self.order: WindowOrder | None = None

    def prepare_model(self, model: nn.Module, env: Env) -> nn.Module:
        max_length = self.config.seq_len or model.config.context_length
        cfg = self.config
        self.splits = PreferenceSplits.load(cfg.data, self.tokenizer, max_length, cfg.seed, cfg.val_fraction,
                                            self.val_data, cfg.skip_bad_lines)
        return RewardModel.from_lm(model)

    def start(self, run: Run) -> None:
        s = self.splits
        if len(s.train) < run.global_batch:
            raise TrainingError(f"{len(s.train)} training pairs are fewer than one batch ({run.global_batch}); "
                                "lower micro_batch or batch_tokens, or add pairs")
        self.order = WindowOrder(len(s.train), self.config.seed)
        run.say(f"data: {len(s.train):,} train / {len(s.val):,} held-out preference pairs from {self.config.data}"
                + (f" ({len(s.skipped)} bad lines skipped)" if s.skipped else ""))

    def train_batch(self, run: Run, first: int, count: int) -> PreferenceBatch:
        return pair_batch([self.splits.train[i] for i in self.order.indices(first, count)], run.device)

    def loss(self, model: nn.Module, batch: PreferenceBatch) -> LossOutput:
        rewards = model(batch.ids, batch.attention_mask).float()
        n = batch.n_pairs
        chosen, rejected = rewards[:n], rewards[n:]
        loss = bradley_terry_loss(chosen, rejected)
        metrics = {"accuracy": (chosen > rejected).float().mean().detach(),
                   "margin": (chosen - rejected).mean().detach()}
        return LossOutput(loss, int(batch.attention_mask.sum()), metrics)

    def evaluate(self, run: Run) -> dict[str, float]:
        """Every process scores all held-out pairs (the same work everywhere, as FSDP needs)."""
        chosen, rejected = score_pairs(run.model, self.splits.val, run.device, self.eval_batch)
        return {"val_loss": float(bradley_terry_loss(chosen, rejected)),
                "val_accuracy": pairwise_accuracy(chosen, rejected),
                "val_margin": float((chosen - rejected).mean())}


@torch.no_grad()
def score_pairs(model: nn.Module, pairs: list[EncodedPair], device: torch.device, batch_size: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (N,) of the chosen and of the rejected responses of `pairs`, in order."""
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        b = pair_batch(pairs[i:i + batch_size], device)
        r = model(b.ids, b.attention_mask).float().cpu()
        chosen.append(r[:b.n_pairs])
        rejected.append(r[b.n_pairs:])
    return torch.cat(chosen), torch.cat(rejected)
