"""Perplexity, bits per byte and multiple-choice scoring against direct torch cross-entropy computations."""

from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gator.eval.multiple_choice import MCItem, choice_logprobs, load_mc_jsonl, score_multiple_choice
from gator.eval.perplexity import perplexity, token_nll, windows


class TinyLM(torch.nn.Module):
    """A causal toy model with the gator interface: logits at t depend on the embeddings of tokens 0..t
    of its input (running mean) and on t itself, so the window a token is scored in changes its score."""

    def __init__(self, vocab: int = 256, dim: int = 16, context_length: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(context_length=context_length, vocab_size=vocab)
        self.emb = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Embedding(context_length, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = ids.shape
        assert T <= self.config.context_length, "input longer than the context length"
        e = self.emb(ids).cumsum(1) / torch.arange(1, T + 1)[None, :, None]
        logits = self.head(torch.tanh(e + self.pos(torch.arange(T))[None]))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


class ByteTokenizer:
    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    encode = encode_ordinary  # a byte tokenizer has no control tokens

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


TEXT = "The quick brown fox jumps over the lazy dog; héllo wörld!"


def reference_nll(model, ids, context_length, stride):
    """Independent reference: score each position p on its own, feeding exactly the tokens of its window.

    Targets are scored in chunks [1, 1+stride), [1+stride, 1+2*stride), ...; a chunk ending at e (exclusive)
    sees inputs from max(0, e - 1 - context_length), so target p is predicted from ids[that start : p]."""
    total = 0.0
    for p in range(1, len(ids)):
        e = min(1 + ((p - 1) // stride + 1) * stride, len(ids))
        start = max(0, e - 1 - context_length)
        x = torch.tensor([ids[start:p]])
        logits = model(x)[0][0, -1]
        total += F.cross_entropy(logits[None], torch.tensor([ids[p]])).item()
    return total


@pytest.mark.parametrize("stride", [1, 3, 4, 8])
def test_sliding_window_nll_matches_per_token_reference(stride):
    model = TinyLM(context_length=8).eval()
    ids = ByteTokenizer().encode(TEXT)
    with torch.no_grad():
        expected = reference_nll(model, ids, 8, stride)
    total, count = token_nll(model, ids, stride=stride, batch_size=3)
    assert count == len(ids) - 1
    assert total == pytest.approx(expected, rel=1e-5)


def test_windows_score_every_target_once():
    for n in [2, 5, 17, 64]:
        for length in [1, 4, 8]:
            for stride in range(1, length + 1):
                scored = []
                for start, end, n_new in windows(n, length, stride):
                    assert 0 <= start < end and end - start <= length and n_new <= end - start
                    scored.extend(range(end + 1 - n_new, end + 1))
                assert scored == list(range(1, n))
    with pytest.raises(ValueError, match="stride"):
        windows(10, 4, 5)


def test_perplexity_and_bits_per_byte_short_text():
    """A text that fits in one window: one forward pass and torch's cross_entropy give the answer."""
    model = TinyLM(context_length=64).eval()
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0][0]
        mean_nll = F.cross_entropy(logits, torch.tensor(ids[1:])).item()
    result = perplexity(model, tok, TEXT)
    assert result.n_tokens == len(ids) - 1
    assert result.n_bytes == len(TEXT.encode()) - 1  # the unscored first byte is not counted
    assert result.nll == pytest.approx(mean_nll, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(mean_nll), rel=1e-6)
    assert result.bits_per_byte == pytest.approx(mean_nll * (len(ids) - 1) / math.log(2) / result.n_bytes)
    # with a BOS token in front every byte is scored, the first one from the BOS position
    with torch.no_grad():
        logits = model(torch.tensor([[0, *ids[:-1]]]))[0][0]
        nll_bos = F.cross_entropy(logits, torch.tensor(ids), reduction="sum").item()
    with_bos = perplexity(model, tok, TEXT, bos_id=0)
    assert (with_bos.n_tokens, with_bos.n_bytes) == (len(ids), len(TEXT.encode()))
    assert with_bos.bits_per_byte == pytest.approx(nll_bos / math.log(2) / len(TEXT.encode()), rel=1e-6)


def test_perplexity_long_text_uses_the_context_length_and_restores_mode():
    model = TinyLM(context_length=8)  # left in training mode on purpose
    tok = ByteTokenizer()
    result = perplexity(model, tok, TEXT * 3, stride=8)  # the model asserts it never sees more than 8 tokens
    assert model.training
    assert result.n_tokens == len(tok.encode(TEXT * 3)) - 1
    with pytest.raises(ValueError, match="at least two tokens"):
        perplexity(model, tok, "a")


ITEMS = [
    MCItem("The cat sat on the", ["mat.", "moon and the stars above us.", "dog"], 0),
    MCItem("2 + 2 =", ["4", "five", "22"], 1),
    MCItem("A long context that will not fit in the window at all, so it must be cut from the left",
           ["end", "finish line"], 1),
]


def reference_choice_logprob(model, tok, context, choice, context_length):
    ctx, cont = tok.encode(context), tok.encode(" " + choice)
    seq = (ctx + cont)[-(context_length + 1):]
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]]))[0][0]
    n = len(cont)
    return -F.cross_entropy(logits[-n:], torch.tensor(seq[-n:]), reduction="sum").item()


