"""The SFT objective (gator/train/objectives/sft.py), checked piece by piece against direct computations.

- The loss covers exactly the assistant's reply and its end-of-turn token: it equals the cross-entropy of
  the model on the tokens after the prompt that `apply_chat_template(..., add_generation_prompt=True)` gives.
- Plain {"text": ...} lines train every token: the loss is the model's ordinary next-token loss.
- Sample order is a pure function of (seed, index): every epoch holds each sample once; packed rows hold
  whole samples within seq_len; a second objective reads the same batches.
- The validation split is fixed by the seed and disjoint from training; the validation loss equals a
  recomputation on each held-out sample alone.
- A malformed line is refused with its line number, or counted with skip_bad_lines.
- A tokenizer without a chat template gets one, and the model grows (new rows = mean of the old ones);
  LoRA refuses that, since adapters cannot learn the new embeddings.
"""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from sft_fixtures import TRAIN_SETTINGS, make_base, write_chat, write_text

from gator.errors import TrainingError
from gator.model import Transformer
from gator.tokenizer import Tokenizer, apply_chat_template
from gator.train import make_config
from gator.train.objectives.sft import SFT, PackedOrder


def objective(tmp_path, data, **overrides):
    base = tmp_path / "base"
    if not base.exists():
        make_base(base, chat=overrides.pop("chat", True))
    overrides.pop("chat", None)
    cfg = make_config(None, {**TRAIN_SETTINGS, "init_from": str(base), "data": str(data),
                             "out_dir": str(tmp_path / "run"), **overrides})
    return SFT(cfg), base


def started(obj, base, seq_len=64, global_batch=8):
    model = obj.prepare_model(Transformer.from_pretrained(base), SimpleNamespace(distributed=False))
    run = SimpleNamespace(seq_len=seq_len, global_batch=global_batch, device=torch.device("cpu"), raw_model=model,
                          model=model.eval(), say=lambda msg: None)
    obj.start(run)
    return run


def test_loss_is_on_the_assistant_reply_only(tmp_path):
    data = write_chat(tmp_path / "chat.jsonl", n=20)
    obj, base = objective(tmp_path, data)
    run = started(obj, base)
    tok = obj.tokenizer
    for k in range(3):
        batch = obj.train_batch(run, k, 1)
        sample = obj.train[obj.order.indices(k, 1)[0]]
        ids = sample[0]
        messages = [json.loads(line)["messages"] for line in data.read_text().splitlines()]
        conv = next(m for m in messages if apply_chat_template(tok, m, add_generation_prompt=False) == ids)
        prompt = apply_chat_template(tok, conv[:-1], add_generation_prompt=True)
        end = len(ids) - 1 - ids[::-1].index(tok.special_ids["<|im_end|>"])  # the reply's end-of-turn token
        assert ids[:len(prompt)] == prompt and tok.decode(ids[end + 1:]) == "\n"
        assert tok.decode(ids[len(prompt):end + 1]) == conv[-1]["content"] + "<|im_end|>"
        with torch.no_grad():
            logits, _ = run.model(torch.tensor([ids[:-1]]))
            ref = F.cross_entropy(logits[0, len(prompt) - 1:end], torch.tensor(ids[len(prompt):end + 1]))
            loss = obj.loss(run.model, batch).loss
        assert abs(loss.item() - ref.item()) < 1e-5


def test_text_lines_train_every_token(tmp_path):
    data = write_text(tmp_path / "text.jsonl", n=10)
    obj, base = objective(tmp_path, data, chat=False)
    assert obj.tokenizer.chat_template is None  # no conversations: no template needed
    run = started(obj, base)
    batch = obj.train_batch(run, 0, 1)
    ids = obj.train[obj.order.indices(0, 1)[0]][0]
    assert ids[-1] == obj.tokenizer.special_ids["<|endoftext|>"]
    with torch.no_grad():
        _, ref = run.model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
        loss = obj.loss(run.model, batch).loss
    assert abs(loss.item() - ref.item()) < 1e-6


def test_long_text_is_cut_into_pieces_not_truncated(tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(json.dumps({"text": " ".join(["red cat"] * n)}) for n in (200, 3, 3, 3)) + "\n")
    obj, base = objective(tmp_path, data, chat=False, val_fraction=0.25, seed=3)
    started(obj, base, seq_len=16)
    long_ids = obj.tokenizer.encode_ordinary(" ".join(["red cat"] * 200)) + [obj.tokenizer.special_ids["<|endoftext|>"]]
    pieces = [x for x, _ in obj.train + obj.val if len(x) == 17 or x == long_ids[-(len(long_ids) % 17):]]
    assert sum(pieces, []) == long_ids


