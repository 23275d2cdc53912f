"""BPE training: incremental pair counts against a naive recount-every-merge reference, tie-breaking,
special tokens, vocabulary layout, every kind of source, parallel counting, safe chunk cuts, bad input."""

from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gator.tokenizer import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN, train_bpe
from gator.tokenizer.corpus import count_pretokens
from gator.tokenizer.patterns import cut_finder, split_on_special

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXT = DATA / "text"


def naive_merges(texts: list[str], vocab_size: int, pattern: str = GPT2_PATTERN, specials=()) -> list:
    """The textbook trainer: recount every pair before every merge. Independent of gator's code."""
    words: Counter = Counter()
    special = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    for text in texts:
        for piece in regex.split(special, text) if special else [text]:
            words.update(tuple(w.encode()) for w in regex.findall(pattern, piece))
    vocab = [bytes([i]) for i in range(256)]
    merges = []
    while len(vocab) + len(specials) < vocab_size:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], vocab[p[0]], vocab[p[1]]))
        new = len(vocab)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        merges.append((vocab[best[0]], vocab[best[1]]))
        merged: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


@pytest.mark.parametrize("name,vocab_size,pattern", [("the_verdict.txt", 700, "gpt2"),
                                                     ("the_verdict.txt", 500, "gpt4"),
                                                     ("alice_in_wonderland.txt", 420, "o200k")])
def test_incremental_training_equals_naive_recount(name, vocab_size, pattern):
    text = (TEXT / name).read_text(encoding="utf-8")
    regex_of = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "o200k": O200K_PATTERN}[pattern]
    tok = train_bpe(TEXT / name, vocab_size, pattern=pattern, progress=False)
    assert tok.merges == naive_merges([text], vocab_size, regex_of)
    assert len(tok) == vocab_size


corpus_text = st.lists(st.sampled_from(list("aaabbbccd  \n'sé1") + ["<|s|>"]), max_size=120).map("".join)


@pytest.mark.filterwarnings("ignore:the corpus has only")
@settings(max_examples=60, deadline=None)
@given(texts=st.lists(corpus_text, min_size=1, max_size=4), extra=st.integers(0, 40))
def test_incremental_equals_naive_on_generated_corpora(texts, extra):
    specials = ["<|s|>"]
    if not "".join(regex.split(r"<\|s\|>", "".join(texts))):
        return  # nothing outside the special tokens: an empty corpus (tested below)
    tok = train_bpe(texts, 257 + extra, special_tokens=specials, progress=False)
    assert tok.merges == naive_merges(texts, 257 + extra, specials=specials)


def test_ties_go_to_the_lexicographically_greatest_pair():
    # Pre-tokens "ab", " cd" x3, " ab" x2: (a,b), (' ',c) and (c,d) all occur 3 times; the greatest first
    # element is b"c", so (c, d) wins.
    assert train_bpe("ab cd ab cd ab cd", 257, progress=False).merges == [(b"c", b"d")]
    # (x,a), (' ',x) and (x,c) once each: b"x" beats b" ", then the second element decides: b"c" > b"a".
    assert train_bpe("xa xc", 257, progress=False).merges == [(b"x", b"c")]


@given(st.lists(st.binary(max_size=4), min_size=1, max_size=20))
def test_heap_key_orders_byte_strings_greatest_first(tokens):
    from gator.tokenizer.bpe import _descending

    assert sorted(tokens, key=_descending) == sorted(tokens, reverse=True)


def test_vocabulary_layout_and_special_tokens_are_never_merged():
    text = "low lower<|endoftext|>lowest<|endoftext|><|pad|>newer wider " * 20
    specials = ["<|endoftext|>", "<|pad|>"]
    tok = train_bpe(text, 270, special_tokens=specials, progress=False)
    assert len(tok) == 270 and len(tok.merges) == 12
    assert all(tok.vocab[i] == bytes([i]) for i in range(256))
    assert all(tok.vocab[256 + k] == a + b for k, (a, b) in enumerate(tok.merges))
    assert tok.special_ids == {"<|endoftext|>": 268, "<|pad|>": 269}
    assert all(b"<|" not in a + b for a, b in tok.merges)  # special tokens are not counted
    # No merge crosses a special token: same merges as training on the pieces between them.
    pieces = [p for p, special in split_on_special(text, regex.compile(r"<\|endoftext\|>|<\|pad\|>")) if not special]
    assert tok.merges == train_bpe(pieces, 268, progress=False).merges
    assert tok.merges == naive_merges([text], 270, specials=specials)
    # This corpus supports only 17 merges: asking for more gives a smaller vocabulary and a warning.
    with pytest.warns(UserWarning, match="only 17 merges"):
        assert len(train_bpe(text, 400, special_tokens=specials, progress=False)) == 256 + 17 + 2