def test_multiple_choice_matches_direct_computation():
    model = TinyLM(context_length=32).eval()
    tok = ByteTokenizer()
    result = score_multiple_choice(model, tok, ITEMS)
    preds, preds_norm = [], []
    for item, score in zip(ITEMS, result.items):
        expected = [reference_choice_logprob(model, tok, item.context, c, 32) for c in item.choices]
        assert score.logprobs == pytest.approx(expected, rel=1e-5)
        assert score.n_tokens == [len(tok.encode(" " + c)) for c in item.choices]
        norm = [lp / len((" " + c).encode()) for lp, c in zip(expected, item.choices)]
        assert score.logprobs_norm == pytest.approx(norm, rel=1e-5)
        preds.append(max(range(len(expected)), key=expected.__getitem__))
        preds_norm.append(max(range(len(norm)), key=norm.__getitem__))
        record = score.to_dict()
        assert record["pred"] == preds[-1] and record["correct"] == (preds[-1] == item.label)
    assert result.accuracy == pytest.approx(sum(p == it.label for p, it in zip(preds, ITEMS)) / len(ITEMS))
    assert result.accuracy_norm == pytest.approx(
        sum(p == it.label for p, it in zip(preds_norm, ITEMS)) / len(ITEMS))
    assert [s.pred for s in result.items] == preds


def test_multiple_choice_picks_what_a_trained_model_prefers():
    """Train the toy model on one sentence; it should then prefer that sentence's true ending."""
    model = TinyLM(context_length=48, seed=1)
    tok = ByteTokenizer()
    text = "the sun is hot and the snow is cold"
    ids = torch.tensor([tok.encode(text)])
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(40):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    items = [MCItem("the sun is hot and the snow is", ["warm", "cold", "blue"], 1)]
    assert score_multiple_choice(model, tok, items).accuracy == 1.0


def test_choice_errors():
    model, tok = TinyLM(context_length=8).eval(), ByteTokenizer()
    with pytest.raises(ValueError, match="longer than the context length"):
        choice_logprobs(model, tok, "ctx", ["a very long ending indeed"])
    with pytest.raises(ValueError, match="context is empty"):
        choice_logprobs(model, tok, "", ["a", "b"])


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"context": "a", "choices": ["x", "y"], "label": 0', "not valid JSON"),
        ('["a", ["x", "y"], 0]', "expected a JSON object"),
        ('{"context": "a", "choices": ["x", "y"]}', "missing 'label'"),
        ('{"context": 3, "choices": ["x", "y"], "label": 0}', "'context' must be a string"),
        ('{"context": "a", "choices": "xy", "label": 0}', "'choices' must be a list"),
        ('{"context": "a", "choices": ["x"], "label": 0}', "at least two strings"),
        ('{"context": "a", "choices": ["x", "y"], "label": 2}', "'label' must be an integer index"),
        ('{"context": "a", "choices": ["x", "y"], "label": "1"}', "'label' must be an integer index"),
    ],
)
def test_malformed_jsonl_names_the_line(tmp_path, line, message):
    good = json.dumps({"context": "c", "choices": ["a", "b"], "label": 1})
    path = tmp_path / "items.jsonl"
    path.write_text(f"{good}\n\n{good}\n{line}\n{good}\n")
    with pytest.raises(ValueError, match=rf"line 4: .*{message}"):
        load_mc_jsonl(path)


def test_load_mc_jsonl_reads_items(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"context": it.context, "choices": it.choices, "label": it.label}) + "\n"
                            for it in ITEMS))
    assert load_mc_jsonl(path) == ITEMS
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no items"):
        load_mc_jsonl(tmp_path / "empty.jsonl")


def run_cli(monkeypatch, argv, model):
    from gator.eval import cli

    monkeypatch.setattr(cli, "load_checkpoint", lambda checkpoint, device=None: (model, ByteTokenizer()))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_ppl_and_mc(tmp_path, monkeypatch, capsys):
    model = TinyLM(context_length=32).eval()
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    assert run_cli(monkeypatch, ["eval", "ppl", "--checkpoint", str(tmp_path), "--input", str(text)], model) == 0
    expected = perplexity(model, ByteTokenizer(), TEXT)
    assert f"perplexity {expected.perplexity:.3f}" in capsys.readouterr().out

    stories = tmp_path / "stories.jsonl"
    stories.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    run_cli(monkeypatch, ["eval", "ppl", "--checkpoint", str(tmp_path), "--input", str(stories)], model)
    expected = perplexity(model, ByteTokenizer(), "one\n\ntwo")
    assert f"perplexity {expected.perplexity:.3f}" in capsys.readouterr().out

    items = tmp_path / "mc.jsonl"
    items.write_text("".join(json.dumps({"context": it.context, "choices": it.choices, "label": it.label}) + "\n"
                             for it in ITEMS))
    out = tmp_path / "scores.jsonl"
    argv = ["eval", "mc", "--checkpoint", str(tmp_path), "--input", str(items), "--output", str(out)]
    assert run_cli(monkeypatch, argv, model) == 0
    result = score_multiple_choice(model, ByteTokenizer(), ITEMS)
    assert f"acc {result.accuracy:.4f}" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["pred"] for r in rows] == [s.pred for s in result.items]
    assert rows[0]["logprobs"] == pytest.approx(result.items[0].logprobs)


def test_cli_bleu(tmp_path, capsys):
    import sacrebleu

    from gator.eval import cli

    hyps, refs = ["the cat sat on the mat .", "a dog ran"], ["the cat is on the mat .", "the dog ran"]
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "bleu", "--hypotheses", str(tmp_path / "hyp.txt"),
                              "--references", str(tmp_path / "ref.txt")])
    assert args.func(args) == 0
    assert f"BLEU = {sacrebleu.corpus_bleu(hyps, [refs]).score:.2f}" in capsys.readouterr().out
