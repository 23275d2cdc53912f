"""Data for training: read documents (text, JSONL, Hugging Face datasets), turn them into token shards,
and read windows of tokens back. `synthetic` writes a small story corpus without any download."""

from gator.data.sources import END_OF_TEXT, hub_reachable, iter_documents
from gator.lazy import lazy_exports

__all__ = ["END_OF_TEXT", "TokenData", "WindowOrder", "hub_reachable", "iter_documents", "load_manifest",
           "prepare", "tokenizer_info", "write_tokens"]
# The shard code needs numpy and torch: imported on first use (gator/lazy.py).
lazy_exports(__name__, dict.fromkeys(["TokenData", "WindowOrder", "load_manifest", "prepare", "tokenizer_info",
                                      "write_tokens"], "gator.data.shards"))
