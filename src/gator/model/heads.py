"""A scalar head on a transformer: the reward model of RLHF, and running a transformer on padded batches.

A reward model reads a prompt and a response and returns one number, how good the response is. It is the
language model with its vocabulary head replaced by a linear map to one value (Ziegler et al., 2019;
Ouyang et al., 2022), read at the last real token, the one that has seen the whole text:

    h = transformer(ids)                   (B, T, d_model), before any LM head
    r = score(h)[b, last_real_token(b)]    score: Linear(d_model, 1, bias=False)

It learns from pairs where people (or a verifier) preferred one response to another, with the
Bradley-Terry model of paired comparisons (Bradley & Terry, 1952): P(chosen > rejected) =
sigmoid(r_chosen - r_rejected), so the loss is -log sigmoid(r_chosen - r_rejected).

Padding. Gator's forward pass has no key mask: plain causal attention. A row padded on the right is
exact as it is (a real token never sees a later pad). A row padded on the left is first shifted so that
its real tokens start at column 0 (`left_align`), run, and shifted back (`restore_alignment`): every real
token then sees exactly what it would see alone, at the positions it would have alone. Any padding where
each row's real tokens are one contiguous run works; anything else is refused.

The model directory is `config.json` (the ModelConfig plus `"head": "reward"`) and `model.safetensors`
(the transformer's tensors without `lm_head`, plus `score.weight`). interop/hf_reward.py exports it as
transformers' `LlamaForSequenceClassification` / `GPT2ForSequenceClassification`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gator.config import ModelConfig
from gator.model.transformer import CONFIG_NAME, WEIGHTS_NAME, Transformer, _atomic_write, load_safetensors

HEAD_KEY = "head"  # config.json marks a reward model with {"head": "reward"}


# ---------------------------------------------------------------------------------------------------
# padded batches
# ---------------------------------------------------------------------------------------------------

def check_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The mask (B, T) as bool, after checking that each row holds one non-empty contiguous run of 1s."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, time), got shape {tuple(attention_mask.shape)}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    mask = attention_mask.bool()
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        rows = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(f"rows {rows} of the batch have no real token (attention_mask all 0); drop them")
    starts = mask.int().argmax(1)  # first real token
    t = torch.arange(mask.shape[1], device=mask.device)
    expected = (t[None] >= starts[:, None]) & (t[None] < (starts + lengths)[:, None])
    if not bool((expected == mask).all()):
        rows = torch.nonzero((expected != mask).any(1)).flatten().tolist()
        raise ValueError(f"rows {rows} have padding between real tokens; only left or right padding "
                         "(one contiguous run of real tokens per row) is supported")
    return mask


def left_align(x: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each row of x (B, T, ...) left by its number of leading pads: real tokens start at column 0.

    Returns (aligned x, shift (B,)). The pads that were in front wrap around to the end of the row.
    """
    mask = check_attention_mask(attention_mask)
    shift = mask.int().argmax(1)  # (B,) leading pads
    return _roll_rows(x, shift), shift


