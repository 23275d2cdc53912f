"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath; the RL of DeepSeek-R1): PPO's
clipped policy gradient with the value network replaced by the other samples of the same prompt.

One rollout, then `updates_per_rollout` optimizer steps on it:

    for each prompt q of the step: sample G completions o_1..o_G ~ pi_old(.|q)    (KV-cached batched
                                                                                   generation, temperature T,
                                                                                   stop at end-of-turn)
    r_i   = sum_f w_f f(q, o_i)                       Python reward functions (rewards.py), or a reward model
    A_i   = (r_i - mean(r)) / (std(r) + eps)          the group is the baseline: no value network
    old_t = log pi_old(o_i,t | q, o_i,<t)             a forward pass of the sampling policy, kept fixed
    loss  = aggregate_t( -min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i) + beta k3_t ),
            rho_t = exp(log pi(o_i,t) - old_t),  k3 = KL estimate to the reference (losses.py)

PPO needs a learned value V(s) to turn rewards into advantages; for a language model that is a second
network as big as the policy. GRPO samples several answers per question instead: their mean reward is
the baseline, and the group's spread sets the scale (`scale_rewards=False` drops the division, Dr. GRPO).

How it sits in the one loop. A sample is a prompt with its group of G completions; a step reads
`global_batch` prompts. Rollout k serves steps k*mu .. k*mu + mu - 1 (mu = updates_per_rollout): the
first of them generates it with the current weights (`run.raw_model`, which is pi_old), keeps it in a
buffer, and every step of the rollout trains on the same completions with the clipped loss, so from the
second step on rho differs from 1 and the clip can act. Rollout k's prompts are prompts
k*global_batch ... of `WindowOrder(n_prompts, seed)` and its sampling seed is a function of (seed, k,
the sample's place in the step): given the weights, a rollout is a pure function of the sample index.
The buffer is part of the objective's state, so a run resumed in the middle of a rollout's updates trains
on exactly the completions the uninterrupted run had (exact resume for one process; under torchrun only
rank 0's buffer is saved, and other ranks regenerate theirs from the resumed weights).

The reference for the KL term (beta > 0) is the initial model: a frozen copy for full fine-tuning, the
same model with its adapters off with LoRA (no second model).

Logged each step (averaged over the rollout's completions): reward_mean, reward_max, accuracy (share of
completions the first reward function scores >= 1, e.g. right answers), response_length (tokens,
end-of-turn included), clip_fraction, kl, entropy (nats per response token), policy_loss, and
rollout_seconds (seconds this step spent generating and scoring; the rest of the step is optimisation).
Evaluation decodes the held-out prompts greedily: val_reward, val_accuracy, and val_loss = -val_reward
(so best/ keeps the highest reward), plus rollout_share, the fraction of training time spent in rollouts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from gator.data.preference import encode_text
from gator.data.shards import WindowOrder
from gator.errors import TrainingError
from gator.generate import generate
from gator.jsonl import jsonl_objects
from gator.model.lora import adapters_off
from gator.train.checkpoint import resolve_model_dir
from gator.train.config import TrainConfig
from gator.train.objectives import LossOutput, Objective
from gator.train.objectives.losses import AGGREGATIONS, group_advantages, grpo_loss, masked_mean, response_logprobs
from gator.train.objectives.reward import load_tokenizer, text_eos_id
from gator.train.objectives.rewards import RewardFunction, score_completions

if TYPE_CHECKING:
    from gator.train.distributed import Env
    from gator.train.setup import Run


# ---------------------------------------------------------------------------------------------------
# prompts: reading, encoding, scoring greedy answers
# ---------------------------------------------------------------------------------------------------

def read_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a prompt dataset: {"prompt": text or messages, other columns...}. GSM8K's {"question",
    "answer"} rows work too (the question is the prompt). The columns reach the reward functions."""
    if not Path(path).is_file():
        raise TrainingError(f"prompt data {path} does not exist")
    rows = []
    for lineno, row in jsonl_objects(path):
        if "prompt" not in row and "question" in row:
            row = {"prompt": row["question"], **{k: v for k, v in row.items() if k != "question"}}
        prompt = row.get("prompt")
        if not (isinstance(prompt, str) and prompt) and not (isinstance(prompt, list) and prompt):
            raise TrainingError(f'{path}, line {lineno}: a row needs a non-empty "prompt" (text or a list of '
                                'messages) or a "question"')
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise TrainingError(f"{path} holds no prompts")
    return rows


def encode_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """Prompt ids: a chat model gets the template with the generation prompt (text becomes a user turn)."""
    if getattr(tokenizer, "chat_template", None) is not None:
        from gator.tokenizer.chat import apply_chat_template

        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return list(apply_chat_template(tokenizer, messages, add_generation_prompt=True))
    if not isinstance(prompt, str):
        raise TrainingError("conversational prompts need a tokenizer with a chat template")
    return encode_text(tokenizer, prompt)


def stop_ids(tokenizer: Any) -> list[int]:
    """What ends a completion: the end-of-turn token of a chat template, else <|endoftext|> (if any)."""
    if getattr(tokenizer, "chat_template", None) is not None:
        from gator.tokenizer.chat import chat_stop_ids

        return chat_stop_ids(tokenizer)
    eos = text_eos_id(tokenizer)
    return [] if eos is None else [eos]


def as_completion(prompt: Any, text: str) -> Any:
    """A completion the way reward functions get it: text, or the assistant's message for chat prompts."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def columns_of(rows: Sequence[dict[str, Any]], repeat: int = 1) -> dict[str, list[Any]]:
    """Every column but the prompt, one value per completion (each row repeated `repeat` times)."""
    keys = sorted({k for r in rows for k in r} - {"prompt"})
    return {k: [r.get(k) for r in rows for _ in range(repeat)] for k in keys}


@torch.no_grad()
def evaluate_prompts(model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, Any]],
                     reward_functions: Sequence[RewardFunction], weights: Sequence[float] | None = None,
                     max_new_tokens: int = 16, batch_size: int = 64) -> dict[str, Any]:
    """Greedy answers to `rows`, scored: {"reward": mean total reward, "accuracy": share the first reward
    function scores >= 1, "answers": the texts}. The held-out metric of GRPO and of the post-training demo."""
    was_training = model.training
    model.eval()
    encoded = [encode_prompt(tokenizer, r["prompt"]) for r in rows]
    texts: list[str] = []
    with torch.autocast(next(model.parameters()).device.type, enabled=False):
        for i in range(0, len(rows), batch_size):
            outs = generate(model, encoded[i:i + batch_size], temperature=0.0, max_new_tokens=max_new_tokens,
                            stop_tokens=stop_ids(tokenizer))
            texts += [tokenizer.decode(o.tokens) for o in outs]
    model.train(was_training)
    prompts = [r["prompt"] for r in rows]
    total, parts = score_completions(reward_functions, prompts, [as_completion(p, t) for p, t in zip(prompts, texts)],
                                     weights, **columns_of(rows))
    first = next(iter(parts.values()))
    return {"reward": float(np.mean(total)), "accuracy": float(np.mean([v >= 1 for v in first])), "answers": texts}


