"""Text that is not plain: special-token text under tiktoken's allowed_special / disallowed_special rules,
encode_ordinary, and lone surrogates, each compared with tiktoken on GPT-2's vocabulary, on both encode paths
(the tiktoken fast path and the pure-Python path, which text with a character of `engine_gap` forces)."""

import json
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from gator.data import TokenData, prepare
from gator.tokenizer import Tokenizer
from gator.tokenizer.formats import engine_gap

GPT2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2"
SPECIALS = {"<|endoftext|>": 50256, "<|im_start|>": 50257}  # the second one is new: the next free id
SLOW_CHAR = "\u0558"  # a letter newer than tiktoken's Unicode tables: text with it takes the Python path


@pytest.fixture(scope="module")
def reference(gpt2_tiktoken) -> tiktoken.Encoding:
    return gpt2_tiktoken(SPECIALS)


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    tok = Tokenizer.from_gpt2_files(GPT2 / "vocab.json", GPT2 / "merges.txt", list(SPECIALS))
    assert tok.special_ids == SPECIALS
    return tok


def outcome(encode, text, **kwargs):
    """The ids, or the type of the error (both libraries raise ValueError for a disallowed token)."""
    try:
        return encode(text, **kwargs)
    except ValueError:
        return ValueError


fragments = st.one_of(
    st.sampled_from(["<|endoftext|>", "<|im_start|>", " <|endoftext|>", "<|im_start", "endoftext|>", "<|",
                     "\ud800", "\udfff", "\ud83d\ude00", "\ud83d", "\ude00"]),
    # SLOW_CHAR between a space and a newline: the two regex engines split around it alike, so the ids must agree
    # (next to "'s" they differ by design: tiktoken's older tables do not know the letter; see engine_gap)
    st.sampled_from(["Hello", " world", " ", "\n\n", "中文", "😀", "12345", "'s", "!?", f" {SLOW_CHAR}\n"]),
    st.text(st.characters(max_codepoint=0x2FF), max_size=5),
)
texts = st.lists(fragments, max_size=16).map("".join)
RULES = [dict(), dict(allowed_special="all"), dict(allowed_special={"<|im_start|>"}),
         dict(allowed_special={"<|endoftext|>"}, disallowed_special=()), dict(disallowed_special=()),
         dict(disallowed_special={"<|im_start|>"})]


@settings(max_examples=150, deadline=None)
@given(text=texts)
def test_special_token_rules_match_tiktoken_on_both_paths(gpt2, reference, text):
    for rules in RULES:
        expected = outcome(reference.encode, text, **rules)
        assert outcome(gpt2.encode, text, **rules) == expected, rules
        assert outcome(gpt2.encode_python, text, **rules) == expected, rules
    assert gpt2.encode_ordinary(text) == reference.encode_ordinary(text)


def test_defaults_are_tiktokens_and_the_error_says_what_to_do(gpt2, reference):
    text = "a<|endoftext|>b"
    with pytest.raises(ValueError, match="disallowed special token"):
        reference.encode(text)
    with pytest.raises(ValueError, match=r"contains the special token '<\|endoftext\|>'.*encode_ordinary"):
        gpt2.encode(text)
    assert gpt2.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all") == \
        [64, 50256, 65]
    assert gpt2.encode_ordinary(text) == reference.encode_ordinary(text)
    assert 50256 not in gpt2.encode_ordinary(text) and len(gpt2.encode_ordinary(text)) > 3
    with pytest.raises(ValueError, match=r"names \['<\|nope\|>'\]"):
        gpt2.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="not one string"):
        gpt2.encode("x", allowed_special="<|endoftext|>")


def test_lone_surrogates_match_tiktoken_whichever_path_runs(gpt2, reference):
    # The review's case: the Python path (forced by U+0558) used to raise UnicodeEncodeError.
    assert gpt2.encode("x\ud800 \u0558") == reference.encode("x\ud800 \u0558")
    assert len(reference.encode("x\ud800 \u0558")) == 5
    for text in ["x\ud800 ", "x\ud800 \u0558", "\ud83d\ude00", f"\ud83d\ude00{SLOW_CHAR}", "\udc00\ud800",
                 f"a\udfffb{SLOW_CHAR}", "<|endoftext|>\ud800"]:
        assert not gpt2._fast_agrees(text) if SLOW_CHAR in text else gpt2._fast_agrees(text)
        expected = reference.encode(text, allowed_special="all")
        assert gpt2.encode(text, allowed_special="all") == expected
        assert gpt2.encode_python(text, allowed_special="all") == expected
        assert gpt2.encode_ordinary(text) == reference.encode_ordinary(text)
    assert SLOW_CHAR in engine_gap(gpt2.pattern)


def test_a_special_token_must_be_valid_unicode():
    with pytest.raises(ValueError, match="lone surrogate"):
        Tokenizer({i: bytes([i]) for i in range(256)}, [], special_tokens=["<\ud800>"])


def test_prepare_encodes_documents_as_ordinary_text_and_inserts_the_separator_id(gpt2, reference, tmp_path):
    docs = ["first <|endoftext|> story", "second <|im_start|>user story"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare(tmp_path / "docs.jsonl", gpt2, tmp_path / "out", val_fraction=0.0, workers=0, progress=False)
    train = TokenData(tmp_path / "out", "train")
    ids = np.asarray(train.read(0, len(train))).tolist()
    assert ids == [i for d in docs for i in reference.encode_ordinary(d) + [50256]]
