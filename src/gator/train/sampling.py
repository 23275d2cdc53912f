"""Sampling from a trained model: load a model folder (or a run folder) with its tokenizer, and generate
text that stops at the end-of-text token, through `gator.generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gator.data.sources import END_OF_TEXT
from gator.generate import generate
from gator.model import Transformer
from gator.train.checkpoint import resolve_model_dir


def load_model_for_sampling(path: str | Path, device: str | None = "cpu") -> tuple[Transformer, Any, Path]:
    """(model in eval mode, tokenizer, the folder used) from a model folder or a run folder (its best/, else
    its checkpoint/). The tokenizer is whatever the folder holds: Gator's own, a Hugging Face tokenizer.json
    or GPT-2's vocab.json + merges.txt (an imported model). `device` None: cuda when visible, else cpu."""
    from gator.tokenizer import Tokenizer
    from gator.train.distributed import pick_device

    directory = resolve_model_dir(path)
    model = Transformer.from_pretrained(directory, device=pick_device(device or "auto")).eval()
    try:
        tok = Tokenizer.load(directory)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} holds a model but no tokenizer (tokenizer.gator.json, tokenizer.json, "
                                "or vocab.json + merges.txt); copy the tokenizer files it was trained with into "
                                f"{directory}") from None
    return model, tok, directory


@torch.no_grad()
def sample(model: Transformer, tokenizer: Any, prompt: str, *, num_samples: int = 1, max_new_tokens: int = 200,
           temperature: float = 0.8, top_k: int | None = None, top_p: float | None = 0.95,
           seed: int | None = 0) -> list[str]:
    """`num_samples` continuations of `prompt` (prompt included), each ending at end-of-text or the limit."""
    eot = tokenizer.special_ids.get(END_OF_TEXT) if hasattr(tokenizer, "special_ids") else None
    ids = tokenizer.encode_ordinary(prompt) if prompt else [eot]
    room = model.config.context_length - len(ids)
    out = generate(model, [ids] * num_samples, tokenizer=tokenizer, max_new_tokens=max(1, min(max_new_tokens, room)),
                   temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                   stop_tokens=[eot] if eot is not None else ())
    return [prompt + c.text for c in out]