# ---------------------------------------------------------------------------------------------------
# rollouts
# ---------------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    """G completions for each of a micro-batch's prompts, ready for the loss. Rows: prompt + response,
    right-padded; tensors (R, T) or (R,), R = prompts x G, group after group."""

    ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    old_logprobs: torch.Tensor  # log pi_old per response token (0 elsewhere)
    advantages: torch.Tensor  # (R,)
    rewards: torch.Tensor  # (R,) weighted total reward
    correct: torch.Tensor  # (R,) 1.0 where the first reward function gave >= 1
    ref_logprobs: torch.Tensor | None = None  # log pi_ref per response token, when beta > 0
    seconds: float = 0.0  # generation + scoring time, reported once (by the step that made it)

    def to(self, device: torch.device) -> Rollout:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def state(self) -> dict[str, Any]:
        return {f.name: (v.cpu() if isinstance(v, torch.Tensor) else v) for f in fields(self)
                if (v := getattr(self, f.name)) is not None}


def rollout_rows(prompts: Sequence[list[int]], responses: Sequence[list[int]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, response_mask) of prompt + response rows, padded on the right with 0."""
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    attention = torch.zeros(len(prompts), T, dtype=torch.long)
    response = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        attention[i, :len(p) + len(r)] = 1
        response[i, len(p):len(p) + len(r)] = 1
    return ids, attention, response


