"""Training: one loop (`pretrain`) with its settings, optimiser, checkpoints, metrics and multi-process
support, plus sampling from what it made. See docs/04-training.md."""

from gator.train.config import TrainConfig, make_config, parse_overrides
from gator.train.loop import TrainingError, pretrain
from gator.train.sampling import load_model_for_sampling, sample

__all__ = ["TrainConfig", "TrainingError", "load_model_for_sampling", "make_config", "parse_overrides",
           "pretrain", "sample"]
