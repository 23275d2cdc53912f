"""BLEU: how many of a hypothesis's word n-grams (n = 1..4) also occur in the reference translations.

BLEU (Papineni et al., 2002) multiplies the geometric mean of the modified n-gram precisions p_1..p_4 by a
brevity penalty that punishes hypotheses shorter than their references:

    BLEU = BP * exp( (1/N) * sum_n log p_n ),   BP = 1 if c >= r else exp(1 - r/c)

where p_n = (n-grams of the hypothesis found in a reference, each counted at most as often as it occurs in
that reference) / (n-grams of the hypothesis), c is the hypothesis length and r the closest reference
length (the shorter one on a tie). Corpus BLEU sums the counts and lengths over all sentences before
dividing, which is not the mean of sentence BLEUs. A single missing 4-gram makes sentence BLEU zero, so
smoothing (Chen and Cherry, 2014) replaces zero precisions:

    none   no smoothing
    floor  a zero count becomes `smooth_value` (default 0.1): p_n = 0.1 / total_n
    add-k  for n >= 2, add `smooth_value` (default 1) to both the matches and the total
    exp    the k-th order with no match gets p_n = 1 / (2^k * total_n) (NIST's mteval-v13a)

Scores are reported in percent (0-100), and text is tokenized like mteval-v13a, so the numbers are the ones
sacrebleu prints with its defaults (tokenize='13a', smooth='exp'; sentence BLEU with effective order).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1.0, "exp": None}
MAX_ORDER = 4

# mteval-v13a tokenization: XML entities back to characters, then spaces around ASCII symbols,
# around '.' and ',' unless they sit between digits, and after a '-' that follows a digit.
_ENTITIES = [("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")]  # applied in this order
_SYMBOLS = " !\"#$%&()*+/:;<=>?@[\\]^_`{|}~"  # every printable ASCII symbol except ' , - .
_RULES = [
    (re.compile("([" + re.escape(_SYMBOLS) + "])"), r" \1 "),
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),  # '.' or ',' after a non-digit
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),  # '.' or ',' before a non-digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # '-' after a digit
]


def tokenize_13a(line: str) -> list[str]:
    """Split a line into tokens the way mteval-v13a (and sacrebleu's default tokenizer) does."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in _ENTITIES:
            line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def _tokens(text: str, lowercase: bool, tokenize: str) -> list[str]:
    if lowercase:
        text = text.lower()
    text = text.rstrip()
    if tokenize == "13a":
        return tokenize_13a(text)
    if tokenize == "none":
        return text.split()
    raise ValueError(f"unknown tokenize {tokenize!r}; use '13a' or 'none'")


def ngrams(tokens: Sequence[str], max_order: int = MAX_ORDER) -> Counter:
    """Counts of every n-gram (as a tuple of tokens) for n = 1..max_order."""
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class BleuStats:
    """The sufficient statistics of BLEU; statistics of several sentences add up to corpus statistics."""

    hyp_len: int
    ref_len: int
    matches: tuple[int, ...]
    totals: tuple[int, ...]

    def __add__(self, other: BleuStats) -> BleuStats:
        return BleuStats(self.hyp_len + other.hyp_len, self.ref_len + other.ref_len,
                         tuple(a + b for a, b in zip(self.matches, other.matches)),
                         tuple(a + b for a, b in zip(self.totals, other.totals)))


@dataclass(frozen=True)
class BleuScore:
    score: float  # percent, 0-100
    precisions: tuple[float, ...]  # percent, one per order, after smoothing
    brevity_penalty: float
    stats: BleuStats

    def __str__(self) -> str:
        p = "/".join(f"{x:.1f}" for x in self.precisions)
        return (f"BLEU = {self.score:.2f} {p} (BP = {self.brevity_penalty:.3f} "
                f"ratio = {self.stats.hyp_len / max(1, self.stats.ref_len):.3f} "
                f"hyp_len = {self.stats.hyp_len} ref_len = {self.stats.ref_len})")


def sentence_stats(hyp: Sequence[str], refs: Sequence[Sequence[str]], max_order: int = MAX_ORDER) -> BleuStats:
    """Clipped n-gram matches of one tokenized hypothesis against its tokenized references."""
    if not refs:
        raise ValueError("each hypothesis needs at least one reference")
    ref_max: Counter = Counter()
    for ref in refs:
        ref_max |= ngrams(ref, max_order)  # | keeps the larger count: clip by the most generous reference
    ref_len = min((len(r) for r in refs), key=lambda n: (abs(n - len(hyp)), n))  # closest, shorter on ties
    matches, totals = [0] * max_order, [0] * max_order
    for gram, count in ngrams(hyp, max_order).items():
        totals[len(gram) - 1] += count
        matches[len(gram) - 1] += min(count, ref_max[gram])
    return BleuStats(len(hyp), ref_len, tuple(matches), tuple(totals))


def score_from_stats(stats: BleuStats, smooth: str = "exp", smooth_value: float | None = None,
                     effective_order: bool = False) -> BleuScore:
    """BLEU from (summed) statistics. With effective_order, orders the hypothesis is too short to have
    (no n-grams at all) are left out of the mean instead of counting as zero precision."""
    if smooth not in SMOOTH_DEFAULTS:
        raise ValueError(f"unknown smoothing {smooth!r}; use one of {', '.join(SMOOTH_DEFAULTS)}")
    k = SMOOTH_DEFAULTS[smooth] if smooth_value is None else smooth_value
    c, r = stats.hyp_len, stats.ref_len
    bp = 1.0 if c >= r else (math.exp(1 - r / c) if c > 0 else 0.0)
    order = len(stats.matches)
    precisions = [0.0] * order
    if not any(stats.matches):
        return BleuScore(0.0, tuple(precisions), bp, stats)
    used, zeros_seen = order, 0
    for n in range(order):
        m, t = float(stats.matches[n]), float(stats.totals[n])
        if smooth == "add-k" and n > 0:
            m, t = m + k, t + k
        if t == 0:  # no n-grams this long: the hypothesis is shorter than n
            used = n if effective_order else order
            break
        if m > 0:
            precisions[n] = 100.0 * m / t
        elif smooth == "exp":
            zeros_seen += 1
            precisions[n] = 100.0 / (2**zeros_seen * t)
        elif smooth == "floor":
            precisions[n] = 100.0 * k / t
    if any(p == 0.0 for p in precisions[:used]):
        return BleuScore(0.0, tuple(precisions), bp, stats)  # log 0: the geometric mean is zero
    score = bp * math.exp(sum(math.log(p) for p in precisions[:used]) / used)
    return BleuScore(score, tuple(precisions), bp, stats)


def sentence_bleu(hypothesis: str, references: Sequence[str], smooth: str = "exp",
                  smooth_value: float | None = None, lowercase: bool = False, tokenize: str = "13a",
                  effective_order: bool = True) -> BleuScore:
    """BLEU of one hypothesis against one or more references (a list of strings)."""
    if isinstance(references, str):
        references = [references]
    stats = sentence_stats(_tokens(hypothesis, lowercase, tokenize),
                           [_tokens(r, lowercase, tokenize) for r in references])
    return score_from_stats(stats, smooth, smooth_value, effective_order)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], smooth: str = "exp",
                smooth_value: float | None = None, lowercase: bool = False, tokenize: str = "13a",
                effective_order: bool = False) -> BleuScore:
    """Corpus BLEU. `references` is a list of reference streams, as in sacrebleu: references[k][i] is the
    k-th reference of hypotheses[i] (one stream for one reference per sentence)."""
    if isinstance(references, str) or (references and isinstance(references[0], str)):
        raise ValueError("references must be a list of reference streams, e.g. [refs] for one reference each")
    for k, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise ValueError(f"reference stream {k} has {len(stream)} lines but there are "
                             f"{len(hypotheses)} hypotheses")
    total = BleuStats(0, 0, (0,) * MAX_ORDER, (0,) * MAX_ORDER)
    for i, hyp in enumerate(hypotheses):
        refs = [_tokens(stream[i], lowercase, tokenize) for stream in references]
        total = total + sentence_stats(_tokens(hyp, lowercase, tokenize), refs)
    return score_from_stats(total, smooth, smooth_value, effective_order)