class GRPO(Objective):
    """GRPO on a prompt dataset (config.data, JSONL) with Python reward functions (see the module doc)."""

    name = "grpo"

    def __init__(self, config: TrainConfig, reward_functions: Sequence[RewardFunction],
                 reward_weights: Sequence[float] | None = None, group_size: int = 8, temperature: float = 1.0,
                 top_k: int | None = None, max_new_tokens: int = 32, updates_per_rollout: int = 2,
                 beta: float = 0.0, eps_low: float = 0.2, eps_high: float | None = None,
                 aggregation: str = "sequence_mean", scale_rewards: bool = True, eval_data: str | None = None,
                 eval_prompts: int = 64, eval_batch: int = 64):
        if group_size < 2:
            raise TrainingError(f"group_size must be >= 2 (GRPO compares the samples of a prompt), got {group_size}")
        if updates_per_rollout < 1:
            raise TrainingError(f"updates_per_rollout must be >= 1, got {updates_per_rollout}")
        if aggregation not in AGGREGATIONS:
            raise TrainingError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        if not reward_functions:
            raise TrainingError("GRPO needs at least one reward function")
        if temperature <= 0:
            raise TrainingError(f"temperature must be > 0 for sampling rollouts, got {temperature}")
        if beta < 0:
            raise TrainingError(f"beta must be >= 0, got {beta}")
        self.config = config
        self.reward_functions, self.reward_weights = list(reward_functions), reward_weights
        self.group_size, self.temperature, self.top_k = group_size, temperature, top_k
        self.max_new_tokens, self.mu, self.beta = max_new_tokens, updates_per_rollout, beta
        self.eps_low, self.eps_high = eps_low, eps_high
        self.aggregation, self.scale_rewards = aggregation, scale_rewards
        self.eval_batch = eval_batch
        self.tokenizer = load_tokenizer(config)
        self.vocab_size = self.tokenizer.vocab_size
        self.stop = stop_ids(self.tokenizer)
        if len(self.stop) > 1:
            raise TrainingError(f"several stop tokens {self.stop}; GRPO needs one end-of-turn token")
        if not config.data:
            raise TrainingError("no prompts: set data=FILE (JSONL with a prompt column and the reward's columns)")
        rows = read_prompts(config.data)
        if eval_data:
            self.val_rows = read_prompts(eval_data, limit=eval_prompts)
        else:  # hold some prompts out
            n_val = min(eval_prompts, max(1, len(rows) // 10))
            if n_val >= len(rows):
                raise TrainingError(f"{config.data} holds {len(rows)} prompts, too few to hold any out; give "
                                    "eval_data")
            order = np.random.default_rng([config.seed, 7]).permutation(len(rows))
            self.val_rows = [rows[i] for i in order[:n_val]]
            rows = [rows[i] for i in order[n_val:]]
        self.rows = rows
        self.encoded = [encode_prompt(self.tokenizer, r["prompt"]) for r in rows]
        self.order: WindowOrder | None = None
        self.model: nn.Module | None = None  # the model being trained (set by prepare_model)
        self.lora_model: nn.Module | None = None  # gator.train.lora.LoRAModel with config.lora
        self.reference: nn.Module | None = None
        self.buffer: dict[int, Rollout] = {}  # the current rollout, by the micro-batch's offset in the step
        self.buffer_rollout = -1
        self.rollout_seconds = 0.0  # all rollouts so far, over every session of the run
        self.accum = 1
        self.last_rollout: dict[str, Any] = {}  # the latest rollout's prompts and texts (for tests and logs)

    # -- the model -----------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, env: Env) -> nn.Module:
        cfg = self.config
        if self.beta > 0 and not cfg.lora:  # full fine-tuning: the reference is a frozen copy
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.lora:
            from gator.train.lora import prepare_lora

            base_dir = resolve_model_dir(cfg.init_from) if cfg.init_from else None
            model = self.lora_model = prepare_lora(model, cfg, env, base_dir)
        self.model = model
        return model

    def start(self, run: Run) -> None:
        if run.env.distributed and self.config.parallel == "fsdp":
            raise TrainingError("GRPO generates its rollouts with the whole model on every process; use "
                                "parallel=ddp, not fsdp")
        context = run.raw_model.config.context_length
        longest = max(map(len, self.encoded))
        if longest >= context:
            raise TrainingError(f"a prompt has {longest} tokens, leaving no room for an answer in the model's "
                                f"context of {context}; shorten the prompts")
        if self.reference is not None:
            self.reference.to(run.device)
        self.order = WindowOrder(len(self.rows), self.config.seed)
        self.accum = run.accum
        run.say(f"data: {len(self.rows):,} train / {len(self.val_rows):,} held-out prompts from {self.config.data}; "
                f"{run.global_batch} prompts x {self.group_size} samples per rollout, {self.mu} update"
                f"{'s' if self.mu > 1 else ''} per rollout; rewards "
                + ", ".join(getattr(f, "__name__", "?") for f in self.reward_functions)
                + (f"; {self.lora_model.summary()}" if self.lora_model is not None else ""))

    # -- batches: rollouts -----------------------------------------------------------------------------
    def train_batch(self, run: Run, first: int, count: int) -> Rollout:
        k, local = run.step // self.mu, first - run.samples
        if self.buffer_rollout != k:
            self.buffer, self.buffer_rollout = {}, k
        if local not in self.buffer:
            self.buffer[local] = self.rollout(run, k, local, count)
        rollout = self.buffer[local]
        self.buffer[local] = replace(rollout, seconds=0.0)  # the time is reported once
        return rollout.to(run.device)

    def rollout(self, run: Run, k: int, local: int, count: int) -> Rollout:
        """Sample G completions for each of `count` prompts with the current weights, score them, and
        compute the advantages and the sampling policy's log-probs."""
        t0 = time.perf_counter()
        G, model = self.group_size, run.raw_model
        index = self.order.indices(k * run.global_batch + local, count)
        prompt_ids = [self.encoded[i] for i in index for _ in range(G)]
        seed = int(np.random.SeedSequence([self.config.seed, k, local]).generate_state(1)[0])
        was_training = model.training
        model.eval()
        with torch.no_grad(), torch.autocast(run.device.type, enabled=False):
            outs = generate(model, prompt_ids, temperature=self.temperature, top_k=self.top_k,
                            max_new_tokens=self.max_new_tokens, stop_tokens=self.stop, seed=seed)
        responses = [o.tokens + (self.stop if o.finish_reason == "stop" else []) for o in outs]
        texts = [self.tokenizer.decode(o.tokens) for o in outs]
        ids, attention, response = (t.to(run.device) for t in rollout_rows(prompt_ids, responses))
        with torch.no_grad(), run.autocast():
            old, _ = response_logprobs(model, ids, response, attention)
            ref = None
            if self.beta > 0:
                if self.lora_model is not None:
                    with adapters_off(model):
                        ref, _ = response_logprobs(model, ids, response, attention)
                else:
                    ref, _ = response_logprobs(self.reference, ids, response, attention)
        model.train(was_training)

        rows = [self.rows[i] for i in index]
        prompts = [r["prompt"] for r in rows for _ in range(G)]
        total, parts = score_completions(self.reward_functions, prompts,
                                         [as_completion(p, t) for p, t in zip(prompts, texts)],
                                         self.reward_weights, **columns_of(rows, G))
        adv = group_advantages(total, G, scale=self.scale_rewards)
        first = next(iter(parts.values()))
        self.last_rollout = {"step": run.step, "prompt_index": index, "texts": texts, "rewards": total}
        seconds = time.perf_counter() - t0
        self.rollout_seconds += seconds
        return Rollout(ids.cpu(), attention.cpu(), response.cpu(), old.float().cpu(), adv.advantages,
                       adv.rewards, torch.tensor([float(v >= 1) for v in first]),
                       None if ref is None else ref.float().cpu(), seconds)

    # -- the loss --------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Rollout) -> LossOutput:
        logp, entropy = response_logprobs(model, batch.ids, batch.response_mask, batch.attention_mask,
                                          with_entropy=True)
        out = grpo_loss(logp, batch.old_logprobs, batch.advantages, batch.response_mask, batch.ref_logprobs,
                        self.beta, self.eps_low, self.eps_high, self.aggregation, self.max_new_tokens + 1)
        mask = batch.response_mask.bool()
        metrics = {"reward_mean": batch.rewards.mean(), "reward_max": batch.rewards.max(),
                   "accuracy": batch.correct.mean(), "response_length": mask.sum(1).float().mean(),
                   "clip_fraction": out.clip_fraction, "kl": out.kl,
                   "entropy": masked_mean(entropy.detach(), mask), "policy_loss": out.policy_loss,
                   "rollout_seconds": batch.seconds * self.accum}  # the loop averages over micro-batches
        return LossOutput(out.loss, int(batch.attention_mask.sum()), metrics)

    # -- evaluation and state ----------------------------------------------------------------------------
    def evaluate(self, run: Run) -> dict[str, float]:
        """Greedy answers to the held-out prompts (every process does the same work)."""
        result = evaluate_prompts(run.raw_model, self.tokenizer, self.val_rows, self.reward_functions,
                                  self.reward_weights, self.max_new_tokens, self.eval_batch)
        return {"val_loss": -result["reward"], "val_reward": result["reward"], "val_accuracy": result["accuracy"],
                "rollout_share": self.rollout_seconds / max(run.elapsed, 1e-9)}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rollout": self.buffer_rollout, "rollout_seconds": self.rollout_seconds,
                                 "buffer": {str(k): r.state() for k, r in self.buffer.items()}}
        if self.lora_model is not None:
            from gator.train.lora import lora_state

            state["adapters"] = lora_state(self.lora_model)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer_rollout = state.get("rollout", -1)
        self.rollout_seconds = state.get("rollout_seconds", 0.0)
        self.buffer = {int(k): Rollout(**v) for k, v in state.get("buffer", {}).items()}
        if self.lora_model is not None:
            from gator.train.lora import load_lora_state

            load_lora_state(self.lora_model, state.get("adapters", {}))


def named_reward(name: str, tokenizer: Any = None) -> Callable[..., list[float]]:
    """A reward function by name: exact_answer, number_format, gsm8k_answer, gsm8k_format, or rm:DIR (a
    trained reward model, scoring what the policy's tokenizer encodes)."""
    from gator.train.objectives import rewards

    builtin = {"exact_answer": rewards.exact_answer_reward, "number_format": rewards.number_format_reward,
               "gsm8k_answer": rewards.gsm8k_answer_reward, "gsm8k_format": rewards.gsm8k_format_reward}
    if name in builtin:
        return builtin[name]
    if name.startswith("rm:"):
        from gator.model.heads import RewardModel

        rm = RewardModel.from_pretrained(name[3:])
        return rewards.reward_model_reward(rm, tokenizer, eos_id=text_eos_id(tokenizer),
                                           max_length=rm.config.context_length)
    raise TrainingError(f"unknown reward {name!r}; use one of {', '.join(builtin)} or rm:DIR")
