"""Training objectives: the one piece of training that changes between pretraining, fine-tuning, reward
modelling, DPO and GRPO.

`gator.train.train(config, objective)` sets a run up once (`gator/train/setup.py`) and runs one loop
(`gator/train/loop.py`) for every objective. The loop owns everything that does not depend on what is
learned: processes and devices, mixed precision, the optimizer (over the parameters with
`requires_grad`, so a LoRA run trains only its adapters), gradient accumulation and clipping, the
learning-rate schedule, the time budget, logging, the evaluation cadence, checkpoints (best/ keeps the
lowest `val_loss`), exact resume and signals. An objective owns the data and the loss. A subclass of
`Objective` implements:

    vocab_size: int             the vocabulary its data uses. A fresh model is built with it; a model
                                loaded with `init_from=DIR` must have at least as many rows.
    tokenizer                   saved with every checkpoint (None when the data has no tokenizer).
    name: str                   a short label for logs and the progress bar ("lm", "sft", "dpo", ...).

    prepare_model(model, env) -> nn.Module
        Once, on the initial model (fresh or `init_from`, on the CPU, before a resumed checkpoint is
        loaded into it): make it what trains. Grow the vocabulary for chat tokens, add LoRA adapters and
        set `requires_grad=False` on the rest, add a scalar head, or compute what must come from the
        initial weights (DPO's reference log-probs). The result keeps `Transformer`'s interface
        (`config`, `save_pretrained(dir, tokenizer, state_dict=...)`, `num_params`,
        `num_matmul_params`). Default: the model unchanged.
    start(run)
        Once, after setup and resume, before the first step: check the data against the batch
        geometry (`run.seq_len`, `run.global_batch`, raising TrainingError with what to change), build
        the sample order, say what the data is (`run.say`). It may use the random number generator:
        a resumed run restores the generator's state after `start`. Default: nothing.
    train_batch(run, first, count) -> batch
        Global samples first, first + 1, ..., first + count - 1, as tensors on `run.device`. Which samples
        those are must be a pure function of (config.seed, sample index) and, for rollouts, of the
        model's weights at `run.step` (GRPO generates with `run.raw_model`): that is what makes a
        resumed run read what the uninterrupted run read, and N processes what one process reads.
        A sample is the unit of `micro_batch` (a window, a packed row, a preference pair, a prompt
        with its group of completions).
    loss(model, batch) -> LossOutput(loss, tokens, metrics)
        The micro-batch's mean loss (what backward sees; the loop divides by the accumulation steps),
        the token positions the model ran over (tokens/s and MFU), and extra scalars to log, e.g.
        {"accuracy": ..., "margin": ...}: the same keys on every call; the loop averages them over the
        micro-batches and processes of a step. `model` is the model as the step calls it (DDP/FSDP
        wrapped): call it, not `run.raw_model`, so gradients are synchronised. It runs under autocast.
    evaluate(run) -> {"val_loss": float, ...}
        Validation metrics, equal on every process (all-reduce with `gator.train.distributed.all_sum`),
        with at least "val_loss". Runs under torch.no_grad(), autocast and model.eval(); calls
        `run.model`.
    state_dict() -> dict / load_state_dict(state)
        Whatever besides the model and the optimizer the objective needs to resume exactly (e.g. a
        rollout buffer): tensors, numbers and strings only (checkpoints load with weights_only=True).
        Default: the LoRA adapters when `lora_model` is set, else nothing.

`lm.LanguageModeling` (next-token loss on token shards, i.e. pretraining and continued pretraining) is
the reference implementation. `losses.py` holds the formulas the post-training objectives share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from gator.errors import TrainingError

if TYPE_CHECKING:
    from gator.train.distributed import Env
    from gator.train.setup import Run


class LossOutput(NamedTuple):
    """What `Objective.loss` returns for one micro-batch."""

    loss: torch.Tensor  # scalar, the mean over the micro-batch: what backward sees
    tokens: int  # token positions the model processed (for tokens/s and MFU)
    metrics: dict[str, torch.Tensor | float] | None = None  # extra scalars to log (same keys every call)


class Objective:
    """The base class of training objectives; see the module docstring for the contract."""

    name: str = "objective"
    vocab_size: int
    tokenizer: Any = None

    def prepare_model(self, model: nn.Module, env: Env) -> nn.Module:
        return model

    def start(self, run: Run) -> None:
        pass

    def train_batch(self, run: Run, first: int, count: int) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> LossOutput:
        raise NotImplementedError

    def evaluate(self, run: Run) -> dict[str, float]:
        raise NotImplementedError

    # An objective that trains LoRA adapters (`gator.train.lora.prepare_lora` in prepare_model) sets
    # `lora_model`; the default resume state is then the adapters, saved bit for bit.
    lora_model: nn.Module | None = None

    def state_dict(self) -> dict[str, Any]:
        if self.lora_model is None:
            return {}
        from gator.train.lora import lora_state

        return lora_state(self.lora_model)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.lora_model is not None:
            from gator.train.lora import load_lora_state

            load_lora_state(self.lora_model, state)
        elif any(k.startswith("lora.") for k in state):
            raise TrainingError("the checkpoint is from a LoRA run; resume it with lora=true (--lora) and the same "
                                "LoRA settings, or use a new --out folder")
