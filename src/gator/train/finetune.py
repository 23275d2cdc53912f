"""Fine-tuning an existing model: `finetune(...)` runs the SFT objective (gator/train/objectives/sft.py)
through the one training loop, with the same progress, metrics, plot, checkpoints, exact resume,
torchrun support and time budget as `pretrain`.

    finetune(init_from="runs/base", data="chat.jsonl", out_dir="runs/sft")              # every weight
    finetune(init_from="runs/base", data="chat.jsonl", out_dir="runs/lora", lora=True,  # LoRA adapters
             lora_rank=16, lora_alpha=32, lora_targets=["q", "k", "v", "o"])

Settings come from a recipe (`recipes/sft.yaml`, or `recipes/sft-lora.yaml` when `lora=True`) with
keyword overrides on top, exactly as for `pretrain`. The run folder's best/ and checkpoint/ are model
folders (`gator sample`, `gator export hf`, `gator serve` read them); a LoRA run also writes its adapter
there in PEFT's layout (gator/train/lora.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gator.train.config import TrainConfig, make_config
from gator.train.loop import train
from gator.train.objectives.sft import SFT


def finetune(config: TrainConfig | None = None, *, recipe: str | None = None, tokenizer: Any = None,
             on_step: Callable[[int, dict], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """Fine-tune `init_from` on the JSONL file `data`; return the loop's summary dict plus "model" (the
    best weights' folder) and, for LoRA runs, "adapter" (the same folder, which holds the PEFT files).
    `tokenizer` overrides the one saved with the model; `on_step(step, record)` runs after every step."""
    if config is None:
        config = make_config(recipe or ("sft-lora" if overrides.get("lora") else "sft"), overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    summary = train(config, SFT(config, tokenizer), on_step=on_step)
    summary["model"] = f"{config.out_dir}/best"
    if config.lora:
        summary["adapter"] = summary["model"]
    return summary
