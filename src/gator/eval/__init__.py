"""Evaluation: perplexity and bits per byte, multiple-choice scoring, BLEU, numeric-answer accuracy."""

from gator.eval.bleu import BleuScore, corpus_bleu, sentence_bleu, tokenize_13a
from gator.eval.multiple_choice import MCItem, MCResult, load_mc_jsonl, score_multiple_choice
from gator.eval.numeric import NumericResult, evaluate_numeric
from gator.eval.perplexity import PerplexityResult, perplexity

__all__ = [
    "BleuScore", "corpus_bleu", "sentence_bleu", "tokenize_13a",
    "MCItem", "MCResult", "load_mc_jsonl", "score_multiple_choice",
    "NumericResult", "evaluate_numeric",
    "PerplexityResult", "perplexity",
]
