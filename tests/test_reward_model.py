"""Reward model (gator.model.heads), its transformers export (gator.interop.hf_reward) and preference data
(gator.data.preference).

References: transformers' own Llama/GPT2ForSequenceClassification must give the same scores as Gator's
reward model on padded batches (< 1e-4); the Bradley-Terry loss and its gradient are compared with the
formula in plain Python and autograd; padded rows are compared with the same row run alone."""

import json
import math
import sys
import types

import pytest
import torch
import transformers

from gator.config import get_preset
from gator.data.preference import (
    PreferencePair,
    collate_preferences,
    encode_preference,
    encode_text,
    read_preferences,
)
from gator.interop.hf_reward import export_reward_hf
from gator.model import Transformer
from gator.model.heads import RewardModel, bradley_terry_loss, last_token_index, pairwise_accuracy
from gator.tokenizer import train_bpe

V = 97
PAD = 96  # a dedicated padding id: never used inside the test sequences


def perturbed(config, seed=0):
    torch.manual_seed(seed)
    rm = RewardModel(config).eval()
    with torch.no_grad():  # biases, norms and the head get non-trivial values
        for p in rm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return rm


def configs():
    yield "gpt2", get_preset("tiny-gpt2", vocab_size=V, context_length=32, init_std=0.3)
    yield "llama-gqa", get_preset("tiny-gatorgpt", vocab_size=V, context_length=32, init_std=0.3)
    yield "llama-untied-bias", get_preset("tiny-gatorgpt", vocab_size=V, context_length=32, init_std=0.3,
                                          tie_embeddings=False, bias=True)


ROWS = [[5, 9, 13, 2, 40, 41], [3, 4, 20], [8, 30, 31, 32, 33, 34, 35, 36]]


def padded(rows, side):
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), PAD)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        s = T - len(r) if side == "left" else 0
        ids[i, s:s + len(r)] = torch.tensor(r)
        mask[i, s:s + len(r)] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_reward_is_read_at_the_last_real_token_whatever_the_padding(side, one_thread):
    rm = perturbed(get_preset("tiny-gpt2", vocab_size=V, context_length=32, init_std=0.3))
    ids, mask = padded(ROWS, side)
    with torch.no_grad():
        batched = rm(ids, mask)
        alone = torch.stack([rm(torch.tensor([r]))[0] for r in ROWS])
    assert torch.allclose(batched, alone, atol=1e-5)
    assert last_token_index(mask).tolist() == ([7, 7, 7] if side == "left" else [5, 2, 7])


def test_from_lm_copies_the_trunk_and_reads_its_final_hidden_state(one_thread):
    torch.manual_seed(0)
    lm = Transformer(get_preset("tiny-gatorgpt", vocab_size=V, context_length=32, init_std=0.3)).eval()
    rm = RewardModel.from_lm(lm).eval()
    captured = {}
    lm.norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("h", out))
    ids = torch.tensor([ROWS[0]])
    with torch.no_grad():
        lm(ids)
        expected = torch.nn.functional.linear(captured["h"][:, -1], rm.score.weight)[:, 0]
        assert torch.allclose(rm(ids), expected, atol=1e-5)
    assert isinstance(lm.lm_head, torch.nn.Linear)  # the language model is untouched
    rm.backbone.tok_emb.weight.data.zero_()
    assert lm.tok_emb.weight.abs().sum() > 0  # a copy, not shared


def test_bradley_terry_loss_and_accuracy_match_the_formula():
    rc = torch.tensor([2.0, -0.5, 0.3, 1.0], requires_grad=True)
    rr = torch.tensor([1.0, 0.5, 0.3, -3.0])
    loss = bradley_terry_loss(rc, rr)
    expected = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(rc.tolist(), rr.tolist())) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    sig = torch.sigmoid(rc.detach() - rr)
    assert torch.allclose(rc.grad, -(1 - sig) / 4, atol=1e-7)  # d/dr_c of -log sigmoid(r_c - r_r), averaged
    assert pairwise_accuracy(rc, rr) == 2 / 4  # the tie (0.3, 0.3) counts as wrong
    assert math.isfinite(bradley_terry_loss(torch.tensor([-500.0]), torch.tensor([500.0])).item())
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(rc, rr[:2])


def test_save_and_load_round_trip(tmp_path, one_thread):
    rm = perturbed(get_preset("tiny-gatorgpt", vocab_size=V, context_length=32, init_std=0.3))
    rm.save_pretrained(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["head"] == "reward"
    loaded = RewardModel.from_pretrained(tmp_path / "rm").eval()
    ids, mask = padded(ROWS, "right")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), rm(ids, mask))
    Transformer(rm.config).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="not a reward model"):
        RewardModel.from_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        Transformer.from_pretrained(tmp_path / "rm")


@pytest.mark.parametrize("name,config", list(configs()), ids=[n for n, _ in configs()])
def test_transformers_sequence_classifier_gives_the_same_scores(tmp_path, name, config, one_thread):
    rm = perturbed(config)
    export_reward_hf(rm, tmp_path / "hf", pad_token_id=PAD)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"][0].endswith("ForSequenceClassification") and cfg["pad_token_id"] == PAD
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.num_labels == 1
    for side in ("right", "left"):
        ids, mask = padded(ROWS, side)
        kwargs = {}
        if name == "gpt2":  # learned absolute positions: tell transformers where each left-padded row starts
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            ours = rm(ids, mask)
            theirs = hf(input_ids=ids, attention_mask=mask, **kwargs).logits[:, 0]
        assert (ours - theirs).abs().max() < 1e-4, (side, ours, theirs)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_reward_hf(rm, tmp_path / "hf", pad_token_id=PAD)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        export_reward_hf(rm, tmp_path / "hf2", pad_token_id=V)


