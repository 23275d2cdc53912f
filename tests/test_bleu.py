"""gator.eval.bleu against sacrebleu (tokenizer, sentence and corpus BLEU, every smoothing) and a hand count."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from gator.eval.bleu import corpus_bleu, sentence_bleu, tokenize_13a

SACRE_13A = Tokenizer13a()

# Text made from pieces that exercise every rule of the 13a tokenizer: digits next to '.', ',' and '-',
# ASCII symbols, XML entities, apostrophes, newlines, non-ASCII letters and whitespace.
PIECES = ["the", "cat", "sat", "on", "mat", "a", "dog", "The", "3.5", "1,000", "42", "-", "5-6", ".", ",",
          "!", "?", "'s", "(", ")", '"', "&amp;", "&quot;", "&lt;x&gt;", "<skipped>", "e.g.", "U.S.", "-\n",
          "\n", "café", "naïve", "$", "%", "#", "@", "/", ":", ";", "...", "--", "x9.", ".7", "`", "~"]
text = st.lists(st.sampled_from(PIECES), max_size=25).map(
    lambda parts: "".join(p + sep for p, sep in zip(parts, [" ", "", "  ", "\t"] * 10))
)
# Sentences over a small vocabulary, so that n-grams of every order match sometimes but not always.
sentence = st.lists(st.sampled_from(["the", "cat", "sat", "on", "mat", "a", "dog", ".", ",", "ran"]),
                    max_size=14).map(" ".join)
SMOOTHINGS = [("none", None), ("floor", None), ("floor", 0.3), ("add-k", None), ("add-k", 0.5), ("exp", None)]


@settings(max_examples=300, deadline=None)
@given(text)
def test_tokenizer_matches_sacrebleu_13a(line):
    assert tokenize_13a(line) == SACRE_13A(line).split()


def test_tokenizer_known_cases():
    assert tokenize_13a("Hello, world! It's 3.5 (or 1,000)-ish.") == [
        "Hello", ",", "world", "!", "It's", "3.5", "(", "or", "1,000", ")", "-ish", "."]
    assert tokenize_13a("5-6 &amp; A&lt;B") == ["5", "-", "6", "&", "A", "<", "B"]


@settings(max_examples=200, deadline=None)
@given(hyp=sentence, refs=st.lists(sentence, min_size=1, max_size=3), effective=st.booleans())
def test_sentence_bleu_matches_sacrebleu(hyp, refs, effective):
    for smooth, value in SMOOTHINGS:
        ours = sentence_bleu(hyp, refs, smooth=smooth, smooth_value=value, effective_order=effective)
        theirs = sacrebleu.sentence_bleu(hyp, refs, smooth_method=smooth, smooth_value=value,
                                         use_effective_order=effective)
        assert ours.score == pytest.approx(theirs.score, abs=1e-6), (smooth, value)
        assert ours.brevity_penalty == pytest.approx(theirs.bp, abs=1e-12)
        assert (ours.stats.hyp_len, ours.stats.ref_len) == (theirs.sys_len, theirs.ref_len)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(sentence, sentence, sentence), min_size=1, max_size=8),
    two_refs=st.booleans(),
    lowercase=st.booleans(),
)
def test_corpus_bleu_matches_sacrebleu(data, two_refs, lowercase):
    hyps = [h for h, _, _ in data]
    refs = [[r for _, r, _ in data]] + ([[r for _, _, r in data]] if two_refs else [])
    for smooth, value in SMOOTHINGS:
        ours = corpus_bleu(hyps, refs, smooth=smooth, smooth_value=value, lowercase=lowercase)
        theirs = sacrebleu.corpus_bleu(hyps, refs, smooth_method=smooth, smooth_value=value,
                                       lowercase=lowercase)
        assert ours.score == pytest.approx(theirs.score, abs=1e-6), (smooth, value)
        assert list(ours.stats.matches) == [int(x) for x in theirs.counts] or smooth == "add-k"
        assert list(ours.stats.totals) == [int(x) for x in theirs.totals] or smooth == "add-k"


def test_realistic_corpus_matches_sacrebleu():
    hyps = ["The quick brown fox jumps over the lazy dog.", "It cost $3.50, not 1,000 dollars!",
            "She said: \"we'll see\" & left at 5-6 p.m."]
    refs = [["A quick brown fox jumped over the lazy dog.", "It cost $3.50 rather than 1,000 dollars!",
             "She said \"we will see\" and left at 5-6 p.m."],
            ["The fast brown fox jumps over a lazy dog .", "The price was $3.50, not 1,000 dollars.",
             "\"We'll see,\" she said, and left between 5 and 6 p.m."]]
    for smooth in ["none", "floor", "add-k", "exp"]:
        assert corpus_bleu(hyps, refs, smooth=smooth).score == pytest.approx(
            sacrebleu.corpus_bleu(hyps, refs, smooth_method=smooth).score, abs=1e-6)


def test_hand_computed_sentence():
    # hyp: the cat sat on the mat / ref: the cat is on the mat
    # matches: 1-grams 5/6, 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4 (on the mat), 4-grams 0/3
    hyp, ref = "the cat sat on the mat", "the cat is on the mat"
    assert sentence_bleu(hyp, [ref], smooth="none").score == 0.0
    exp_smoothed = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)
    assert sentence_bleu(hyp, [ref], smooth="exp").score == pytest.approx(exp_smoothed, rel=1e-12)
    floor = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(0.1 / 3)) / 4)
    assert sentence_bleu(hyp, [ref], smooth="floor").score == pytest.approx(floor, rel=1e-12)
    add1 = 100 * math.exp((math.log(5 / 6) + math.log(4 / 6) + math.log(2 / 5) + math.log(1 / 4)) / 4)
    assert sentence_bleu(hyp, [ref], smooth="add-k").score == pytest.approx(add1, rel=1e-12)
    assert sentence_bleu(ref, [ref]).score == pytest.approx(100.0)
    # a short hypothesis pays the brevity penalty exp(1 - r/c) = exp(1 - 6/3)
    short = sentence_bleu("the cat is", [ref], smooth="none")
    assert short.brevity_penalty == pytest.approx(math.exp(-1.0))
    assert short.score == pytest.approx(100 * math.exp(-1.0))


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown smoothing"):
        sentence_bleu("a", ["a"], smooth="laplace")
    with pytest.raises(ValueError, match="reference streams"):
        corpus_bleu(["a b"], ["a b"])
    with pytest.raises(ValueError, match="stream 0 has 1 lines but there are 2"):
        corpus_bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="unknown tokenize"):
        sentence_bleu("a", ["a"], tokenize="intl")
