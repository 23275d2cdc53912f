"""Next-token prediction on token shards: the objective of pretraining and continued pretraining.

    loss = mean over positions t of -log p(x[t+1] | x[..t])      (cross-entropy; `Transformer.forward`)

A sample is one non-overlapping window of `seq_len + 1` tokens of the train split (`gator prepare`
made the shards). Global sample k reads window `WindowOrder(n_windows, seed).indices(k, 1)`: epoch e is
permutation e of all windows (`gator.data.shards`), so the batch of every step is a pure function of
(seed, sample index), which makes resume exact and lets N processes read what one process reads.

Validation: the mean loss over the same `eval_tokens // seq_len` val windows at every evaluation, its
perplexity exp(loss) and bits per byte (loss / ln 2 x val tokens / val bytes), which compares runs
with different tokenizers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gator.data.shards import TokenData, WindowOrder, load_manifest, tokenizer_info
from gator.errors import TrainingError
from gator.tokenizer import Tokenizer
from gator.train import distributed as D
from gator.train.checkpoint import checkpoint_dir, resolve_model_dir
from gator.train.config import TrainConfig
from gator.train.metrics import bits_per_byte
from gator.train.objectives import LossOutput, Objective

if TYPE_CHECKING:
    from gator.train.setup import Run


class LanguageModeling(Objective):
    name = "lm"

    def __init__(self, config: TrainConfig):
        if not config.data:
            raise TrainingError("no training data: set data=DIR (a folder made by `gator prepare`)")
        self.config = config
        manifest = load_manifest(config.data)
        self.train_data = TokenData(config.data, "train", manifest)
        self.val_data = TokenData(config.data, "val", manifest)
        self.vocab_size = manifest["tokenizer"]["vocab_size"]
        self.tokenizer = _load_matching_tokenizer(config, manifest)
        self.order: WindowOrder | None = None  # built by `start`, once seq_len is known
        self.val_windows: list[int] = []

    def start(self, run: Run) -> None:
        seq_len, cfg = run.seq_len, self.config
        n_windows = self.train_data.num_windows(seq_len)
        if n_windows < run.global_batch:
            raise TrainingError(
                f"the training split has {self.train_data.n_tokens:,} tokens, fewer than one batch "
                f"({run.global_batch} sequences x {seq_len} tokens = {run.global_batch * seq_len:,}); use a bigger "
                "corpus or lower batch_tokens, micro_batch or seq_len")
        n_val = self.val_data.num_windows(seq_len)
        if n_val == 0:
            raise TrainingError(f"the validation split has {self.val_data.n_tokens} tokens, fewer than one sequence "
                                f"of {seq_len + 1}; prepare with a larger --val-fraction or lower seq_len")
        self.order = WindowOrder(n_windows, cfg.seed)
        # the same windows at every evaluation; every rank gets as many (FSDP needs equal work)
        per_rank = max(1, min(n_val, max(1, cfg.eval_tokens // seq_len)) // run.env.world)
        self.val_windows = [(run.env.rank * per_rank + i) % n_val for i in range(per_rank)]
        run.say(f"data: {self.train_data.n_tokens:,} train / {self.val_data.n_tokens:,} val tokens in {cfg.data}")

    def train_batch(self, run: Run, first: int, count: int) -> dict[str, torch.Tensor]:
        x, y = self.train_data.windows(self.order.indices(first, count), run.seq_len)
        return {"ids": x.to(run.device, non_blocking=True), "targets": y.to(run.device, non_blocking=True)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        _, loss = model(batch["ids"], batch["targets"], return_logits=False)
        return LossOutput(loss, batch["ids"].numel())

    def evaluate(self, run: Run) -> dict[str, float]:
        eval_batch = max(self.config.micro_batch, 16)  # no activations are kept for backward: bigger batches fit
        total = torch.zeros(2, device=run.device)
        for i in range(0, len(self.val_windows), eval_batch):
            x, y = self.val_data.windows(self.val_windows[i:i + eval_batch], run.seq_len)
            _, loss = run.model(x.to(run.device), y.to(run.device), return_logits=False)
            total += torch.stack([loss.float() * len(x), torch.tensor(float(len(x)), device=run.device)])
        D.all_sum(total, run.env)
        val = (total[0] / total[1]).item()
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50)),
                "val_bpb": bits_per_byte(val, self.val_data.tokens_per_byte())}


def _load_matching_tokenizer(cfg: TrainConfig, manifest: dict) -> Any:
    """The tokenizer to store with checkpoints; it must be the one the shards were made with (and the one
    an `init_from` model was trained with, when its folder has one, and the one of the checkpoint that
    `resume` continues: shards made by another tokenizer of the same size would silently change the data)."""
    if cfg.resume:
        resume_dir = checkpoint_dir(cfg.out_dir)
        saved_tok = _tokenizer_in(resume_dir) if resume_dir is not None else None
        if saved_tok is not None:
            _check_same_tokenizer(saved_tok, resume_dir, cfg, manifest, resuming=True)
    if cfg.init_from:
        model_dir = resolve_model_dir(cfg.init_from)
        model_tok = _tokenizer_in(model_dir)
        if model_tok is not None:
            _check_same_tokenizer(model_tok, model_dir, cfg, manifest)
    path = cfg.tokenizer or manifest["tokenizer"].get("path")
    if not path:
        return None  # shards written without a saved tokenizer (e.g. raw bytes); checkpoints hold no tokenizer
    if not Path(path).is_dir():
        raise TrainingError(f"tokenizer folder {path} does not exist; pass tokenizer=DIR")
    tok = Tokenizer.load(path)
    _check_same_tokenizer(tok, path, cfg, manifest)
    return tok


def _tokenizer_in(directory: Path) -> Any:
    """The tokenizer saved in a model folder, or None when it has none (nothing to compare)."""
    try:
        return Tokenizer.load(directory)
    except FileNotFoundError:
        return None


def _check_same_tokenizer(tok: Any, where: Any, cfg: TrainConfig, manifest: dict, resuming: bool = False) -> None:
    info, want = tokenizer_info(tok), manifest["tokenizer"]
    if resuming and info["fingerprint"] != want["fingerprint"]:
        raise TrainingError(
            f"--resume: the checkpoint in {where} was trained with another tokenizer (fingerprint "
            f"{info['fingerprint']}) than the one the shards in {cfg.data} were made with "
            f"({want['path'] + ', ' if want.get('path') else ''}fingerprint {want['fingerprint']}); "
            "resume with the shards of the first run, or start a new run with another --out")
    if info["fingerprint"] != want["fingerprint"] or info["vocab_size"] != want["vocab_size"]:
        raise TrainingError(
            f"the tokenizer in {where} (vocab {info['vocab_size']}, fingerprint {info['fingerprint']}) is not the "
            f"one the shards in {cfg.data} were made with (vocab {want['vocab_size']}, fingerprint "
            f"{want['fingerprint']}); re-run `gator prepare` with this tokenizer, or pass the original one")
