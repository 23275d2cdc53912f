"""gator.data: reading documents, token shards (checked against encoding each document directly), the
deterministic split, the window order, and the synthetic story grammar."""

import json
import time

import numpy as np
import pytest

from gator.data import END_OF_TEXT, TokenData, WindowOrder, iter_documents, load_manifest, prepare, write_tokens
from gator.data import shards as shards_mod
from gator.data.synthetic import iter_stories, write_corpus
from gator.tokenizer import Tokenizer, train_bpe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    path = write_corpus(d / "stories.jsonl", 400, seed=1)
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    tok = train_bpe(docs, 400, special_tokens=[END_OF_TEXT], progress=False)
    tok.save(d / "tok")
    return path, docs, tok, d


# --- sources -----------------------------------------------------------------------------------------

def test_jsonl_field_text_markers_folders_and_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second"}) + "\n")
    assert list(iter_documents(tmp_path / "a.jsonl", field="body")) == ["first", "second"]
    with pytest.raises(ValueError, match=r"a.jsonl:1 has no field 'text' \(it has \['body'\]\)"):
        list(iter_documents(tmp_path / "a.jsonl"))
    (tmp_path / "b.txt").write_text(f"one\n{END_OF_TEXT}\ntwo{END_OF_TEXT}")
    assert list(iter_documents(tmp_path / "b.txt")) == ["one", "two"]
    # a folder: files in sorted order, each read by its type
    assert list(iter_documents(tmp_path, field="body")) == ["first", "second", "one", "two"]
    (tmp_path / "c.txt").write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(ValueError, match="c.txt is not UTF-8 text.*line 2"):
        list(iter_documents(tmp_path / "c.txt"))
    with pytest.raises(FileNotFoundError, match="neither a file"):
        list(iter_documents(tmp_path / "missing.txt"))


def test_unmarked_text_is_cut_at_paragraphs(data_dir):
    text = (data_dir / "text" / "the_verdict.txt").read_text()
    docs = list(iter_documents(data_dir / "text" / "the_verdict.txt", doc_chars=3000))
    assert "".join(docs) == text  # nothing lost or added
    assert len(docs) > 3
    assert all(d.endswith("\n\n") for d in docs[:-1])  # every cut is at a paragraph break
    assert all(len(d) >= 3000 for d in docs[:-1])
    assert list(iter_documents(data_dir / "text" / "the_verdict.txt", doc_chars=None)) == [text]


def test_hub_name_offline_fails_fast_with_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="not reachable.*tinystories_5k.jsonl"):
        list(iter_documents("roneneldan/TinyStories"))
    assert time.perf_counter() - t0 < 5


# --- prepare -----------------------------------------------------------------------------------------

def _decode_docs(tok, ids, eot):
    """Split a token stream at end-of-text and decode each document (the independent way back)."""
    cuts = np.flatnonzero(ids == eot)
    assert len(ids) == 0 or cuts[-1] == len(ids) - 1  # every document is closed by end-of-text
    starts = np.r_[0, cuts[:-1] + 1]
    return [tok.decode(ids[s:e].tolist()) for s, e in zip(starts, cuts)]


def test_prepare_matches_direct_encoding_and_splits_by_document(corpus, tmp_path):
    path, docs, tok, d = corpus
    m = prepare(path, d / "tok", tmp_path / "a", val_fraction=0.2, seed=3, workers=2, shard_tokens=5000,
                batch_chars=2000, progress=False)
    eot = tok.special_ids[END_OF_TEXT]
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == 400 and m["tokenizer"]["eot_id"] == eot
    train, val = TokenData(tmp_path / "a", "train"), TokenData(tmp_path / "a", "val")
    assert len(m["splits"]["train"]["files"]) > 1  # several shard files, read back as one sequence
    train_ids, val_ids = train.read(0, len(train)), val.read(0, len(val))
    train_docs, val_docs = _decode_docs(tok, train_ids, eot), _decode_docs(tok, val_ids, eot)
    # every document is in exactly one split, and the split keeps corpus order
    assert sorted(train_docs + val_docs) == sorted(docs)
    assert not set(train_docs) & set(val_docs)
    assert train_docs == [x for x in docs if x in set(train_docs)]
    assert 0.1 < len(val_docs) / len(docs) < 0.3
    # the ids are exactly those of encoding each document on its own, plus end-of-text
    expected = [i for x in train_docs for i in tok.encode(x) + [eot]]
    assert train_ids.tolist() == expected
    assert m["splits"]["train"]["bytes"] == sum(len(x.encode()) for x in train_docs)
    assert m["splits"]["val"]["documents"] == len(val_docs)
    # deterministic by seed and independent of the number of workers; another seed splits differently
    m0 = prepare(path, d / "tok", tmp_path / "b", val_fraction=0.2, seed=3, workers=0, progress=False)
    assert m0["splits"]["train"]["tokens"] == m["splits"]["train"]["tokens"]
    assert np.array_equal(TokenData(tmp_path / "b", "val").read(0, len(val)), val_ids)
    m1 = prepare(path, tok, tmp_path / "c", val_fraction=0.2, seed=4, workers=0, progress=False)
    assert m1["splits"]["val"]["tokens"] != m["splits"]["val"]["tokens"]
    assert (tmp_path / "c" / "tokenizer" / "tokenizer.gator.json").is_file()  # an object is saved alongside