@pytest.mark.parametrize("packing", [False, True])
def test_order_is_a_pure_function_of_seed_and_index(tmp_path, packing):
    data = write_chat(tmp_path / "chat.jsonl", n=40)
    a, base = objective(tmp_path, data, packing=packing)
    b, _ = objective(tmp_path, data, packing=packing)
    run_a, run_b = started(a, base), started(b, base)
    later = b.train_batch(run_b, 50, 4)  # read out of order first
    early = b.train_batch(run_b, 0, 4)
    for got, want in ((a.train_batch(run_a, 0, 4), early), (a.train_batch(run_a, 50, 4), later)):
        assert all(torch.equal(got[k], want[k]) for k in want)
    if not packing:
        n = len(a.train)
        assert sorted(a.order.indices(n, n)) == list(range(n))  # epoch 1: every sample once
        assert a.order.indices(0, n) != a.order.indices(n, n)  # in another order
    else:
        order: PackedOrder = a.order
        rows = order._epoch(1)
        assert sorted(i for row in rows for i in row) == list(range(len(a.train)))
        assert all(sum(order.lengths[i] for i in row) <= 64 for row in rows)
        assert rows != order._epoch(0)


def test_packed_batch_keeps_samples_apart(tmp_path):
    """A packed row's loss equals the token-weighted loss of its samples run one by one."""
    data = write_chat(tmp_path / "chat.jsonl", n=30)
    obj, base = objective(tmp_path, data, packing=True)
    run = started(obj, base)
    row = obj.order.rows(0, 1)[0]
    assert len(row) > 1
    batch = obj.train_batch(run, 0, 1)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in row:
            x, y = obj.train[i]
            logits, _ = run.model(torch.tensor([x[:-1]]))
            total += F.cross_entropy(logits[0], torch.tensor(y[1:]), ignore_index=-100, reduction="sum").item()
            count += sum(t != -100 for t in y[1:])
        loss = obj.loss(run.model, batch).loss.item()
    assert abs(loss - total / count) < 1e-5


def test_validation_split_and_loss(tmp_path):
    data = write_chat(tmp_path / "chat.jsonl", n=40)
    obj, base = objective(tmp_path, data, val_fraction=0.1)
    assert len(obj.val_lines) == 4 and not set(obj.val_lines) & set(obj.train_lines)
    assert sorted(obj.val_lines + obj.train_lines) == list(range(40))
    other, _ = objective(tmp_path, data, val_fraction=0.1, seed=5)
    assert other.val_lines != obj.val_lines  # the seed picks the held-out lines
    run = started(obj, base)
    with torch.no_grad():
        val = obj.evaluate(run)["val_loss"]
        total, count = 0.0, 0
        for x, y in obj.val:
            logits, _ = run.model(torch.tensor([x[:-1]]))
            total += F.cross_entropy(logits[0], torch.tensor(y[1:]), ignore_index=-100, reduction="sum").item()
            count += sum(t != -100 for t in y[1:])
    assert abs(val - total / count) < 1e-5


def test_bad_lines_are_named_or_counted(tmp_path):
    data = tmp_path / "bad.jsonl"
    good = [json.dumps({"prompt": "say red", "completion": "red"})] * 5
    lines = good[:2] + ['{"messages": [{"role": "robot", "content": "x"}]}'] + good[2:] + ["not json"]
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 3: .*role 'robot'.*--skip-bad-lines"):
        objective(tmp_path, data)
    obj, _ = objective(tmp_path, data, skip_bad_lines=True)
    assert len(obj.data.records) == 5 and [s.split(", line ")[1][0] for s in obj.data.skipped] == ["3", "7"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n')
    with pytest.raises(ValueError, match="line 1: field 'text' must be a non-empty string"):
        objective(tmp_path, empty)


def test_chat_template_is_added_and_the_model_grows(tmp_path):
    data = write_chat(tmp_path / "chat.jsonl", n=10)
    obj, base = objective(tmp_path, data, chat=False)
    plain = Tokenizer.load(base)
    assert plain.chat_template is None and obj.tokenizer.chat_template is not None
    assert obj.tokenizer.vocab_size == plain.vocab_size + 2 and obj.vocab_size == plain.vocab_size
    model = Transformer.from_pretrained(base)
    old = model.tok_emb.weight.detach().clone()
    grown = obj.prepare_model(model, SimpleNamespace(distributed=False))
    assert grown.config.vocab_size == plain.vocab_size + 2
    assert torch.equal(grown.tok_emb.weight[:len(old)], old)
    torch.testing.assert_close(grown.tok_emb.weight[len(old):], old.mean(0).expand(2, -1))
    lora, _ = objective(tmp_path, data, lora=True)
    with pytest.raises(TrainingError, match="LoRA run"):
        lora.prepare_model(Transformer.from_pretrained(base), SimpleNamespace(distributed=False))


def test_samples_without_trained_tokens_after_truncation_are_dropped(tmp_path):
    data = tmp_path / "long_prompt.jsonl"
    long, short = {"prompt": "say " + "red " * 60, "completion": "red"}, {"prompt": "say red", "completion": "red"}
    rows = [long] * 3 + [short] * 9
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    obj, base = objective(tmp_path, data, val_fraction=0.5)  # both halves keep >= 3 short samples
    said = []
    model = obj.prepare_model(Transformer.from_pretrained(base), SimpleNamespace(distributed=False))
    obj.start(SimpleNamespace(seq_len=32, global_batch=4, device=torch.device("cpu"), raw_model=model, model=model,
                              say=said.append))
    assert len(obj.train) + len(obj.val) == 9
    assert any("dropped 3 sample(s)" in s for s in said)
