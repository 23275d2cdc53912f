"""DPO/IPO (objectives/dpo.py) and reward modelling (objectives/reward.py) through the one training loop.

References computed in the test: sequence log-probs from two separate models (the policy after a step,
and the reference loaded from disk), each pair's rows run alone and unpadded, put into the DPO and IPO
formulas; the reward model's Bradley-Terry loss and pairwise accuracy from each response scored alone.
The whole training split is one global batch, so a logged step loss is the mean over all its pairs."""

import math

import pytest
import torch
import torch.nn.functional as F
from posttrain_fixtures import RUN, byte_chat_tokenizer, metrics, tiny_model_dir, write_jsonl

from gator.model import Transformer
from gator.model.heads import RewardModel
from gator.model.lora import LoRAConfig, apply_lora
from gator.tokenizer.chat import apply_chat_template
from gator.train.config import make_config
from gator.train.loop import train
from gator.train.objectives.dpo import DirectPreference
from gator.train.objectives.reward import RewardModeling

PROBLEMS = [(3, 4), (5, 2), (8, 1), (6, 6), (2, 7), (9, 0), (4, 4)]  # 4 train pairs, 3 held out


def pair_rows(conversational):
    rows = []
    for a, b in PROBLEMS:
        q, right, wrong = f"What is {a} + {b}?", str(a + b), str(a + b + 1 + a % 3)
        if conversational:
            rows.append({"prompt": [{"role": "user", "content": q}],
                         "chosen": [{"role": "assistant", "content": right}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
        else:
            rows.append({"prompt": q, "chosen": right, "rejected": wrong})
    return rows


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("pref")
    tok = byte_chat_tokenizer()
    tiny_model_dir(d / "base", tok, init_std=0.3)
    for kind, conv in (("chat", True), ("text", False)):
        rows = pair_rows(conv)
        write_jsonl(d / f"{kind}_train.jsonl", rows[:4])
        write_jsonl(d / f"{kind}_val.jsonl", rows[4:])
    return d, tok


def encode(tok, row, key):
    """(prompt ids, response ids) the way the test reads the formats: the chat template's continuation of
    the prompt, or ordinary text + <|endoftext|>."""
    if isinstance(row["prompt"], list):
        prompt = apply_chat_template(tok, row["prompt"], add_generation_prompt=True)
        full = apply_chat_template(tok, row["prompt"] + row[key], add_generation_prompt=False)
        return prompt, full[len(prompt):]
    return tok.encode_ordinary(row["prompt"]), tok.encode_ordinary(row[key]) + [tok.special_ids["<|endoftext|>"]]


def seq_logprob(model, prompt, response):
    with torch.no_grad():
        ids = torch.tensor([prompt + response])
        logp = torch.log_softmax(model(ids)[0][0].float(), -1)
        return sum(logp[len(prompt) + i - 1, t].item() for i, t in enumerate(response))


def dpo_reference(policy, reference, tok, rows, beta, loss_type):
    losses, margins = [], []
    for row in rows:
        h = 0.0
        for key, sign in (("chosen", 1), ("rejected", -1)):
            p, r = encode(tok, row, key)
            h += sign * (seq_logprob(policy, p, r) - seq_logprob(reference, p, r))
        losses.append(-F.logsigmoid(torch.tensor(beta * h)).item() if loss_type == "sigmoid"
                      else (h - 1 / (2 * beta)) ** 2)
        margins.append(beta * h)
    return sum(losses) / len(rows), sum(margins) / len(rows), sum(m > 0 for m in margins) / len(rows)


class Capture:
    """Mixin: keep the prepared model, to copy its weights after each step."""

    def prepare_model(self, model, env):
        self.prepared = super().prepare_model(model, env)
        self.initial = {k: v.detach().clone() for k, v in self.prepared.state_dict().items()}
        return self.prepared


@pytest.mark.parametrize("loss_type,lora", [("sigmoid", False), ("ipo", False), ("sigmoid", True)])
def test_dpo_loss_equals_a_direct_computation_with_two_separate_models(task, tmp_path, loss_type, lora):
    d, tok = task
    beta = 0.5
    extra = dict(lora=True, lora_rank=4, lora_alpha=8, lora_targets=["q", "v", "o"]) if lora else {}
    cfg = make_config(None, {**RUN, "init_from": str(d / "base"), "data": str(d / "chat_train.jsonl"),
                             "out_dir": str(tmp_path / "run"), "seq_len": 64, "batch_tokens": 256,  # 4 pairs/step
                             "max_steps": 2, "lr": 2e-2, **extra})

    class Objective(Capture, DirectPreference):
        pass

    objective = Objective(cfg, beta=beta, loss_type=loss_type, val_data=str(d / "chat_val.jsonl"))
    weights = {}
    train(cfg, objective, on_step=lambda step, rec: weights.setdefault(
        step, {k.removeprefix("model."): v.detach().clone() for k, v in objective.prepared.state_dict().items()}))
    logged = metrics(tmp_path / "run")
    rows = pair_rows(True)
    reference = Transformer.from_pretrained(d / "base").eval()

    # step 1: the policy is the reference, h = 0
    assert logged[1]["loss"] == pytest.approx(math.log(2) if loss_type == "sigmoid" else (1 / (2 * beta)) ** 2,
                                              rel=1e-5)
    assert logged[1]["margin"] == pytest.approx(0, abs=1e-5)
    # step 2: the policy after one update against the reference loaded from disk
    policy = Transformer.from_pretrained(d / "base")
    if lora:
        policy = apply_lora(policy, LoRAConfig(r=4, alpha=8, targets=("q", "v", "o")))
    policy.load_state_dict(weights[1])
    loss, margin, accuracy = dpo_reference(policy.eval(), reference, tok, rows[:4], beta, loss_type)
    assert abs(margin) > 1e-3, "the update must move the policy away from the reference"
    assert logged[2]["loss"] == pytest.approx(loss, rel=1e-4)
    assert logged[2]["margin"] == pytest.approx(margin, rel=1e-4)
    assert logged[2]["accuracy"] == pytest.approx(accuracy)
    # the final evaluation: held-out pairs with the final weights, read back from the checkpoint
    final = Transformer.from_pretrained(tmp_path / "run" / "checkpoint").eval()
    val_loss, val_margin, val_accuracy = dpo_reference(final, reference, tok, rows[4:], beta, loss_type)
    evals = metrics(tmp_path / "run", "val_loss")
    assert evals[2]["val_loss"] == pytest.approx(val_loss, rel=1e-4)
    assert evals[2]["val_margin"] == pytest.approx(val_margin, rel=1e-4)
    assert evals[2]["val_accuracy"] == pytest.approx(val_accuracy)
    if lora:  # only the adapters trained: the base weights are untouched
        base = Transformer.from_pretrained(d / "base").state_dict()
        assert all(torch.equal(weights[2][k], v) for k, v in base.items() if k in weights[2])


def test_reward_model_loss_and_pairwise_accuracy_match_a_direct_computation(task, tmp_path):
    """Plain-text pairs: step 1's Bradley-Terry loss and accuracy from the initial reward model, and the
    final held-out accuracy from the saved reward model, each response scored alone."""
    d, tok = task
    cfg = make_config(None, {**RUN, "init_from": str(d / "base"), "data": str(d / "text_train.jsonl"),
                             "out_dir": str(tmp_path / "rm"), "seq_len": 64, "batch_tokens": 256, "max_steps": 8,
                             "lr": 1e-2})

    class Objective(Capture, RewardModeling):
        pass

    objective = Objective(cfg, val_data=str(d / "text_val.jsonl"))
    train(cfg, objective)
    logged, rows = metrics(tmp_path / "rm"), pair_rows(False)

    def scores(model, rows):
        out = []
        with torch.no_grad():
            for row in rows:
                pair = []
                for key in ("chosen", "rejected"):
                    p, r = encode(tok, row, key)
                    h = model.backbone(torch.tensor([p + r]))[0][0, -1]  # hidden state of the last token
                    pair.append(float(h @ model.score.weight[0]))
                out.append(pair)
        return torch.tensor(out)

    initial = RewardModel(objective.prepared.config)
    initial.load_state_dict(objective.initial)
    s = scores(initial.eval(), rows[:4])
    assert logged[1]["loss"] == pytest.approx(-F.logsigmoid(s[:, 0] - s[:, 1]).mean().item(), rel=1e-5)
    assert logged[1]["accuracy"] == pytest.approx((s[:, 0] > s[:, 1]).float().mean().item())

    saved = RewardModel.from_pretrained(tmp_path / "rm" / "checkpoint").eval()
    s = scores(saved, rows[4:])
    final = metrics(tmp_path / "rm", "val_loss")[8]
    assert final["val_accuracy"] == pytest.approx((s[:, 0] > s[:, 1]).float().mean().item())
    assert final["val_loss"] == pytest.approx(-F.logsigmoid(s[:, 0] - s[:, 1]).mean().item(), rel=1e-4)
    assert logged[8]["loss"] < logged[1]["loss"]  # it learns the training pairs


def test_reward_model_run_resumes_from_its_checkpoint(task, tmp_path):
    """A reward-model checkpoint (config.json marked "head": "reward") resumes: 4 steps == 2 + 2."""
    d, _ = task
    base = {**RUN, "init_from": str(d / "base"), "data": str(d / "text_train.jsonl"), "seq_len": 64,
            "batch_tokens": 128, "lr": 1e-2}
    cfg = make_config(None, {**base, "out_dir": str(tmp_path / "a"), "max_steps": 4})
    train(cfg, RewardModeling(cfg, val_data=str(d / "text_val.jsonl")))
    cfg = make_config(None, {**base, "out_dir": str(tmp_path / "b"), "max_steps": 2})
    train(cfg, RewardModeling(cfg, val_data=str(d / "text_val.jsonl")))
    cfg = make_config(None, {**base, "out_dir": str(tmp_path / "b"), "max_steps": 4, "resume": True})
    train(cfg, RewardModeling(cfg, val_data=str(d / "text_val.jsonl")))
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [a[s]["loss"] for s in range(1, 5)] == [b[s]["loss"] for s in range(1, 5)]


def test_bad_preference_data_is_named(task, tmp_path):
    d, _ = task
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "a"}\n')
    cfg = make_config(None, {**RUN, "init_from": str(d / "base"), "data": str(bad), "out_dir": str(tmp_path / "x"),
                             "max_steps": 1})
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: missing \"rejected\""):
        train(cfg, DirectPreference(cfg))