def test_small_corpus_still_gets_a_val_document(tmp_path):
    tok = train_bpe("some words for a tiny tokenizer", 270, special_tokens=[END_OF_TEXT], progress=False)
    (tmp_path / "two.jsonl").write_text('{"text": "alpha beta"}\n{"text": "gamma delta"}\n')
    m = prepare(tmp_path / "two.jsonl", tok, tmp_path / "out", val_fraction=0.01, seed=0, workers=0,
                progress=False)
    assert m["splits"]["train"]["documents"] == 1 and m["splits"]["val"]["documents"] == 1
    with pytest.raises(ValueError, match="no documents found"):
        (tmp_path / "empty.jsonl").write_text("")
        prepare(tmp_path / "empty.jsonl", tok, tmp_path / "out2", workers=0, progress=False)


def test_uint32_shards_and_missing_manifest(tmp_path):
    ids = np.array([0, 70_000, 123_456, 5], dtype=np.int64)
    m = write_tokens(tmp_path, {"train": ids}, {"vocab_size": 200_000, "eot_id": 0, "fingerprint": "x"})
    assert m["dtype"] == "uint32"
    assert TokenData(tmp_path, "train").read(0, 4).tolist() == ids.tolist()
    with pytest.raises(FileNotFoundError, match="gator prepare"):
        load_manifest(tmp_path / "nowhere")
    (tmp_path / "train-00000.bin").write_bytes(b"\0" * 4)  # truncated shard
    with pytest.raises(ValueError, match="should hold 4 tokens"):
        TokenData(tmp_path, "train")


def test_prepare_keeps_a_bounded_number_of_batches_in_flight(corpus, tmp_path, monkeypatch):
    """Constant memory: the writer never lets the reader run more than `window` batches ahead."""
    path, docs, tok, d = corpus
    pulled, written = [0], [0]

    def counting(*args, **kwargs):
        for doc in iter_documents(path):
            pulled[0] += 1
            assert pulled[0] - written[0] <= 2 * 2 + 2  # 2 * workers batches of 1 document, + 1 held, + this one
            yield doc

    original = shards_mod.ShardWriter.write

    def write(self, ids, n_bytes=0, n_docs=1):
        written[0] += 1
        original(self, ids, n_bytes, n_docs)

    monkeypatch.setattr(shards_mod, "iter_documents", counting)
    monkeypatch.setattr(shards_mod.ShardWriter, "write", write)
    prepare(path, d / "tok", tmp_path / "o", workers=2, batch_chars=1, progress=False)
    assert written[0] == len(docs)


# --- reading windows ---------------------------------------------------------------------------------

def test_window_order_is_a_permutation_per_epoch_and_sliceable():
    order = WindowOrder(10, seed=7)
    first, second = order.indices(0, 10), order.indices(10, 10)
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10)) and first != second
    assert order.indices(3, 12) == (first + second)[3:15]  # any slice agrees with the whole sequence
    assert WindowOrder(10, seed=7).indices(0, 20) == first + second
    assert WindowOrder(10, seed=8).indices(0, 10) != first


def test_windows_are_inputs_and_shifted_targets(tmp_path):
    write_tokens(tmp_path, {"train": np.arange(50)}, {"vocab_size": 100, "eot_id": 0, "fingerprint": "x"})
    data = TokenData(tmp_path, "train")
    assert data.num_windows(8) == 6  # (50 - 1) // 8
    x, y = data.windows([0, 5], 8)
    assert x.tolist() == [list(range(0, 8)), list(range(40, 48))]
    assert y.tolist() == [list(range(1, 9)), list(range(41, 49))]


def test_tokenizer_without_end_of_text_is_refused(tmp_path):
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    with pytest.raises(ValueError, match="no <\\|endoftext\\|> special token"):
        prepare([], tok, tmp_path, progress=False)


# --- synthetic ---------------------------------------------------------------------------------------

def test_synthetic_stories_are_deterministic_and_varied():
    a, b = list(iter_stories(200, seed=5)), list(iter_stories(200, seed=5))
    assert a == b and a != list(iter_stories(200, seed=6))
    assert all(s.startswith("Once upon a time, there was") for s in a)
    assert len(set(a)) == 200  # no two stories alike
    assert sum("moral of the story" in s for s in a) > 50
    assert sum('"' in s for s in a) > 100  # dialogue
    words = {w for s in a for w in s.split()}
    assert len(words) > 150


def test_prepare_command_line(corpus, tmp_path, capsys):
    from gator.cli import main

    path, docs, tok, d = corpus
    assert main(["prepare", "--input", str(path), "--tokenizer", str(d / "tok"), "--out", str(tmp_path / "s"),
                 "--val-fraction", "0.1", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = load_manifest(tmp_path / "s")
    assert f"train: {m['splits']['train']['documents']:,} documents, {m['splits']['train']['tokens']:,} tokens" in out
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(docs)
    assert main(["prepare", "--input", str(path), "--tokenizer", str(d / "tok"), "--out", str(tmp_path / "t"),
                 "--field", "story", "--workers", "0", "--no-progress"]) == 1
    assert "has no field 'story'" in capsys.readouterr().err