def restore_alignment(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The inverse of `left_align`: x (B, T, ...) back at the original columns."""
    return _roll_rows(x, -shift)


def _roll_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """out[b, t] = x[b, (t + shift[b]) mod T] (a gather, so gradients flow back through it)."""
    B, T = x.shape[:2]
    index = (torch.arange(T, device=x.device)[None] + shift[:, None].to(x.device)) % T  # (B, T)
    index = index.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, index)


def padded_forward(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """model(ids)[0] for a batch padded on the left or the right: (B, T, ...) at the original columns.

    Each real token's output equals what it would be with its row run alone; outputs at padding columns
    are meaningless (finite) and must be masked by the caller. Pad ids are replaced by 0 before the
    forward, so any id (even -100) may mark padding.
    """
    if attention_mask is None:
        return model(ids)[0]
    if attention_mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from ids shape "
                         f"{tuple(ids.shape)}")
    mask = check_attention_mask(attention_mask)
    aligned, shift = left_align(ids.masked_fill(~mask, 0), attention_mask)
    out = model(aligned)[0]
    return restore_alignment(out, shift)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) column of the last real token of each row (left or right padding)."""
    mask = check_attention_mask(attention_mask)
    T = mask.shape[1]
    return T - 1 - mask.flip(1).int().argmax(1)


# ---------------------------------------------------------------------------------------------------
# the reward model
# ---------------------------------------------------------------------------------------------------

class RewardModel(nn.Module):
    """A Transformer trunk with a scalar score head read at the last real token: ids -> reward (B,)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = Transformer(config)
        self.backbone.lm_head = nn.Identity()  # the trunk returns hidden states (B, T, d_model)
        self.score = nn.Linear(config.d_model, 1, bias=False)
        nn.init.normal_(self.score.weight, mean=0.0, std=config.init_std)

    @classmethod
    def from_lm(cls, lm: Transformer) -> RewardModel:
        """A reward model whose trunk is a copy of a language model's (the usual start: the SFT model);
        the score head starts fresh. The language model itself is not changed."""
        rm = cls(lm.config)
        state = {k: v for k, v in copy.deepcopy(lm.state_dict()).items() if not k.startswith("lm_head.")}
        missing, unexpected = rm.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"language model does not match its config: missing {missing}, unexpected {unexpected}")
        return rm.to(next(lm.parameters()).device)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards (B,) for token ids (B, T); attention_mask (B, T) marks real tokens (1) and padding (0),
        on either side. Without a mask every token is real and the reward is read at the last column."""
        h = padded_forward(self.backbone, ids, attention_mask)  # (B, T, d_model)
        scores = self.score(h).squeeze(-1)  # (B, T)
        if attention_mask is None:
            return scores[:, -1]
        last = last_token_index(attention_mask)
        return scores.gather(1, last[:, None]).squeeze(1)

    # -- what the training loop asks of a model (gator/train/setup.py) -------------------------------
    def num_params(self, exclude_embeddings: bool = False) -> int:
        return self.backbone.num_params(exclude_embeddings) + self.score.weight.numel()

    def num_matmul_params(self) -> int:
        return self.backbone.num_matmul_params() + self.score.weight.numel()

    def load_checked_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """load_state_dict with errors that name the tensor (as Transformer.load_checked_state_dict)."""
        expected = self.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{source} does not match the reward model: missing {missing[:8]}, unexpected "
                             f"{unexpected[:8]}")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the config expects "
                                 f"{tuple(expected[name].shape)}")
        self.load_state_dict(state)

    # -- files ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer=None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write config.json and model.safetensors (atomically), and the tokenizer when given. `state_dict`
        replaces the module's own tensors (as in Transformer.save_pretrained)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or self.state_dict()).items()}
        _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        cfg = {**self.config.to_dict(), HEAD_KEY: "reward"}
        _atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))
        if tokenizer is not None:
            tokenizer.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> RewardModel:
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{directory} is not a model directory (no {CONFIG_NAME})")
        cfg = json.loads((directory / CONFIG_NAME).read_text())
        if cfg.pop(HEAD_KEY, None) != "reward":
            raise ValueError(f"{directory} holds a language model, not a reward model (its config.json has no "
                             f'"{HEAD_KEY}": "reward"); make one with RewardModel.from_lm')
        model = cls(ModelConfig.from_dict(cfg))
        model.load_checked_state_dict(load_safetensors(directory / WEIGHTS_NAME), source=str(directory / WEIGHTS_NAME))
        return model.to(device)


# ---------------------------------------------------------------------------------------------------
# the Bradley-Terry loss
# ---------------------------------------------------------------------------------------------------

def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """mean over pairs of -log sigmoid(r_chosen - r_rejected)   (Bradley & Terry, 1952; Ouyang et al., 2022).

    The negative log-likelihood that the chosen response wins when P(chosen > rejected) =
    sigmoid(r_chosen - r_rejected). logsigmoid keeps it finite for large margins.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"chosen rewards {tuple(chosen_rewards.shape)} and rejected rewards "
                         f"{tuple(rejected_rewards.shape)} must have the same shape (one per pair)")
    return -F.logsigmoid(chosen_rewards.float() - rejected_rewards.float()).mean()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs where the chosen response gets the strictly higher reward (ties count as wrong)."""
    if chosen_rewards.numel() == 0:
        raise ValueError("no pairs to score")
    return int((chosen_rewards > rejected_rewards).sum()) / chosen_rewards.numel()
