"""Supervised fine-tuning (SFT): next-token loss on the tokens a model should learn to write.

    loss = sum over trained positions t of -log p(x[t+1] | x[..t])  /  number of trained positions

The data is one JSONL file (`config.data`), one sample per line, in the shapes gator/data/chat.py reads
(conversations `{"messages": [...]}`, `{"prompt", "completion"}`, Alpaca's `{"instruction", "input",
"output"}`): they are rendered with the tokenizer's chat template and only the assistant's tokens (and its
end-of-turn token) are trained, the rest has label -100. A line `{"text": "..."}` is plain text for
continued training on a user's own writing: every token is trained, and a long text is cut into pieces of
`seq_len + 1` tokens. A malformed line stops the run with its line number (or, with skip_bad_lines, is
counted and left out).

Chat template: when the data has conversations and the tokenizer has none, `add_chat_template` adds the
role markers as special tokens and `prepare_model` grows the model's embedding and head to them (new rows
start at the mean of the old ones). With `lora=true`, `prepare_model` adds LoRA adapters instead of training
every weight (gator/train/lora.py).

Samples and order: a fixed share (`val_fraction`, chosen by the seed) of the lines is held out for the
validation loss. A training sample is one conversation or text piece, truncated to `seq_len + 1` tokens
(one with no trained token left is dropped and counted). Global sample k of epoch e = k // n is
`permutation(seed, e)[k % n]`, a pure function of (seed, k): a resumed run and N processes read what the
uninterrupted single process reads. With `packing=true` a sample of `micro_batch` is instead one row of
`seq_len` tokens packed greedily, in that epoch's order, with whole samples; the model keeps them apart
(block-diagonal causal attention, positions restarting per sample: `Transformer.forward(..., positions,
segment_ids)`), so packing changes the speed, not what each sample computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gator.data.chat import IGNORE, SHAPES, to_messages, tokenize_conversation
from gator.data.shards import WindowOrder
from gator.errors import TrainingError
from gator.jsonl import jsonl_objects
from gator.tokenizer import Tokenizer
from gator.tokenizer.chat import add_chat_template
from gator.train.checkpoint import resolve_model_dir
from gator.train.config import TrainConfig
from gator.train.objectives import LossOutput, Objective

if TYPE_CHECKING:
    from gator.train.distributed import Env
    from gator.train.setup import Run

Sample = tuple[list[int], list[int]]  # (input ids, labels) of one whole sample, labels -100 where untrained


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------

@dataclass
class SFTRecords:
    """The lines of an SFT file: each a conversation (list of messages) or a plain text (str)."""

    records: list[list[dict[str, str]] | str]
    skipped: list[str]

    @property
    def has_chat(self) -> bool:
        return any(not isinstance(r, str) for r in self.records)


def read_sft_jsonl(path: str | Path, skip_bad_lines: bool = False) -> SFTRecords:
    """Every sample of a JSONL file; a malformed line raises ValueError naming the file, the line and the
    problem, unless `skip_bad_lines` (then it is listed in `skipped`)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}; give a JSONL file with one sample per line ({SHAPES}, "
                                'or {"text": ...})')
    records: list[list[dict[str, str]] | str] = []
    skipped: list[str] = []
    for lineno, record in jsonl_objects(path, skipped if skip_bad_lines else None):
        try:
            records.append(_text(record) if _is_text(record) else to_messages(record))
        except ValueError as err:
            message = f"{path}, line {lineno}: {err}"
            if not skip_bad_lines:
                raise ValueError(f"{message} (or leave such lines out with --skip-bad-lines)") from None
            skipped.append(message)
    if not records:
        raise ValueError(f"{path} has no usable samples" + (f" ({len(skipped)} bad lines skipped)" if skipped
                                                             else " (the file is empty)"))
    return SFTRecords(records, skipped)


def _is_text(record: dict) -> bool:
    return "text" in record and not {"messages", "prompt", "instruction"} & set(record)


def _text(record: dict) -> str:
    text = record["text"]
    if not isinstance(text, str) or not text:
        raise ValueError(f"field 'text' must be a non-empty string, got {type(text).__name__}"
                         f"{' (empty)' if text == '' else ''}")
    return text


def tokenize_text(tokenizer: Any, text: str, max_length: int) -> list[Sample]:
    """A plain text (plus <|endoftext|> when the tokenizer has it) as pieces of at most max_length tokens,
    every token trained. Special-token text in it stays ordinary text."""
    ids = tokenizer.encode_ordinary(text)
    eot = tokenizer.special_ids.get("<|endoftext|>")
    if eot is not None:
        ids.append(eot)
    pieces = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    return [(p, list(p)) for p in pieces if len(p) >= 2]


# ---------------------------------------------------------------------------------------------------
# order and rows
# ---------------------------------------------------------------------------------------------------

