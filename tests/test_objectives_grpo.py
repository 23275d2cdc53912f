"""GRPO through the one training loop (gator.train.objectives.grpo), checked against direct computations.

The references here are written in the test from the definitions: log-probs from a plain forward pass of
each row alone + log_softmax (no padding helpers), the group advantage with the unbiased std, the
clipped surrogate and the k3 KL estimator, and the GRPO paper's per-sequence mean. Rewards are recomputed
from the decoded completions with the test's own reward function."""

import os
import signal

import pytest
import torch
from posttrain_fixtures import RUN, byte_chat_tokenizer, metrics, tiny_model_dir, write_jsonl
from safetensors.torch import load_file

from gator.data.arithmetic import arithmetic_splits, prompt_records
from gator.model import Transformer
from gator.model.lora import LoRAConfig, apply_lora, load_lora_state_dict
from gator.train.checkpoint import load_training_state
from gator.train.config import make_config
from gator.train.loop import train
from gator.train.objectives.grpo import GRPO, evaluate_prompts
from gator.train.objectives.rewards import exact_answer_reward

G, MAX_NEW = 4, 5


def digit_count(prompts, completions, **columns):
    """A reward with signal even for a random model: how many digits the answer has (and the answer column
    arrives, one value per completion)."""
    assert len(columns["answer"]) == len(completions)
    return [float(sum(ch.isdigit() for ch in c[0]["content"])) for c in completions]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo")
    tok = byte_chat_tokenizer()
    tiny_model_dir(d / "base", tok, init_std=0.3)
    train_p, test_p = arithmetic_splits(40, 6, digits=1)
    write_jsonl(d / "prompts.jsonl", prompt_records(train_p))
    write_jsonl(d / "eval.jsonl", prompt_records(test_p))
    return d, tok


def config(d, out, **kw):
    values = {**RUN, "init_from": str(d / "base"), "data": str(d / "prompts.jsonl"), "out_dir": str(out),
              "seq_len": 64, "batch_tokens": 128, "lr": 2e-2, "max_steps": 2}  # 2 prompts per step
    values.update(kw)
    return make_config(None, values)


def direct_logprobs(model, ids, attention, response):
    """log pi(token | before) at each response token, each row run alone, unpadded (B, T)."""
    out = torch.zeros(ids.shape, dtype=torch.float32)
    with torch.no_grad():
        for b in range(ids.shape[0]):
            n = int(attention[b].sum())
            logits, _ = model(ids[b:b + 1, :n])
            logp = torch.log_softmax(logits[0].float(), -1)
            for t in range(1, n):
                if response[b, t]:
                    out[b, t] = logp[t - 1, ids[b, t]]
    return out


def grpo_reference(logp, old, ref, adv, response, beta, eps):
    """-min(rho A, clip(rho) A) + beta k3, mean over each response's tokens, then over responses."""
    rho = torch.exp(logp - old)
    surrogate = -torch.minimum(rho * adv[:, None], rho.clamp(1 - eps, 1 + eps) * adv[:, None])
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    per_token = (surrogate + beta * k3) * response
    clipped = (((rho < 1 - eps) & (adv[:, None] < 0)) | ((rho > 1 + eps) & (adv[:, None] > 0))) & response.bool()
    return ((per_token.sum(1) / response.sum(1)).mean().item(), clipped.sum().item() / response.sum().item(),
            ((k3 * response).sum() / response.sum()).item())


