"""Interoperability: GPT-2's files against tiktoken, save_hf against Hugging Face tokenizers and transformers,
gator's own format round trip, and clear errors for corrupt files."""

import json
from pathlib import Path

import pytest
import tiktoken
import tokenizers
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from gator.tokenizer import GPT2_PATTERN, Tokenizer, train_bpe
from gator.tokenizer.formats import engine_gap

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2 = DATA / "gpt2"
CORPORA = sorted((DATA / "text").glob("*.txt"))


@pytest.fixture(scope="module")
def reference(gpt2_tiktoken) -> tiktoken.Encoding:
    """tiktoken built straight from GPT-2's vocab.json (see conftest.py), as ../shared/data/README.md describes."""
    return gpt2_tiktoken({"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.from_gpt2_files(GPT2 / "vocab.json", GPT2 / "merges.txt", ["<|endoftext|>"])


def test_gpt2_files_load_exactly(gpt2):
    assert len(gpt2) == 50257 and len(gpt2.merges) == 50000
    assert gpt2.special_ids == {"<|endoftext|>": 50256}
    assert gpt2.vocab[gpt2.encode(" the")[0]] == b" the"


@pytest.mark.parametrize("path", CORPORA, ids=lambda p: p.name)
def test_gpt2_matches_tiktoken_on_the_corpora(gpt2, reference, path):
    text = path.read_text(encoding="utf-8")
    expected = reference.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special="all") == expected
    assert gpt2.encode_python(text, allowed_special="all") == expected
    assert gpt2.decode(expected) == text


GAP = engine_gap(GPT2_PATTERN)  # characters newer than tiktoken's Unicode tables: see formats.engine_gap
fragments = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)).filter(lambda ch: ch not in GAP), max_size=8),
    st.sampled_from(["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "中文", "漢字かな交じり", "Ελληνικά", "русский"]),
    st.text(st.sampled_from(" \t\n\r\u00a0\u2003\u3000"), min_size=1, max_size=8),
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
    st.sampled_from(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'RE", " can't", "y'all"]),
    st.sampled_from(["<|endoftext|>", "<|endoftext", "endoftext|>", " <|endoftext|> "]),
    st.sampled_from([" the", "Hello", " world", "\n\n", "  ", "...", "?!", "\r\n"]),
)
texts = st.lists(fragments, max_size=30).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=texts)
def test_gpt2_matches_tiktoken_on_generated_strings(gpt2, reference, text):
    expected = reference.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special="all") == expected
    assert gpt2.encode_python(text, allowed_special="all") == expected
    assert gpt2.decode(expected) == text


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=40) | texts)
def test_decode_inverts_encode(gpt2, text):
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text
    assert gpt2.decode_bytes(gpt2.encode_ordinary(text)) == text.encode("utf-8")


def test_to_tiktoken_is_the_same_encoding(gpt2, reference):
    enc = gpt2.to_tiktoken()
    text = (DATA / "text" / "the_verdict.txt").read_text(encoding="utf-8") + "<|endoftext|>"
    assert enc.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    assert enc.n_vocab == reference.n_vocab