def test_all_kinds_of_source_give_the_same_merges(tmp_path):
    text = (TEXT / "the_verdict.txt").read_text(encoding="utf-8")
    half = text.index("\n", len(text) // 2) + 1
    (tmp_path / "a.txt").write_text(text[:half], encoding="utf-8")
    (tmp_path / "b.txt").write_text(text[half:], encoding="utf-8")
    reference = train_bpe([text[:half], text[half:]], 400, progress=False).merges
    assert train_bpe([tmp_path / "a.txt", tmp_path / "b.txt"], 400, progress=False).merges == reference
    assert train_bpe([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], 400, progress=False).merges == reference
    assert train_bpe(iter([text[:half], text[half:]]), 400, progress=False).merges == reference
    assert train_bpe(text, 400, progress=False).merges == naive_merges([text], 400)


def test_parallel_counting_in_small_chunks_equals_serial():
    text = (TEXT / "alice_in_wonderland.txt").read_text(encoding="utf-8")
    for pattern, specials in [(GPT2_PATTERN, []), (GPT4_PATTERN, ["<|endoftext|>"]), (O200K_PATTERN, [])]:
        docs = text.replace("CHAPTER", "<|endoftext|>CHAPTER") if specials else text
        serial = count_pretokens(docs, pattern, specials, workers=1)
        parallel = count_pretokens(docs, pattern, specials, workers=2, chunk_chars=8192)
        assert parallel == serial
        whole = Counter(w for p, s in split_on_special(docs, regex.compile(r"<\|endoftext\|>")) if not s
                        for w in regex.findall(pattern, p))
        assert serial == whole


def _cut_everywhere(text: str, pattern: str, specials: list[str]) -> list[str]:
    finder = cut_finder(pattern, specials)
    cuts = [0] + [m.start() for m in finder.finditer(text) if m.start() > 0] + [len(text)] if finder else [0, len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


def _pretokens(texts, pattern, specials):
    special = regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)))
    out = []
    for text in texts:
        for piece, is_special in split_on_special(text, special if specials else None):
            out += [piece] if is_special else regex.findall(pattern, piece)
    return out


fragments = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=6),
    st.sampled_from(["\n", "\r\n", " ", "  ", "\t", "\u00a0", "\u3000", ".\n", "!\n/", "'s", "'LL", "<|eot|>",
                     "<|eot|><|eot|>", "a", "Word", "x\n\ny", "12345", "\u0301", "\U0001f389", "\u4e2d\u6587"]),
)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(fragments, max_size=30), pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN]),
       specials=st.sampled_from([[], ["<|eot|>"], ["<|eot|>", "<|eot|><|eot|>"]]))
def test_cutting_at_safe_points_never_changes_the_pretokens(parts, pattern, specials):
    text = "".join(parts)
    pieces = _cut_everywhere(text, pattern, specials)
    assert "".join(pieces) == text
    assert _pretokens(pieces, pattern, specials) == _pretokens([text], pattern, specials)


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size 257 is too small.*256 byte tokens \+ 2 special"):
        train_bpe("some text", 257, special_tokens=["<a>", "<b>"], progress=False)
    with pytest.raises(ValueError, match="corpus is empty"):
        train_bpe([""], 300, progress=False)
    with pytest.raises(ValueError, match="corpus is empty"):
        train_bpe(["<|endoftext|><|endoftext|>"], 300, special_tokens=["<|endoftext|>"], progress=False)
    with pytest.raises(ValueError, match="empty"):
        train_bpe("some text", 300, special_tokens=[""], progress=False)
    with pytest.raises(ValueError, match="more than once"):
        train_bpe("some text", 300, special_tokens=["<s>", "<s>"], progress=False)
    with pytest.raises(ValueError, match=r"a list of strings, e.g. \['<s>'\]"):
        train_bpe("some text", 300, special_tokens="<s>", progress=False)
    with pytest.raises(ValueError, match="not a valid regex"):
        train_bpe("some text", 300, pattern="([a-z", progress=False)
    with pytest.raises(FileNotFoundError, match="no such file"):
        train_bpe("missing_corpus.txt", 300, progress=False)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8.*line 2, column 4 \(byte offset 14\)"):
        train_bpe(bad, 300, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="corpus is empty"):
        train_bpe(empty, 300, progress=False)
