"""Evaluation: perplexity and bits per byte, multiple-choice scoring, BLEU, numeric-answer accuracy.

The names below are imported on first use (gator/lazy.py), so `gator eval --help` does not load torch."""

from gator.lazy import lazy_exports

__all__ = [
    "BleuScore", "corpus_bleu", "sentence_bleu", "tokenize_13a",
    "MCItem", "MCResult", "load_mc_jsonl", "score_multiple_choice",
    "NumericResult", "evaluate_numeric",
    "PerplexityResult", "perplexity",
]
lazy_exports(__name__, {
    **dict.fromkeys(["BleuScore", "corpus_bleu", "sentence_bleu", "tokenize_13a"], "gator.eval.bleu"),
    **dict.fromkeys(["MCItem", "MCResult", "load_mc_jsonl", "score_multiple_choice"], "gator.eval.multiple_choice"),
    **dict.fromkeys(["NumericResult", "evaluate_numeric"], "gator.eval.numeric"),
    **dict.fromkeys(["PerplexityResult", "perplexity"], "gator.eval.perplexity"),
})