def test_grpo_losses_match_a_direct_computation_on_the_recorded_rollout(task, tmp_path):
    """mu=2 updates per rollout, beta=0.05, eps=0.05: step 1 (rho = 1) and step 2 (rho != 1, clipped
    tokens, KL > 0) both equal the formula on the rollout the run recorded; rewards and advantages equal
    the test's recomputation from the decoded completions; the old log-probs are the initial model's."""
    d, tok = task
    beta, eps = 0.05, 0.05
    cfg = config(d, tmp_path / "run", seed=3)  # a seed whose sampled rollout has reward signal (checked below)
    objective = GRPO(cfg, [digit_count], group_size=G, temperature=1.0, max_new_tokens=MAX_NEW,
                     updates_per_rollout=2, beta=beta, eps_low=eps, eval_data=str(d / "eval.jsonl"))
    seen = {}

    def record(step, rec):
        seen[step] = {"weights": {k: v.detach().clone() for k, v in objective.model.state_dict().items()},
                      "rollout": objective.buffer[0], "texts": list(objective.last_rollout["texts"])}

    train(cfg, objective, on_step=record)
    logged = metrics(tmp_path / "run")
    r = seen[1]["rollout"]
    assert seen[2]["rollout"].ids is r.ids  # the second update trains on the same completions

    initial = Transformer.from_pretrained(d / "base").eval()
    stop = tok.special_ids["<|im_end|>"]
    # the completions: sampled until the end-of-turn token (kept as the last response token) or the budget
    for b in range(r.ids.shape[0]):
        resp = r.ids[b][r.response_mask[b].bool()].tolist()
        assert resp[-1] == stop or len(resp) == MAX_NEW
        text = tok.decode([t for t in resp if t != stop])
        assert text == seen[1]["texts"][b]
    # rewards -> group advantages with the unbiased std
    rewards = torch.tensor([float(sum(ch.isdigit() for ch in t)) for t in seen[1]["texts"]])
    assert torch.equal(r.rewards, rewards)
    groups = rewards.view(-1, G)
    adv = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).flatten()
    torch.testing.assert_close(r.advantages, adv)
    assert r.advantages.abs().sum() > 0, "the test needs a rollout with signal"
    # the old log-probs are the sampling (initial) policy's
    old = direct_logprobs(initial, r.ids, r.attention_mask, r.response_mask)
    torch.testing.assert_close(r.old_logprobs, old, atol=1e-5, rtol=1e-5)

    loss1, clip1, kl1 = grpo_reference(old, old, old, adv, r.response_mask, beta, eps)
    assert logged[1]["loss"] == pytest.approx(loss1, abs=1e-6)
    assert logged[1]["clip_fraction"] == 0 and logged[1]["kl"] == pytest.approx(0, abs=1e-7)

    after_one = Transformer.from_pretrained(d / "base")
    after_one.load_state_dict(seen[1]["weights"])
    logp = direct_logprobs(after_one.eval(), r.ids, r.attention_mask, r.response_mask)
    loss2, clip2, kl2 = grpo_reference(logp, old, old, adv, r.response_mask, beta, eps)
    assert logged[2]["loss"] == pytest.approx(loss2, rel=1e-4, abs=1e-6)
    assert logged[2]["clip_fraction"] == pytest.approx(clip2) and clip2 > 0
    assert logged[2]["kl"] == pytest.approx(kl2, rel=1e-4) and kl2 > 0
    # the logged rollout statistics
    lengths = r.response_mask.sum(1).float()
    assert logged[1]["response_length"] == pytest.approx(lengths.mean().item())
    assert logged[1]["reward_mean"] == pytest.approx(rewards.mean().item())
    assert logged[1]["reward_max"] == rewards.max().item()
    assert logged[1]["rollout_seconds"] > 0 and logged[2]["rollout_seconds"] == 0


