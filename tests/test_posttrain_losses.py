"""Post-training losses (gator.train.objectives.losses), each against a direct computation: per-row
unpadded forwards and Python loops, torch.distributions, the statistics module, and autograd for the
gradients the losses are meant to have. DPO/IPO are checked with two separate tiny Gator models (policy
and reference) against the formulas of Rafailov et al. (2023) and Azar et al. (2023), written here in
plain Python floats (the same definitions TRL's DPOTrainer uses: logits = pi_logratios - ref_logratios,
-logsigmoid(beta * logits), and (logits - 1 / (2 beta))^2 for IPO)."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from gator.config import get_preset
from gator.model import Transformer
from gator.train.objectives.losses import (
    aggregate,
    clip_fraction,
    clipped_surrogate_loss,
    dpo_loss,
    group_advantages,
    grpo_loss,
    masked_mean,
    masked_normalize,
    masked_sum,
    reference_kl,
    reinforce_loss,
    response_logprobs,
    sequence_logprobs,
    token_entropy,
    token_logprobs,
)

PAD = 7  # any id: padding is marked by the attention mask


def tiny(name="tiny-gatorgpt", seed=0):
    torch.manual_seed(seed)
    return Transformer(get_preset(name, vocab_size=61, context_length=32, init_std=0.2)).eval()


def padded_batch(rows, responses_from, side):
    """ids, attention_mask, response_mask for token lists `rows`, response = tokens from index responses_from[i]."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), PAD)
    att = torch.zeros(len(rows), T, dtype=torch.long)
    resp = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (row, start) in enumerate(zip(rows, responses_from)):
        off = T - len(row) if side == "left" else 0
        ids[i, off:off + len(row)] = torch.tensor(row)
        att[i, off:off + len(row)] = 1
        resp[i, off + start:off + len(row)] = 1
    return ids, att, resp


def close_grads(a, b):
    """Equal up to fp32 rounding, relative to the largest entry (sums over many tokens round differently)."""
    return float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


def direct_response_logp(model, row, start):
    """sum_{t >= start} log softmax(model(row alone))[t-1][row[t]], one token at a time."""
    logits = model(torch.tensor([row]))[0][0].float()
    return [torch.log_softmax(logits[t - 1], -1)[row[t]] for t in range(start, len(row))]


ROWS = [[1, 5, 9, 13, 2, 40, 41], [3, 4, 20, 21], [8, 30, 31, 32, 33, 34, 35, 36, 50]]
STARTS = [4, 2, 3]


# -- log-probabilities and entropy --------------------------------------------------------------------

