"""Training: one setup and one loop (`train`) for every objective, `pretrain` (the next-token objective on
token shards) with its settings, optimiser, checkpoints, metrics and multi-process support, plus
sampling from what it made. See docs/04-training.md and gator/train/objectives/."""

from gator.errors import TrainingError
from gator.lazy import lazy_exports
from gator.train.config import TrainConfig, make_config, parse_overrides

__all__ = ["SFT", "LanguageModeling", "LossOutput", "Objective", "TrainConfig", "TrainingError", "finetune",
           "load_model_for_sampling", "make_config", "parse_overrides", "pretrain", "sample", "train"]
# Imported on first use (gator/lazy.py): `gator pretrain --help` must not wait for torch.
lazy_exports(__name__, {
    "pretrain": "gator.train.loop", "train": "gator.train.loop",
    "LossOutput": "gator.train.objectives", "Objective": "gator.train.objectives",
    "LanguageModeling": "gator.train.objectives.lm",
    "finetune": "gator.train.finetune", "SFT": "gator.train.objectives.sft",
    "load_model_for_sampling": "gator.train.sampling", "sample": "gator.train.sampling",
})
