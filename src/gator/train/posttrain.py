"""Post-training entry points: the reward-model, DPO and GRPO objectives run through the one training loop,
with settings from a recipe (recipes/reward.yaml, dpo.yaml, grpo.yaml) and keyword overrides on top, as
`pretrain` and `finetune` take them.

    train_reward_model(init_from="runs/sft", data="pairs.jsonl", out_dir="runs/rm")
    train_dpo(init_from="runs/sft", data="pairs.jsonl", out_dir="runs/dpo", beta=0.1)
    train_grpo(init_from="runs/sft", data="prompts.jsonl", out_dir="runs/grpo", rewards=["exact_answer"])

Objective settings (beta, group size, rewards, ...) are keyword arguments of these functions; training
settings (lr, max_time, lora, ...) are TrainConfig overrides. Each returns the loop's summary plus "model",
the best weights' folder (a reward model for `train_reward_model`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from gator.train.config import TrainConfig, make_config
from gator.train.loop import train

OnStep = Callable[[int, dict], None] | None


def _config(config: TrainConfig | None, recipe: str, overrides: dict[str, Any]) -> TrainConfig:
    if config is None:
        return make_config(recipe, overrides)
    return dataclasses.replace(config, **overrides) if overrides else config


def _finish(summary: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    summary["model"] = f"{config.out_dir}/best"
    return summary


def train_reward_model(config: TrainConfig | None = None, *, recipe: str = "reward", val_data: str | None = None,
                       on_step: OnStep = None, **overrides: Any) -> dict[str, Any]:
    """Bradley-Terry reward model on preference pairs (gator/train/objectives/reward.py)."""
    from gator.train.objectives.reward import RewardModeling

    config = _config(config, recipe, overrides)
    return _finish(train(config, RewardModeling(config, val_data=val_data), on_step=on_step), config)


def train_dpo(config: TrainConfig | None = None, *, recipe: str = "dpo", beta: float = 0.1, loss_type: str = "sigmoid",
              val_data: str | None = None, on_step: OnStep = None, **overrides: Any) -> dict[str, Any]:
    """DPO (loss_type "sigmoid") or IPO ("ipo") on preference pairs (gator/train/objectives/dpo.py)."""
    from gator.train.objectives.dpo import DirectPreference

    config = _config(config, recipe, overrides)
    objective = DirectPreference(config, beta=beta, loss_type=loss_type, val_data=val_data)
    return _finish(train(config, objective, on_step=on_step), config)


def train_grpo(config: TrainConfig | None = None, *, recipe: str = "grpo",
               rewards: Sequence[str | Callable[..., list[float]]] = ("exact_answer",),
               reward_weights: Sequence[float] | None = None, on_step: OnStep = None,
               grpo: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """GRPO on a prompt file with reward functions given by name (exact_answer, number_format,
    gsm8k_answer, gsm8k_format, rm:DIR) or as callables; `grpo` holds GRPO's own settings (group_size,
    temperature, max_new_tokens, updates_per_rollout, beta, eps_low, eps_high, aggregation,
    scale_rewards, eval_data, eval_prompts; see gator/train/objectives/grpo.py)."""
    from gator.train.objectives.grpo import GRPO, named_reward
    from gator.train.objectives.reward import load_tokenizer

    config = _config(config, recipe, overrides)
    tokenizer = load_tokenizer(config)
    functions = [named_reward(r, tokenizer) if isinstance(r, str) else r for r in rewards]
    objective = GRPO(config, functions, reward_weights, **(grpo or {}))
    return _finish(train(config, objective, on_step=on_step), config)