def test_token_logprobs_and_entropy_match_cross_entropy_and_categorical():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    ids = torch.randint(0, 11, (2, 5))
    logp = token_logprobs(logits, ids)
    ref = -F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none").view(2, 4)
    assert logp.shape == (2, 5) and (logp[:, 0] == 0).all()
    assert torch.allclose(logp[:, 1:], ref, atol=1e-6)
    g1, = torch.autograd.grad(logp.sum(), logits)
    g2, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-6)
    ent = token_entropy(logits)
    expected = torch.distributions.Categorical(logits=logits[:, :-1]).entropy()
    assert (ent[:, 0] == 0).all() and torch.allclose(ent[:, 1:], expected, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-gatorgpt", "tiny-gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_response_logprobs_on_padded_batches_equal_rows_run_alone(preset, side, one_thread):
    model = tiny(preset)
    ids, att, resp = padded_batch(ROWS, STARTS, side)
    logp, ent = response_logprobs(model, ids, resp, att, with_entropy=True)
    for i, (row, start) in enumerate(zip(ROWS, STARTS)):
        expected = torch.stack(direct_response_logp(model, row, start))
        got = logp[i][resp[i].bool()]
        assert torch.allclose(got, expected, atol=1e-5), (i, got, expected)
        logits = model(torch.tensor([row]))[0][0]
        h = torch.distributions.Categorical(logits=logits[start - 1:len(row) - 1]).entropy()
        assert torch.allclose(ent[i][resp[i].bool()], h, atol=1e-5)
    assert (logp[~resp.bool()] == 0).all() and (ent[~resp.bool()] == 0).all()
    # the gradient of the padded batch equals the gradient of the rows run one by one
    model.zero_grad()
    sequence_logprobs(model, ids, resp, att).sum().backward()
    batched = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    sum(torch.stack(direct_response_logp(model, r, s)).sum() for r, s in zip(ROWS, STARTS)).backward()
    for n, p in model.named_parameters():
        assert close_grads(batched[n], p.grad), n


def test_response_mask_errors_name_the_problem():
    model = tiny()
    ids, att, resp = padded_batch(ROWS, STARTS, "left")
    with pytest.raises(ValueError, match="marks padding"):
        response_logprobs(model, ids, torch.ones_like(resp), att)
    bad = resp.clone()
    bad[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] have an empty mask"):
        response_logprobs(model, ids, bad, att)
    first = resp.clone()
    first[0, att[0].argmax()] = 1
    with pytest.raises(ValueError, match="first real token"):
        response_logprobs(model, ids, first, att)
    holes = att.clone()
    holes[2, 3] = 0
    with pytest.raises(ValueError, match="padding between real tokens"):
        response_logprobs(model, ids, resp * holes, holes)


# -- masked reductions and aggregation ------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [-1.0, 5.0, 0.5, 2.0]])
M = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1]])


def test_masked_reductions_match_python_loops():
    rows = [[x for x, m in zip(xr, mr) if m] for xr, mr in zip(X.tolist(), M.tolist())]
    assert masked_sum(X, M, dim=-1).tolist() == [sum(r) for r in rows]
    assert torch.allclose(masked_mean(X, M, dim=-1), torch.tensor([statistics.mean(r) for r in rows]))
    flat = [x for r in rows for x in r]
    assert math.isclose(float(masked_mean(X, M)), statistics.mean(flat), rel_tol=1e-6)
    assert math.isclose(float(masked_normalize(X, M, 16)), sum(flat) / 16, rel_tol=1e-6)
    seq = statistics.mean(statistics.mean(r) for r in rows)
    assert math.isclose(float(aggregate(X, M, "sequence_mean")), seq, rel_tol=1e-6)
    assert math.isclose(float(aggregate(X, M, "token_mean")), statistics.mean(flat), rel_tol=1e-6)
    assert math.isclose(float(aggregate(X, M, "constant", max_tokens=8)), sum(flat) / (3 * 8), rel_tol=1e-6)


def test_an_empty_row_is_refused_not_zero_or_nan():
    empty = M.clone()
    empty[2] = 0
    for fn in (lambda: masked_mean(X, empty, dim=-1), lambda: masked_mean(X, empty), lambda: masked_sum(X, empty),
               lambda: masked_normalize(X, empty, 4.0), lambda: aggregate(X, empty, "constant", max_tokens=4)):
        with pytest.raises(ValueError, match=r"rows \[2\] have an empty mask"):
            fn()
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(X, M, "mean")
    with pytest.raises(ValueError, match="needs max_tokens"):
        aggregate(X, M, "constant")


# -- advantages ---------------------------------------------------------------------------------------------

