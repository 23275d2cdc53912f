"""The models a server serves: one base model directory and, optionally, LoRA adapters on it.

Each served name gets its own `Engine` (its own KV-cache slots and batching loop). An adapter is served
from a second Transformer that *shares* the base model's weight tensors and adds the adapter's small A
and B matrices unmerged (h = W x + s B A x, model/lora.py): an adapter costs its own few parameters and
its KV cache, not a copy of the base weights, and the base stays exactly as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gator.generate.engine import Engine


@dataclass
class ServedModel:
    name: str
    engine: Engine
    tokenizer: Any
    parent: str | None = None  # the base model's name, for a LoRA adapter
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def context_length(self) -> int:
        return self.engine.max_len

    def eos_ids(self) -> list[int]:
        """Token ids that end a plain completion: the tokenizer's end-of-text token, if it has one."""
        from gator.data.sources import END_OF_TEXT

        special = getattr(self.tokenizer, "special_ids", {}) or {}
        return [special[END_OF_TEXT]] if END_OF_TEXT in special else []

    def card(self) -> dict[str, Any]:
        """The /v1/models entry."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "gator",
                "root": self.parent or self.name, "parent": self.parent,
                "max_model_len": self.context_length}


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A second Transformer whose parameters are the same tensors as `model`'s (no weight is copied)."""
    from gator.model import Transformer

    with torch.device("meta"):
        twin = Transformer(model.config)
    twin.load_checked_state_dict(dict(model.state_dict(keep_vars=True)), source="the base model")
    twin.init_buffers()
    return twin.to(next(model.parameters()).device).eval()


def load_served_models(model_dir: str | Path, loras: dict[str, str | Path] | None = None, *,
                       name: str | None = None, n_slots: int = 16, max_waiting: int = 64, device: str = "cpu",
                       dtype: torch.dtype | None = None) -> list[ServedModel]:
    """Load the base model (and its tokenizer) from `model_dir` and each adapter in `loras` {name: dir}.
    A folder without a tokenizer is served too: it then takes prompts as token ids only."""
    from gator.model import Transformer
    from gator.tokenizer import Tokenizer
    from gator.train.checkpoint import resolve_model_dir

    where = resolve_model_dir(model_dir)
    base = Transformer.from_pretrained(where, device=device).eval()
    try:
        tokenizer = Tokenizer.load(where)
    except FileNotFoundError:
        tokenizer = None
    if dtype is not None:
        base = base.to(dtype)
    base_name = name or Path(where).resolve().name
    return serve_models(base, tokenizer, base_name, loras, n_slots=n_slots, max_waiting=max_waiting)


def serve_models(base: torch.nn.Module, tokenizer: Any, name: str, loras: dict[str, str | Path] | None = None, *,
                 n_slots: int = 16, max_waiting: int = 64) -> list[ServedModel]:
    """Engines for an in-memory base model and adapters (directories in PEFT's layout) on it."""
    from gator.interop.peft import load_adapter

    base = base.eval()
    served = [ServedModel(name, Engine(base, tokenizer, n_slots=n_slots, max_waiting=max_waiting), tokenizer)]
    for lora_name, adapter_dir in (loras or {}).items():
        if lora_name == name or any(s.name == lora_name for s in served):
            raise ValueError(f"the name {lora_name!r} is used twice; give each --lora a distinct name")
        twin = load_adapter(shared_copy(base), adapter_dir).eval()
        served.append(ServedModel(lora_name, Engine(twin, tokenizer, n_slots=n_slots, max_waiting=max_waiting),
                                  tokenizer, parent=name))
    return served
