"""The transformer and its parts. `Transformer(ModelConfig)` is the one model class.

The names below are imported on first use (gator/lazy.py), so `gator info --help` does not load torch."""

from gator.lazy import lazy_exports

__all__ = ["Block", "KVCache", "Transformer"]
lazy_exports(__name__, {"KVCache": "gator.model.cache", "Block": "gator.model.transformer",
                        "Transformer": "gator.model.transformer"})
