"""Multiple-choice scoring by log-likelihood: the model picks the ending it finds most probable.

This is how benchmarks such as HellaSwag (Zellers et al., 2019) evaluate a base model without generating
text. For a context c and each choice a = (a_1..a_m) (its tokens, after a separator), the score is

    log p(a | c) = sum_i log p(a_i | c, a_<i)

and the prediction is the argmax over choices ("acc"). A longer ending has more terms and so a lower sum;
the length-normalised score divides by the ending's length in UTF-8 bytes (separator included),
log p(a | c) / bytes(a) ("acc_norm", as lm-evaluation-harness does with characters). Context and ending
are tokenized separately and concatenated, so every choice is scored on exactly the same context tokens.

Items come from JSONL, one {"context": str, "choices": [str, ...], "label": int} per line (the HellaSwag
layout: label is the index of the right choice). The model is anything with `logits, loss = model(ids)`
(ids a LongTensor (B, T), logits (B, T, V)) and `model.config.context_length`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gator.eval.perplexity import TokenizerLike, context_length_of
from gator.jsonl import jsonl_objects


@dataclass(frozen=True)
class MCItem:
    context: str
    choices: list[str]
    label: int


def load_mc_jsonl(path: str | Path) -> list[MCItem]:
    """Read and check a multiple-choice JSONL file; a malformed line raises ValueError naming its number."""
    items = []
    for lineno, row in jsonl_objects(path):
        where = f"{path}, line {lineno}"
        missing = [k for k in ("context", "choices", "label") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(repr(k) for k in missing)} "
                             '(each line needs {"context", "choices", "label"})')
        context, choices, label = row["context"], row["choices"], row["label"]
        if not isinstance(context, str):
            raise ValueError(f"{where}: 'context' must be a string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: 'choices' must be a list of at least two strings")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise ValueError(f"{where}: 'label' must be an integer index into the {len(choices)} choices, "
                             f"got {label!r}")
        items.append(MCItem(context, choices, label))
    if not items:
        raise ValueError(f"{path}: no items")
    return items


@dataclass(frozen=True)
class ItemScore:
    index: int
    label: int
    logprobs: list[float]  # log p(choice | context), one per choice
    n_tokens: list[int]
    n_bytes: list[int]

    @property
    def logprobs_norm(self) -> list[float]:
        return [lp / max(1, n) for lp, n in zip(self.logprobs, self.n_bytes)]

    @property
    def pred(self) -> int:
        return max(range(len(self.logprobs)), key=self.logprobs.__getitem__)

    @property
    def pred_norm(self) -> int:
        norm = self.logprobs_norm
        return max(range(len(norm)), key=norm.__getitem__)

    def to_dict(self) -> dict:
        return {**asdict(self), "logprobs_norm": self.logprobs_norm, "pred": self.pred,
                "pred_norm": self.pred_norm, "correct": self.pred == self.label,
                "correct_norm": self.pred_norm == self.label}


@dataclass(frozen=True)
class MCResult:
    items: list[ItemScore]

    @property
    def accuracy(self) -> float:
        return sum(s.pred == s.label for s in self.items) / len(self.items)

    @property
    def accuracy_norm(self) -> float:
        return sum(s.pred_norm == s.label for s in self.items) / len(self.items)


@torch.no_grad()
def choice_logprobs(model: torch.nn.Module, tokenizer: TokenizerLike, context: str, choices: list[str],
                    separator: str = " ", context_length: int | None = None, bos_id: int | None = None,
                    device: str | torch.device | None = None) -> list[tuple[float, int]]:
    """(log p(separator + choice | context), number of tokens) for each choice, all choices in one batch."""
    length = context_length_of(model, context_length)
    device = device or next(model.parameters()).device
    ctx = list(tokenizer.encode_ordinary(context))
    if bos_id is not None:
        ctx = [bos_id, *ctx]
    if not ctx:
        raise ValueError("the context is empty: give it some text, or pass bos_id")
    seqs, n_cont = [], []
    for choice in choices:
        cont = list(tokenizer.encode_ordinary(separator + choice))
        if not cont:
            raise ValueError(f"choice {choice!r} encodes to no tokens")
        if len(cont) > length:
            raise ValueError(f"choice of {len(cont)} tokens is longer than the context length {length}")
        seqs.append((ctx + cont)[-(length + 1):])  # keep the end: the choice and as much context as fits
        n_cont.append(len(cont))
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)  # right padding: a causal model's earlier positions don't see it
    ids = ids.to(device)
    logits = model(ids[:, :-1])[0].float()
    logp = F.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, width-1)
    out = []
    for i, (s, m) in enumerate(zip(seqs, n_cont)):
        # the choice's tokens sit at positions len(s)-m .. len(s)-1, predicted from one position earlier
        out.append((logp[i, len(s) - m - 1:len(s) - 1].sum().item(), m))
    return out


def score_multiple_choice(model: torch.nn.Module, tokenizer: TokenizerLike, items: list[MCItem],
                          separator: str = " ", context_length: int | None = None,
                          bos_id: int | None = None, device: str | torch.device | None = None,
                          progress: bool = False) -> MCResult:
    """Score every item; accuracy and per-item log-likelihoods are in the result."""
    was_training = model.training
    model.eval()
    scores = []
    try:
        for index, item in enumerate(items):
            lps = choice_logprobs(model, tokenizer, item.context, item.choices, separator, context_length,
                                  bos_id, device)
            n_bytes = [len((separator + c).encode("utf-8")) for c in item.choices]
            scores.append(ItemScore(index, item.label, [lp for lp, _ in lps], [n for _, n in lps], n_bytes))
            if progress and (index + 1) % 100 == 0:
                done = MCResult(scores)
                print(f"{index + 1}/{len(items)}  acc {done.accuracy:.3f}  acc_norm {done.accuracy_norm:.3f}")
    finally:
        model.train(was_training)
    return MCResult(scores)