class PackedOrder:
    """Rows of whole samples: epoch e packs permutation(seed, e) of the samples greedily, in that order,
    into rows of at most `capacity` tokens. Global row k is a pure function of (seed, k)."""

    def __init__(self, lengths: list[int], capacity: int, seed: int):
        self.lengths, self.capacity, self.seed = lengths, capacity, seed
        self.epochs: list[list[list[int]]] = []  # rows of each epoch built so far
        self.starts = [0]  # global index of each epoch's first row (and one past the last epoch built)

    def _epoch(self, e: int) -> list[list[int]]:
        while len(self.epochs) <= e:
            perm = np.random.default_rng([self.seed, len(self.epochs)]).permutation(len(self.lengths))
            rows, row, fill = [], [], 0
            for i in perm.tolist():
                if row and fill + self.lengths[i] > self.capacity:
                    rows.append(row)
                    row, fill = [], 0
                row.append(i)
                fill += self.lengths[i]
            rows.append(row)
            self.epochs.append(rows)
            self.starts.append(self.starts[-1] + len(rows))
        return self.epochs[e]

    def row(self, k: int) -> list[int]:
        e = 0
        while k >= self.starts[e] + len(self._epoch(e)):  # epochs are built as k reaches them
            e += 1
        return self.epochs[e][k - self.starts[e]]

    def rows(self, start: int, count: int) -> list[list[int]]:
        return [self.row(k) for k in range(start, start + count)]


