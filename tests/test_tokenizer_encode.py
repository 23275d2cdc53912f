"""Encoding and decoding: the tiktoken fast path gives the ids of the pure-Python path, special tokens match
longest first, encode_iterable is lazy and equals encode, decode replaces bad UTF-8, unknown ids fail."""

from functools import partial
from itertools import islice
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gator.tokenizer import Tokenizer, bpe, train_bpe
from gator.tokenizer.formats import engine_gap

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIALS = ["<|endoftext|>", "<|endoftext|><|endoftext|>", "<pad>"]


@pytest.fixture(scope="module", params=["gpt2", "gpt4", "o200k"])
def trained(request) -> Tokenizer:
    text = (DATA / "text" / "alice_in_wonderland.txt").read_text(encoding="utf-8")
    return train_bpe(text[:60_000] + " 中文 字符 😀 ünïcödé 1234567 IT'S we'll", 800,
                     special_tokens=SPECIALS, pattern=request.param, progress=False)


def text_strategy(pattern: str):
    """Arbitrary Unicode (minus surrogates and the characters whose class tiktoken's older Unicode tables do
    not know), mixed with emoji, CJK, whitespace runs, digits, contractions and special tokens."""
    gap = engine_gap(pattern)
    fragment = st.one_of(
        st.text(st.characters(exclude_categories=("Cs",)).filter(lambda ch: ch not in gap), max_size=8),
        st.sampled_from(["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "中文", "字符集", "日本語", "한국어"]),
        st.text(st.sampled_from(" \t\n\r\u00a0\u3000"), min_size=1, max_size=6),
        st.from_regex(r"[0-9]{1,9}", fullmatch=True),
        st.sampled_from(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "I'M", " don't"]),
        st.sampled_from(SPECIALS + ["<|endoftext", "<pad", "|>"]),
        st.sampled_from(["Hello", " world", "CamelCase", "naïve", "façade", "x\n\ny", ".\n", "!!\n//"]),
    )
    return st.lists(fragment, max_size=25).map("".join)


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_fast_path_gives_the_ids_of_the_python_path(trained, data):
    text = data.draw(text_strategy(trained.pattern))
    assert trained.fast_encoder() is not None and trained._fast_agrees(text)  # the fast path is taken
    assert trained.encode(text, allowed_special="all") == trained.encode_python(text, allowed_special="all")
    assert trained.decode(trained.encode(text, allowed_special="all")) == text


def test_fast_path_on_the_corpora(trained):
    for name in ["the_verdict.txt", "alice_in_wonderland.txt"]:
        text = (DATA / "text" / name).read_text(encoding="utf-8")
        ids = trained.encode(text)
        assert ids == trained.encode_python(text)
        assert trained.decode(ids) == text


def test_characters_the_engines_disagree_on_take_the_python_path(trained):
    gap = sorted(engine_gap(trained.pattern))
    assert gap, "tiktoken's and regex's Unicode tables agree: the routing below is then never needed"
    text = f"a{gap[0]}b {gap[-1]} 12"
    assert not trained._fast_agrees(text)
    assert trained.encode(text) == trained.encode_python(text)
    assert trained.decode(trained.encode(text)) == text


def test_special_tokens_match_longest_first(trained):
    eot, double, pad = (trained.special_ids[s] for s in SPECIALS)
    for encode in (partial(trained.encode, allowed_special="all"),
                   partial(trained.encode_python, allowed_special="all")):
        assert encode("<|endoftext|><|endoftext|>") == [double]
        assert encode("<|endoftext|><|endoftext|><|endoftext|>") == [double, eot]
        assert encode("a<pad><|endoftext|>b")[1:3] == [pad, eot]
        assert encode("<|endoftext") == trained.encode_python("<|endoftext")  # not a special token
        assert eot not in encode("<|endoftext")


def test_encode_iterable_is_lazy_and_equals_encode(trained):
    text = (DATA / "text" / "alice_in_wonderland.txt").read_text(encoding="utf-8")
    text = text.replace("CHAPTER", "<|endoftext|>CHAPTER")
    lines = text.splitlines(keepends=True)
    consumed = []

    def reading():
        for line in lines:
            consumed.append(len(line))
            yield line

    stream = trained.encode_iterable(reading(), allowed_special="all")
    first = list(islice(stream, 10))
    assert sum(consumed) < 80_000 < len(text)  # it started yielding after reading a bounded part
    assert first + list(stream) == trained.encode(text, allowed_special="all")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encode_iterable_equals_encode_on_any_split(trained, data):
    text = data.draw(text_strategy(trained.pattern)) * 3
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    with patch.object(bpe, "_STREAM_CHARS", 16):  # encode as soon as 16 characters are buffered
        assert list(trained.encode_iterable(iter(parts), allowed_special="all")) == trained.encode(
            text, allowed_special="all")
        assert list(trained.encode_iterable(iter(parts), disallowed_special=())) == trained.encode_ordinary(text)
        some = {"<pad>"}
        assert list(trained.encode_iterable(iter(parts), allowed_special=some, disallowed_special=())) == \
            trained.encode(text, allowed_special=some, disallowed_special=())


def test_encode_batch_equals_encode(trained):
    texts = ["Hello world<pad>", "", "中文 😀", "It's 2024!<|endoftext|>" * 3]
    assert trained.encode_batch(texts, allowed_special="all") == [trained.encode(t, allowed_special="all")
                                                                   for t in texts]
    assert trained.encode_batch(texts, disallowed_special=()) == [trained.encode_ordinary(t) for t in texts]


def test_decode_replaces_bad_utf8_and_rejects_unknown_ids(trained):
    euro = trained.encode("€")  # three bytes; in this small vocabulary more than one token
    assert trained.decode_bytes(euro) == "€".encode()
    first_byte = trained.encode_python("€")[0]
    assert trained.vocab[first_byte] == b"\xe2"
    assert trained.decode([first_byte]) == "\ufffd"
    assert trained.decode([*trained.encode("a"), first_byte, *trained.encode("b")]) == "a\ufffdb"
    with pytest.raises(ValueError, match=f"unknown token id {len(trained)}"):
        trained.decode([1, 2, len(trained)])
    with pytest.raises(ValueError, match="unknown token id -1"):
        trained.decode(iter([5, -1]))
    assert trained.decode(torch.tensor(trained.encode("a tensor"))) == "a tensor"


def test_tokenizer_checks_its_inputs():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="lacks 1 of the 256 single bytes"):
        Tokenizer({i: bytes([i]) for i in range(255)}, [])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer(vocab, [(b"a", b"b")])
    with pytest.raises(ValueError, match="same bytes"):
        Tokenizer({**vocab, 256: b"a"}, [])
    with pytest.raises(ValueError, match="more than once"):
        Tokenizer(vocab, [], special_tokens=["<s>", "<s>"])
    tok = Tokenizer({**vocab, 256: b"ab"}, [(b"a", b"b")], ["<s>"])
    assert tok.special_ids == {"<s>": 257}
    assert tok.encode("xab<s>", allowed_special="all") == tok.encode_python("xab<s>", allowed_special="all") == \
        [ord("x"), 256, 257]


def test_a_vocabulary_tiktoken_cannot_rank_uses_the_python_path():
    # Merges whose new tokens do not get increasing ids cannot be tiktoken ranks.
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"bc", 257: b"ab"}
    tok = Tokenizer(vocab, [(b"a", b"b"), (b"b", b"c")])
    assert tok.fast_encoder() is None and "tiktoken" in tok.fast_path_problem
    assert tok.encode("abc") == [257, ord("c")]
