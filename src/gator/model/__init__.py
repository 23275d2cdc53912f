"""The transformer and its parts. `Transformer(ModelConfig)` is the one model class."""

from gator.model.cache import KVCache
from gator.model.transformer import Block, Transformer

__all__ = ["Block", "KVCache", "Transformer"]