def test_load_hf_reads_a_tokenizer_json_written_by_tokenizers(gpt2, tmp_path):
    from tokenizers import decoders, models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.BPE.from_file(str(GPT2 / "vocab.json"), str(GPT2 / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.vocab == gpt2.vocab and loaded.merges == gpt2.merges and loaded.special_ids == gpt2.special_ids
    text = (DATA / "text" / "the_verdict.txt").read_text(encoding="utf-8") + "<|endoftext|>"
    assert loaded.encode(text, allowed_special="all") == hf.encode(text).ids


@pytest.fixture(scope="module", params=["gpt2", "gpt4", "o200k"])
def trained(request) -> Tokenizer:
    text = (DATA / "text" / "alice_in_wonderland.txt").read_text(encoding="utf-8")
    return train_bpe([text, "héllo wörld 中文字符 😀😀 123456789 IT'S"], 1200, pattern=request.param,
                     special_tokens=["<|endoftext|>", "<|endoftext|><|endoftext|>", "<pad>"], progress=False)


def hf_texts(pattern):
    gap = engine_gap(pattern)
    return st.lists(st.one_of(
        fragments.filter(lambda s: not set(s) & gap),
        st.sampled_from(["<pad>", "<|endoftext|><|endoftext|>", "<|endoftext|><|endoftext|><|endoftext|>"]),
    ), max_size=25).map("".join)


def test_save_hf_loads_in_tokenizers_and_transformers(trained, tmp_path):
    trained.save_hf(tmp_path)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = (DATA / "text" / "the_verdict.txt").read_text(encoding="utf-8")
    text = text[:8000] + "<|endoftext|><|endoftext|><|endoftext|>中文 😀 <pad>  \n\n 12345 it's"
    ids = trained.encode(text, allowed_special="all")
    assert hf.encode(text, add_special_tokens=False).ids == ids
    assert fast.encode(text, add_special_tokens=False) == ids
    assert auto.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids, skip_special_tokens=False) == text
    assert fast.decode(ids) == text
    assert hf.get_vocab_size() == len(trained)
    assert Tokenizer.load(tmp_path).merges == trained.merges


@pytest.mark.parametrize("pattern", ["gpt2", "o200k"])
def test_save_hf_on_generated_strings(pattern, tmp_path_factory):
    text = (DATA / "text" / "the_verdict.txt").read_text(encoding="utf-8")
    tok = train_bpe(text, 600, special_tokens=["<|endoftext|>", "<|endoftext|><|endoftext|>", "<pad>"],
                    pattern=pattern, progress=False)
    path = tmp_path_factory.mktemp("hf")
    tok.save_hf(path)
    hf = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))

    @settings(max_examples=80, deadline=None)
    @given(text=hf_texts(tok.pattern))
    def check(text):
        ids = tok.encode(text, allowed_special="all")
        assert hf.encode(text, add_special_tokens=False).ids == ids
        assert fast.encode(text, add_special_tokens=False) == ids

    check()


def test_own_format_round_trips_exactly(trained, tmp_path):
    trained.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.vocab == trained.vocab
    assert loaded.merges == trained.merges
    assert loaded.special_tokens == trained.special_tokens and loaded.special_ids == trained.special_ids
    assert loaded.pattern == trained.pattern
    text = "Alice was beginning<|endoftext|> 中文 😀 <pad>"
    assert loaded.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    assert Tokenizer.load(tmp_path / "tokenizer.gator.json").merges == trained.merges
    loaded.save(tmp_path / "again")
    saved_twice = (tmp_path / "again" / "tokenizer.gator.json").read_bytes()
    assert saved_twice == (tmp_path / "tokenizer.gator.json").read_bytes()


def test_custom_pattern_round_trips(tmp_path):
    tok = train_bpe("aaa bbb aaa ccc 111 222", 262, pattern=r"\p{L}+|\p{N}+|\s+", progress=False)
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).pattern == r"\p{L}+|\p{N}+|\s+"
    assert Tokenizer.load(tmp_path).encode("aaa 111") == tok.encode("aaa 111") == tok.encode_python("aaa 111")


def test_corrupt_saved_tokenizer_is_a_clear_error(trained, tmp_path):
    trained.save(tmp_path)
    path = tmp_path / "tokenizer.gator.json"
    good = json.loads(path.read_text(encoding="utf-8"))

    def broken(change) -> str:
        data = json.loads(json.dumps(good))
        change(data)
        path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(ValueError) as err:
            Tokenizer.load(tmp_path)
        assert str(path) in str(err.value) and "retrain" in str(err.value)
        return str(err.value)

    assert f"merge {len(good['merges'])} refers to token id 99999" in broken(lambda d: d["merges"].append([0, 99999]))
    assert "missing field(s) ['vocab']" in broken(lambda d: d.pop("vocab"))
    assert "not a gator tokenizer" in broken(lambda d: d.update(format="something-else"))
    assert "not one of GPT-2's 256 byte characters" in broken(lambda d: d["vocab"].update({"300": "a b"}))
    assert "lacks 1 of the 256 single bytes" in broken(lambda d: d["vocab"].pop("0"))
    assert "same bytes" in broken(lambda d: d["vocab"].update({"300": d["vocab"]["301"]}))
    path.write_text(json.dumps(good)[:-100], encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        Tokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no gator tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")