def make_rows(samples: list[Sample], rows: list[list[int]], packed: bool) -> dict[str, torch.Tensor]:
    """A batch of rows (each a list of sample indices): inputs, next-token targets (-100 where untrained
    and on padding), and for packed rows positions restarting per sample and segment ids (-1 on padding).
    Rows are padded to the longest row of the batch."""
    width = max(sum(len(samples[i][0]) - 1 for i in row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row):
            x, y = samples[i]
            n = len(x) - 1  # a sample of n + 1 tokens gives n (input, next token) pairs
            ids[r, at:at + n] = torch.tensor(x[:-1])
            targets[r, at:at + n] = torch.tensor(y[1:])
            positions[r, at:at + n] = torch.arange(n)
            segments[r, at:at + n] = s
            at += n
        positions[r, at:] = torch.arange(width - at)
    batch = {"ids": ids, "targets": targets}
    if packed:
        batch.update(positions=positions, segment_ids=segments)
    return batch


# ---------------------------------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------------------------------

class SFT(Objective):
    """Supervised fine-tuning on a JSONL file (see the module docstring). `tokenizer` defaults to
    `config.tokenizer`, else the one saved with the `init_from` model."""

    name = "sft"

    def __init__(self, config: TrainConfig, tokenizer: Any = None):
        if not config.data:
            raise TrainingError("no training data: set data=FILE (a JSONL file of conversations, prompt/completion "
                                'pairs, Alpaca records or {"text": ...} lines)')
        self.config = config
        self.data = read_sft_jsonl(config.data, config.skip_bad_lines)
        base = tokenizer if tokenizer is not None else _load_tokenizer(config)
        self.added_tokens: list[str] = []
        if self.data.has_chat and getattr(base, "chat_template", None) is None:
            self.tokenizer = add_chat_template(base)
            self.added_tokens = [t for t in self.tokenizer.special_tokens if t not in base.special_tokens]
        else:
            self.tokenizer = base
        # a loaded model needs the base vocabulary (prepare_model grows it); a fresh one is built at full size
        self.vocab_size = base.vocab_size if config.init_from else self.tokenizer.vocab_size
        self.lora_model: nn.Module | None = None
        # the held-out lines: a fixed share, chosen by the seed
        n = len(self.data.records)
        n_val = max(1, round(config.val_fraction * n))
        if n - n_val < 1:
            raise TrainingError(f"{config.data} has {n} usable sample(s): too few to hold {n_val} out for "
                                "validation and still train; add samples or lower val_fraction")
        perm = np.random.default_rng([config.seed, 2**31 - 1]).permutation(n).tolist()
        self.val_lines, self.train_lines = sorted(perm[:n_val]), sorted(perm[n_val:])
        self.train: list[Sample] = []
        self.val: list[Sample] = []
        self.order: WindowOrder | PackedOrder | None = None

    # -- the model -------------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, env: Env) -> nn.Module:
        cfg = self.config
        grow = self.tokenizer.vocab_size > model.config.vocab_size
        if grow and cfg.lora:
            raise TrainingError(
                "the model's tokenizer has no chat template, and adding one adds role tokens whose embeddings "
                "must be learned, which a LoRA run (adapters only) cannot do; fine-tune fully once (without "
                'lora), or train LoRA on plain {"text": ...} data, or start from a model that has a chat template')
        if grow:
            model.resize_vocab(self.tokenizer.vocab_size)
        if cfg.lora:
            from gator.train.lora import prepare_lora

            base_dir = resolve_model_dir(cfg.init_from) if cfg.init_from else None
            model = self.lora_model = prepare_lora(model, cfg, env, base_dir)
        return model

    # -- data ------------------------------------------------------------------------------------------
    def start(self, run: Run) -> None:
        cfg, max_length = self.config, run.seq_len + 1  # seq_len inputs and their next tokens
        self.train, dropped_train = self._tokenize(self.train_lines, max_length)
        self.val, dropped_val = self._tokenize(self.val_lines, max_length)
        if not self.train or not self.val:
            raise TrainingError(f"no {'training' if not self.train else 'validation'} sample has a trained token "
                                f"within {max_length} tokens; raise seq_len (the model allows "
                                f"{run.raw_model.config.context_length}) or shorten the prompts")
        if cfg.packing:
            self.order = PackedOrder([len(x) - 1 for x, _ in self.train], run.seq_len, cfg.seed)
            per_epoch = len(self.order._epoch(0))
        else:
            self.order = WindowOrder(len(self.train), cfg.seed)
            per_epoch = len(self.train)
        kinds = "conversations" if self.data.has_chat else "texts"
        trained = sum(sum(t != IGNORE for t in y[1:]) for _, y in self.train)
        run.say(f"data: {cfg.data}: {len(self.train_lines):,} train / {len(self.val_lines):,} validation {kinds} -> "
                f"{len(self.train):,} / {len(self.val):,} samples, {trained:,} trained tokens; one epoch = "
                f"{per_epoch:,} {'packed rows' if cfg.packing else 'rows'} = {per_epoch / run.global_batch:.1f} steps")
        if dropped_train or dropped_val:
            run.say(f"dropped {dropped_train + dropped_val} sample(s) with no trained token within {max_length} "
                    "tokens (raise seq_len to keep them)")
        if self.data.skipped:
            run.say(f"skipped {len(self.data.skipped)} malformed line(s), e.g. {self.data.skipped[0]}")
        if self.added_tokens:
            run.say(f"chat template added to the tokenizer: {', '.join(self.added_tokens)} (vocab "
                    f"{self.tokenizer.vocab_size - len(self.added_tokens)} -> {self.tokenizer.vocab_size})")
        if self.lora_model is not None:
            run.say(self.lora_model.summary())

    def _tokenize(self, lines: list[int], max_length: int) -> tuple[list[Sample], int]:
        samples, dropped = [], 0
        for i in lines:
            record = self.data.records[i]
            if isinstance(record, str):
                samples.extend(tokenize_text(self.tokenizer, record, max_length))
                continue
            sample = tokenize_conversation(self.tokenizer, record, max_length)
            if sample is None or all(t == IGNORE for t in sample[1][1:]):  # nothing left to predict
                dropped += 1
            else:
                samples.append(sample)
        return samples, dropped

    def train_batch(self, run: Run, first: int, count: int) -> dict[str, torch.Tensor]:
        if self.config.packing:
            rows = self.order.rows(first, count)
        else:
            rows = [[i] for i in self.order.indices(first, count)]
        return {k: v.to(run.device, non_blocking=True) for k, v in make_rows(self.train, rows, self.config.packing)
                .items()}

    # -- loss and validation ---------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        extra = {k: batch[k] for k in ("positions", "segment_ids") if k in batch}
        _, loss = model(batch["ids"], batch["targets"], return_logits=False, **extra)
        return LossOutput(loss, batch["ids"].numel())

    def evaluate(self, run: Run) -> dict[str, float]:
        """Mean loss over the trained tokens of the held-out samples (up to eval_tokens of them, the same
        ones every time). Every process computes all of it, so no reduction is needed."""
        rows, budget = [], self.config.eval_tokens
        for i, (x, _) in enumerate(self.val):
            if rows and budget <= 0:
                break
            rows.append([i])
            budget -= len(x) - 1
        total, count = torch.zeros((), device=run.device, dtype=torch.float64), 0
        step = max(self.config.micro_batch, 16)
        for j in range(0, len(rows), step):
            batch = make_rows(self.val, rows[j:j + step], packed=False)
            logits, _ = run.model(batch["ids"].to(run.device))
            targets = batch["targets"].to(run.device)
            total += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                     reduction="sum").double()
            count += int((targets != IGNORE).sum())
        val = (total / count).item()
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50))}


def _load_tokenizer(cfg: TrainConfig) -> Any:
    if cfg.tokenizer:
        where = Path(cfg.tokenizer)
    elif cfg.init_from:
        where = resolve_model_dir(cfg.init_from)
    else:
        raise TrainingError("fine-tuning needs a tokenizer: start from a model folder that has one (init_from / "
                            "--model) or pass tokenizer=DIR")
    try:
        return Tokenizer.load(where)
    except FileNotFoundError:
        raise TrainingError(f"{where} holds no tokenizer (tokenizer.gator.json, tokenizer.json or vocab.json + "
                            "merges.txt); pass tokenizer=DIR") from None