def test_group_advantages_use_the_unbiased_std_of_each_group():
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, -1.0, 2.0, 0.0]
    out = group_advantages(rewards, group_size=4, eps=1e-4)
    for g in range(3):
        grp = rewards[4 * g:4 * g + 4]
        mu, sd = statistics.mean(grp), statistics.stdev(grp)  # stdev: sample std, divides by n - 1
        for i in range(4):
            assert math.isclose(float(out.advantages[4 * g + i]), (grp[i] - mu) / (sd + 1e-4), rel_tol=1e-5,
                                abs_tol=1e-7)
        assert math.isclose(float(out.group_std[g]), sd, rel_tol=1e-6)
    assert out.rewards.tolist() == rewards
    stats = out.stats()
    assert stats["reward_max"] == 3.0 and math.isclose(stats["reward_mean"], statistics.mean(rewards), rel_tol=1e-6)
    assert math.isclose(stats["groups_without_signal"], 1 / 3, rel_tol=1e-6)
    dr = group_advantages(torch.tensor(rewards).view(3, 4), group_size=4, scale=False)
    assert dr.advantages.shape == (3, 4)
    assert torch.allclose(dr.advantages.flatten(), torch.tensor(rewards) - out.group_mean.repeat_interleave(4))
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards[:5], 4)
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(rewards, 1)
    with pytest.raises(ValueError, match="NaN"):
        group_advantages([1.0, float("nan")], 2)


# -- policy-gradient losses ----------------------------------------------------------------------------------

def test_reinforce_with_and_without_baseline_is_the_exact_policy_gradient():
    """Averaged over every outcome y with weight p(y), grad of the REINFORCE loss = -grad E_p[R]: the
    estimator is unbiased, with or without a (constant) baseline."""
    torch.manual_seed(0)
    theta = torch.randn(6, requires_grad=True)
    R = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5, 3.0])
    true_grad, = torch.autograd.grad(-(torch.softmax(theta, 0) * R).sum(), theta)
    for baseline in (None, 0.7, R.mean()):
        logp = torch.log_softmax(theta, 0)
        per = reinforce_loss(logp[:, None], R, baseline)[:, 0]  # each outcome as a one-token "response"
        g, = torch.autograd.grad((logp.exp().detach() * per).sum(), theta)
        assert torch.allclose(g, true_grad, atol=1e-6), baseline
    logp = torch.log_softmax(theta, 0)[:, None]
    b = torch.zeros(6, requires_grad=True)
    reinforce_loss(logp, R, b).sum().backward()
    assert b.grad is None  # the baseline is a constant


def test_clipped_surrogate_matches_its_formula_and_gradient():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]))
    probs = torch.tensor([[0.3, 0.3, 0.55, 0.55, 0.7, 0.7]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]])
    logp = torch.log(probs).requires_grad_(True)
    loss, clipped = clipped_surrogate_loss(logp, old, adv, eps_low=0.2, eps_high=0.28)
    for t in range(6):
        rho = probs[0, t].item() / 0.5
        a = adv[0, t].item()
        expected = -min(rho * a, min(max(rho, 0.8), 1.28) * a)
        assert math.isclose(loss[0, t].item(), expected, rel_tol=1e-5)
    # rho = 0.6: clipped below with A < 0; rho = 1.4: clipped above with A > 0
    assert clipped.tolist() == [[False, True, False, False, True, False]]
    grad, = torch.autograd.grad(loss.sum(), logp)
    rho = probs / 0.5
    assert (grad[clipped] == 0).all()
    assert torch.allclose(grad[~clipped], (-rho * adv)[~clipped], atol=1e-6)  # d(-rho A)/dlogp = -rho A
    assert math.isclose(clip_fraction(clipped, torch.ones_like(adv)), 2 / 6, rel_tol=1e-6)


def test_k3_kl_estimator_averages_to_the_exact_kl_and_is_nonnegative():
    torch.manual_seed(0)
    pi, ref = torch.randn(3, 9).log_softmax(-1), torch.randn(3, 9).log_softmax(-1)
    k3 = reference_kl(pi, ref)
    assert (k3 >= 0).all()
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=pi),
                                                 torch.distributions.Categorical(logits=ref))
    assert torch.allclose((pi.exp() * k3).sum(-1), expected, atol=1e-6)
    assert torch.allclose(reference_kl(pi, pi), torch.zeros_like(pi))