# -- preference data --------------------------------------------------------------------------------

def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


USER = {"role": "user", "content": "What is 2 + 2?"}


def test_reads_plain_conversational_and_implicit_prompt_rows(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
        {"prompt": [USER], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
        "",
        {"chosen": [USER, {"role": "assistant", "content": "4"}], "rejected": [USER, {"role": "assistant",
                                                                                       "content": "22"}]},
    ])
    data = read_preferences(path)
    assert len(data) == 3 and not data.skipped
    assert data.pairs[0] == PreferencePair("What is 2 + 2?", "4", "5")
    assert data.pairs[1] == data.pairs[2].__class__([USER], [{"role": "assistant", "content": "4"}],
                                                    [{"role": "assistant", "content": "5"}])
    assert data.pairs[2].prompt == [USER] and data.pairs[2].rejected == [{"role": "assistant", "content": "22"}]
    assert data.pairs[2].conversational and not data.pairs[0].conversational


@pytest.mark.parametrize("line,message", [
    ("{not json", "line 2: not valid JSON"),
    ({"prompt": "q", "chosen": "a"}, 'line 2: missing "rejected"'),
    ({"prompt": "q", "chosen": "a", "rejected": [USER]}, "line 2: .*both be strings or both be lists"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, 'line 2: .*"prompt" must be text'),
    ({"prompt": [USER], "chosen": [{"role": "robot", "content": "4"}], "rejected": [USER]},
     "line 2: .*role 'robot'"),
    ({"prompt": [USER], "chosen": [USER], "rejected": [{"role": "assistant", "content": "5"}]},
     'line 2: the "chosen" response must be one or more assistant turns'),
])
def test_malformed_lines_are_reported_with_their_line_number(tmp_path, line, message):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, line])
    with pytest.raises(ValueError, match=message):
        read_preferences(path)
    data = read_preferences(path, skip_bad_lines=True)
    assert len(data) == 1 and len(data.skipped) == 1 and data.skipped[0].startswith("line 2:")


@pytest.fixture(scope="module")
def tok():
    text = "What is two plus two? The answer is four, not five. " * 20
    return train_bpe(text, vocab_size=280, special_tokens=["<|endoftext|>"], progress=False)


def test_plain_pairs_encode_and_collate_into_masks(tok):
    eot = tok.special_ids["<|endoftext|>"]
    pair = PreferencePair("What is two plus two?", " four", " five, not four")
    enc = encode_preference(pair, tok, eos_id=eot)
    assert enc.prompt == tok.encode("What is two plus two?")
    assert enc.chosen == tok.encode(" four") + [eot] and enc.rejected == tok.encode(" five, not four") + [eot]
    short = encode_preference(pair, tok, eos_id=eot, max_length=len(enc.prompt) + 2)
    assert short.chosen == enc.chosen[:2] and short.rejected == enc.rejected[:2]
    with pytest.raises(ValueError, match="no room for a response"):
        encode_preference(pair, tok, max_length=len(enc.prompt))
    other = encode_preference(PreferencePair("Two?", " four", " five"), tok)
    for side in ("right", "left"):
        batch = collate_preferences([enc, other], pad_id=0, padding_side=side)
        assert batch.n_pairs == 2 and batch.ids.shape[0] == 4
        rows = [(enc.prompt, enc.chosen), (other.prompt, other.chosen), (enc.prompt, enc.rejected),
                (other.prompt, other.rejected)]
        for i, (p, c) in enumerate(rows):
            real = batch.attention_mask[i].bool()
            assert batch.ids[i][real].tolist() == p + c
            assert batch.ids[i][batch.response_mask[i].bool()].tolist() == c
            assert real.sum() == len(p) + len(c)
            if side == "left":
                assert real[-1] and (real.sum() == real.shape[0] or not real[0])
            else:
                assert real[0]


def test_control_tokens_written_in_text_never_become_control_tokens(tok):
    eot = tok.special_ids["<|endoftext|>"]
    try:
        ids = encode_text(tok, "four<|endoftext|>five")
    except ValueError as err:  # a tokenizer without an ordinary encoding refuses the text
        assert "control token '<|endoftext|>'" in str(err)
    else:
        assert eot not in ids and tok.decode(ids) == "four<|endoftext|>five"


def test_conversational_pairs_split_the_template_at_the_generation_prompt(tok, monkeypatch):
    """With a stand-in chat template (the real one lives in gator.tokenizer.chat): the response ids are
    what the template adds after the prompt with its generation prompt."""
    def apply_chat_template(tokenizer, messages, add_generation_prompt):
        text = "".join(f"[{m['role']}]{m['content']}\n" for m in messages)
        return tokenizer.encode(text + ("[assistant]" if add_generation_prompt else ""))

    monkeypatch.setitem(sys.modules, "gator.tokenizer.chat",
                        types.SimpleNamespace(apply_chat_template=apply_chat_template))
    pair = PreferencePair([USER], [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}])
    enc = encode_preference(pair, tok)
    assert tok.decode(enc.prompt) == "[user]What is 2 + 2?\n[assistant]"
    assert tok.decode(enc.chosen) == "4\n" and tok.decode(enc.rejected) == "5\n"