def test_grpo_resumes_exactly_in_the_middle_of_a_rollout(task, tmp_path):
    """6 steps straight == 3 steps (interrupted after the first update of rollout 2), resume, 3 more:
    the resumed run trains on the saved rollout, so every logged number and every weight is identical."""
    d, _ = task
    kw = dict(group_size=G, max_new_tokens=MAX_NEW, updates_per_rollout=2, beta=0.1, eval_data=str(d / "eval.jsonl"))
    cfg_a = config(d, tmp_path / "a", max_steps=6, ckpt_every=1)
    train(cfg_a, GRPO(cfg_a, [digit_count, exact_answer_reward], **kw))

    def interrupt(step, record):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg_b = config(d, tmp_path / "b", max_steps=6, ckpt_every=1)
    first = train(cfg_b, GRPO(cfg_b, [digit_count, exact_answer_reward], **kw), on_step=interrupt)
    assert first["steps"] == 3
    assert "0" in load_training_state(tmp_path / "b" / "checkpoint")["objective"]["buffer"]
    cfg_b = config(d, tmp_path / "b", max_steps=6, ckpt_every=1, resume=True)
    train(cfg_b, GRPO(cfg_b, [digit_count, exact_answer_reward], **kw))
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    drop = ("tokens_per_s", "mfu", "elapsed", "rollout_seconds")
    assert [{k: v for k, v in a[s].items() if k not in drop} for s in range(1, 7)] == \
           [{k: v for k, v in b[s].items() if k not in drop} for s in range(1, 7)]
    wa = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grpo_with_lora_trains_adapters_against_the_base_and_saves_a_merged_model(task, tmp_path):
    """LoRA: the reference is the base (adapters off), so the KL logged at step 2 equals the direct
    computation against the initial model; the checkpoint is a plain model whose logits equal the base
    with the saved adapters applied (gator.model.lora, independently of the objective's merge)."""
    d, tok = task
    lora = LoRAConfig(r=4, alpha=8, targets=("q", "v", "down"))
    cfg = config(d, tmp_path / "run", lr=5e-2, lora=True, lora_rank=4, lora_alpha=8, lora_targets=["q", "v", "down"],
                 seed=3)  # a seed whose sampled rollout has reward signal, so the adapters move
    objective = GRPO(cfg, [digit_count], group_size=G, max_new_tokens=MAX_NEW, updates_per_rollout=2,
                     beta=0.5, eval_data=str(d / "eval.jsonl"))
    seen = {}
    train(cfg, objective, on_step=lambda step, rec: seen.setdefault(step, (
        {k: v.detach().clone() for k, v in objective.model.state_dict().items()}, objective.buffer[0])))
    r = seen[1][1]
    base = Transformer.from_pretrained(d / "base").eval()
    ref = direct_logprobs(base, r.ids, r.attention_mask, r.response_mask)
    assert r.ref_logprobs is not None
    torch.testing.assert_close(r.ref_logprobs, ref, atol=1e-5, rtol=1e-5)
    adapted = apply_lora(Transformer.from_pretrained(d / "base"), lora)
    adapted.load_state_dict({k.removeprefix("model."): v for k, v in seen[1][0].items()})
    logp = direct_logprobs(adapted.eval(), r.ids, r.attention_mask, r.response_mask)
    _, _, kl = grpo_reference(logp, r.old_logprobs, ref, r.advantages, r.response_mask, 0.5, 0.2)
    assert metrics(tmp_path / "run")[2]["kl"] == pytest.approx(kl, rel=1e-4) and kl > 0

    state = load_training_state(tmp_path / "run" / "checkpoint")["objective"]["adapters"]
    final = apply_lora(Transformer.from_pretrained(d / "base"), lora)
    load_lora_state_dict(final, {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")})
    merged = Transformer.from_pretrained(tmp_path / "run" / "checkpoint")
    x = r.ids[:3]
    torch.testing.assert_close(merged(x)[0], final(x)[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged(x)[0], base(x)[0])  # the adapters did change it


def test_held_out_evaluation_decodes_greedily_and_scores_with_the_reward(task):
    """evaluate_prompts == greedy decoding by hand (argmax until end-of-turn); accuracy is the share of
    answers the first reward function scores >= 1, reward the mean weighted total."""
    d, tok = task
    from gator.tokenizer.chat import apply_chat_template

    rows = prompt_records(arithmetic_splits(0, 5, digits=1, seed=3)[1])
    model = Transformer.from_pretrained(d / "base").eval()
    stop = tok.special_ids["<|im_end|>"]
    answers = []
    for row in rows:
        ids = apply_chat_template(tok, row["prompt"])
        out = []
        with torch.no_grad():
            for _ in range(MAX_NEW):
                nxt = int(model(torch.tensor([ids + out]))[0][0, -1].argmax())
                if nxt == stop:
                    break
                out.append(nxt)
        answers.append(tok.decode(out))
    result = evaluate_prompts(model, tok, rows, [digit_count, exact_answer_reward], weights=[0.5, 2.0],
                              max_new_tokens=MAX_NEW)
    assert result["answers"] == answers
    digits = [sum(ch.isdigit() for ch in a) for a in answers]
    right = [a.strip() == r["answer"] for a, r in zip(answers, rows)]
    assert result["accuracy"] == pytest.approx(sum(n >= 1 for n in digits) / len(rows))
    assert result["reward"] == pytest.approx(sum(0.5 * n + 2.0 * c for n, c in zip(digits, right)) / len(rows))


def test_cli_grpo_trains_and_bad_input_is_one_line(task, tmp_path, capsys):
    from gator.cli import main as gator_main

    d, _ = task
    rc = gator_main(["grpo", "--model", str(d / "base"), "--data", str(d / "prompts.jsonl"), "--out",
                     str(tmp_path / "g"), "--group-size", "4", "--max-new-tokens", "4", "--eval-data",
                     str(d / "eval.jsonl"), "--reward", "exact_answer", "--reward", "number_format",
                     "--reward-weights", "1,0.5", "--max-steps", "2", "--no-progress", "seq_len=64",
                     "batch_tokens=128", "micro_batch=2", "dtype=fp32"])
    assert rc == 0 and (tmp_path / "g" / "best" / "model.safetensors").is_file()
    assert "reward_mean" in metrics(tmp_path / "g")[2]
    capsys.readouterr()
    rc = gator_main(["grpo", "--model", str(d / "base"), "--data", str(d / "prompts.jsonl"), "--out",
                     str(tmp_path / "h"), "--reward", "exact_anwser", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "unknown reward 'exact_anwser'" in err


def test_gsm8k_rows_are_a_grpo_dataset(data_dir, tmp_path):
    """GSM8K's {"question", "answer"} rows as they are: the question becomes the user turn, the gold number
    after "####" reaches gsm8k_answer_reward, and the logged rewards are that function's on the texts."""
    from gator.train.objectives.rewards import gsm8k_answer_reward

    tok = byte_chat_tokenizer()
    tiny_model_dir(tmp_path / "base", tok, context_length=1024)
    lines = (data_dir / "instruct" / "gsm8k_test.jsonl").read_text().splitlines()[:8]
    (tmp_path / "gsm8k.jsonl").write_text("\n".join(lines) + "\n")
    cfg = make_config(None, {**RUN, "init_from": str(tmp_path / "base"), "data": str(tmp_path / "gsm8k.jsonl"),
                             "out_dir": str(tmp_path / "run"), "seq_len": 1024, "batch_tokens": 2048,
                             "max_steps": 1})
    objective = GRPO(cfg, [gsm8k_answer_reward], group_size=2, max_new_tokens=4, eval_prompts=1)
    train(cfg, objective)
    rows = [__import__("json").loads(line) for line in lines]
    assert objective.rows[0]["prompt"] in {r["question"] for r in rows}
    index, texts = objective.last_rollout["prompt_index"], objective.last_rollout["texts"]
    gold = [objective.rows[i]["answer"] for i in index for _ in range(2)]
    assert objective.last_rollout["rewards"] == gsm8k_answer_reward(None, texts, answer=gold)
