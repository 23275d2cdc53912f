"""Export a reward model (gator.model.heads.RewardModel) as a transformers sequence classifier.

transformers' `LlamaForSequenceClassification` / `MistralForSequenceClassification` /
`GPT2ForSequenceClassification` are the same trunk as the causal LM (`model.*` / `transformer.*`)
with `score = Linear(hidden, num_labels, bias=False)` in place of the LM head. With num_labels=1 each
sequence gets one number, read at its last non-padding token, which transformers finds as the rightmost
token that is not `pad_token_id`. So the exported config must name a pad id that never occurs inside real
text (a dedicated padding token): a pad id that is also, say, the end-of-text token a response ends with
would make transformers read the token before it.

The trunk's tensors go through interop/hf.py's name map (`state_to_hf` without the LM head) and its config
through `config_to_hf`; only the architecture, the labels and the pad id change. Load the export with
`AutoModelForSequenceClassification.from_pretrained(out_dir)`; `logits[:, 0]` are the rewards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gator.interop.hf import _own_storage, config_to_hf, hf_family, state_to_hf
from gator.model.heads import RewardModel
from gator.model.transformer import _atomic_write

SEQUENCE_CLASSIFIERS = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification",
                        "mistral": "MistralForSequenceClassification"}


def reward_config_to_hf(model: RewardModel, pad_token_id: int, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The transformers config.json of the sequence classifier: the trunk's config, one label, the pad id."""
    family = hf_family(model.config)
    if family not in SEQUENCE_CLASSIFIERS:
        raise ValueError(f"a {family} reward model has no transformers sequence-classification class to export to; "
                         f"supported: {', '.join(SEQUENCE_CLASSIFIERS)}")
    if not 0 <= pad_token_id < model.config.vocab_size:
        raise ValueError(f"pad_token_id {pad_token_id} is outside the vocabulary (0..{model.config.vocab_size - 1})")
    cfg = config_to_hf(model.config, dtype)
    cfg.update(architectures=[SEQUENCE_CLASSIFIERS[family]], id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
               pad_token_id=pad_token_id, tie_word_embeddings=False)
    return cfg


def reward_state_to_hf(model: RewardModel) -> dict[str, torch.Tensor]:
    """transformers state dict: the trunk under transformers' names, plus `score.weight` (1, d_model)."""
    state = state_to_hf(model.backbone, lm_head=False)
    state["score.weight"] = model.score.weight.detach().cpu().contiguous()
    return state


def export_reward_hf(model: RewardModel, out_dir: str | Path, pad_token_id: int, tokenizer: Any = None,
                     dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) loadable by
    `transformers.AutoModelForSequenceClassification`. An existing export is replaced only with overwrite=True."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a model; choose another directory or pass overwrite=True")
    state = reward_state_to_hf(model)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    state = _own_storage(state)
    cfg = reward_config_to_hf(model, pad_token_id, next(iter(state.values())).dtype)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _atomic_write(out / "config.json", lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))
    if tokenizer is not None:
        tokenizer.save_hf(out)
    return out