def test_grpo_loss_is_the_aggregated_surrogate_plus_beta_kl():
    torch.manual_seed(0)
    logp = (torch.randn(4, 5) * 0.3 - 1).requires_grad_(True)
    old, ref = logp.detach() + 0.2 * torch.randn(4, 5), logp.detach() + 0.3 * torch.randn(4, 5)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 1, 1, 1, 1]])
    adv = group_advantages([1.0, 0.0, 0.0, 1.0], group_size=2).advantages
    out = grpo_loss(logp, old, adv, mask, ref, beta=0.04, eps_low=0.2, eps_high=0.28)
    total = 0.0
    for i in range(4):  # the GRPO paper's eq. 3, token by token
        terms = []
        for t in range(5):
            if mask[i, t]:
                rho = math.exp(logp[i, t].item() - old[i, t].item())
                a = adv[i].item()
                d = ref[i, t].item() - logp[i, t].item()
                terms.append(-min(rho * a, min(max(rho, 0.8), 1.28) * a) + 0.04 * (math.exp(d) - d - 1))
        total += sum(terms) / len(terms)
    assert math.isclose(out.loss.item(), total / 4, rel_tol=1e-5)
    assert out.kl > 0 and 0 <= out.clip_fraction <= 1
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        grpo_loss(logp, old, adv, mask, None, beta=0.1)


# -- DPO / IPO with two models -------------------------------------------------------------------------------

@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_direct_computation_with_policy_and_reference_models(loss_type, one_thread):
    policy, reference = tiny(seed=1), tiny(seed=2)
    prompts = [[1, 5, 9], [3, 4], [8, 30, 31, 32]]
    chosen = [[13, 2, 40], [20, 21, 22, 23, 24], [33]]
    rejected = [[14, 15], [25], [34, 35, 36, 50, 51]]
    beta = 0.3
    rows = [p + c for p, c in zip(prompts, chosen)] + [p + r for p, r in zip(prompts, rejected)]
    starts = [len(p) for p in prompts] * 2
    ids, att, resp = padded_batch(rows, starts, "right")
    logps = sequence_logprobs(policy, ids, resp, att)
    with torch.no_grad():
        ref = sequence_logprobs(reference, ids, resp, att)
    out = dpo_loss(logps[:3], logps[3:], ref[:3], ref[3:], beta=beta, loss_type=loss_type)

    direct_terms, margins, wins = [], [], 0
    for i in range(3):
        def seq(model, row, start):
            return sum(direct_response_logp(model, row, start))
        pw, pl = seq(policy, rows[i], starts[i]), seq(policy, rows[3 + i], starts[i])
        with torch.no_grad():
            rw, rl = seq(reference, rows[i], starts[i]).item(), seq(reference, rows[3 + i], starts[i]).item()
        h = (pw - rw) - (pl - rl)
        if loss_type == "sigmoid":  # -log sigmoid(beta h) = log(1 + exp(-beta h))
            direct_terms.append(torch.log1p(torch.exp(-beta * h)))
        else:
            direct_terms.append((h - 1 / (2 * beta)) ** 2)
        margins.append(beta * (pw.item() - rw) - beta * (pl.item() - rl))
        wins += (pw.item() - rw) > (pl.item() - rl)
    direct = sum(direct_terms) / 3
    assert math.isclose(out.loss.item(), direct.item(), rel_tol=1e-5)
    assert torch.allclose(out.margins, torch.tensor(margins), atol=1e-5)
    assert out.accuracy == wins / 3
    # gradients reach the policy only, and equal the direct computation's
    out.loss.backward()
    batched = {n: p.grad.clone() for n, p in policy.named_parameters()}
    assert all(p.grad is None for p in reference.parameters())
    policy.zero_grad()
    direct.backward()
    for n, p in policy.named_parameters():
        assert close_grads(batched[n], p.grad), n


def test_dpo_checks_its_settings():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(z, z, z, z, beta=0)
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        dpo_loss(z, z, z, z, loss_type="hinge")
