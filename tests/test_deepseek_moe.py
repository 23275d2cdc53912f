"""DeepSeekMoE against independent references: a naive per-token loop (outputs and gradients), the
routers of transformers' DeepseekV3 (sigmoid, group-limited, bias) and DeepseekV2 (softmax), the
sequence-wise balance loss written from DeepSeek-V3's equations, and bias balancing on a training run."""

import pytest
import torch
import torch.nn.functional as F

from gator.config import get_preset
from gator.model import Transformer
from gator.model import moe as moe_mod
from gator.model.moe import MoE, sequence_balance_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def moe_config(**kw):
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, moe_routed_experts=8,
                moe_shared_experts=1, moe_top_k=3, moe_ffn_dim=16, moe_groups=4, moe_top_groups=2,
                moe_routed_scale=2.5, init_std=0.2)
    base.update(kw)
    return get_preset("deepseek-tiny", **base)


def naive_moe(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """One token at a time, one chosen expert at a time, straight from the definition."""
    r = layer.router
    out = []
    for tok in x.reshape(-1, x.shape[-1]):
        logits = r.weight.float() @ tok.float()
        s = logits.sigmoid() if r.scoring == "sigmoid" else logits.softmax(-1)
        choice = s + r.expert_bias
        if r.groups > 1:
            g = choice.view(r.groups, -1)
            gscore = g.topk(2, -1).values.sum(-1) if r.scoring == "sigmoid" else g.amax(-1)
            allowed = torch.zeros(r.groups, dtype=torch.bool)
            allowed[gscore.topk(r.top_groups).indices] = True
            choice = g.masked_fill(~allowed[:, None], float("-inf")).reshape(-1)
        chosen = choice.topk(r.top_k).indices.tolist()
        w = s[chosen]
        if r.norm_top_k:
            w = w / w.sum()
        y = layer.shared(tok) if layer.shared is not None else torch.zeros_like(tok)
        for e, we in zip(chosen, w * r.scale):
            gate, up = (layer.experts.gate_up[e] @ tok).chunk(2)
            y = y + we * (layer.experts.down[e] @ (F.silu(gate) * up))
        out.append(y)
    return torch.stack(out).view_as(x)


@pytest.mark.parametrize("overrides", [
    {},  # V3: sigmoid, normalised, group-limited, scaled
    dict(moe_scoring="softmax", moe_norm_top_k=False, moe_routed_scale=1.0, moe_groups=1, moe_top_groups=1),  # V2
    dict(moe_scoring="softmax", moe_groups=2, moe_top_groups=1, moe_shared_experts=0),
])
@pytest.mark.parametrize("fallback", [False, True])
def test_dispatch_matches_naive_per_token_loop(overrides, fallback, monkeypatch):
    if fallback:  # the one-matmul-per-expert path used where grouped_mm has no kernel
        monkeypatch.setattr(moe_mod, "_GROUPED_MM_FAILED", {("cpu", torch.float32)})
    torch.manual_seed(0)
    layer = MoE(moe_config(**overrides))
    layer.router.expert_bias.normal_(0, 0.3)
    x = torch.randn(3, 7, 32, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    ref = naive_moe(layer, x)
    (ref * g).sum().backward()
    ref_grads = [x.grad] + [p.grad for p in layer.parameters()]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dispatch_gradient_through_a_plain_sum():
    """A .sum() hands grouped_mm's backward a stride-0 gradient; dispatch must cope."""
    layer = MoE(moe_config())
    x = torch.randn(2, 5, 32, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all() and layer.experts.gate_up.grad.abs().sum() > 0


def test_router_matches_transformers_deepseek_v3():
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    torch.manual_seed(1)
    cfg = moe_config(moe_routed_experts=16, moe_top_k=4, moe_groups=4, moe_top_groups=2)
    layer = MoE(cfg)
    layer.router.expert_bias.normal_(0, 0.5)
    hf = DeepseekV3TopkRouter(DeepseekV3Config(hidden_size=32, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                                               topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True))
    hf.weight.data.copy_(layer.router.weight.data)
    hf.e_score_correction_bias.copy_(layer.router.expert_bias)
    x = torch.randn(50, 32)
    _, hf_w, hf_idx = hf(x)
    w, idx, _ = layer.router(x)
    ours = torch.zeros(50, 16).scatter(1, idx, w)
    theirs = torch.zeros(50, 16).scatter(1, hf_idx, hf_w)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("method,groups", [("greedy", 1), ("group_limited_greedy", 4)])
def test_router_matches_transformers_deepseek_v2(method, groups):
    from transformers import DeepseekV2Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter

    torch.manual_seed(2)
    cfg = moe_config(moe_routed_experts=16, moe_top_k=4, moe_groups=groups, moe_top_groups=min(groups, 2),
                     moe_scoring="softmax", moe_norm_top_k=False, moe_routed_scale=1.5)
    layer = MoE(cfg)
    hf = DeepseekV2TopkRouter(DeepseekV2Config(hidden_size=32, n_routed_experts=16, num_experts_per_tok=4,
                                               n_group=groups, topk_group=min(groups, 2), topk_method=method,
                                               routed_scaling_factor=1.5))
    hf.weight.data.copy_(layer.router.weight.data)
    x = torch.randn(50, 32)
    _, hf_w, hf_idx = hf(x)
    w, idx, _ = layer.router(x)
    torch.testing.assert_close(torch.zeros(50, 16).scatter(1, idx, w), torch.zeros(50, 16).scatter(1, hf_idx, hf_w))


def test_sequence_balance_loss_follows_deepseek_v3_equations():
    torch.manual_seed(3)
    B, T, E, k = 2, 6, 8, 2
    scores = torch.rand(B, T, E)
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(B * T)]).view(B, T, k)
    expected = 0.0
    for b in range(B):  # L = sum_i f_i P_i, f_i = E/(k T) * #tokens choosing i, P_i = mean_t s_it / sum_j s_jt
        for i in range(E):
            f = E / (k * T) * sum(int(i in idx[b, t].tolist()) for t in range(T))
            P = sum(float(scores[b, t, i] / scores[b, t].sum()) for t in range(T)) / T
            expected += f * P / B
    assert sequence_balance_loss(scores, idx, E).item() == pytest.approx(expected, rel=1e-5)
    # perfectly balanced routing (4 tokens x 2 slots over 8 experts, each once) with uniform scores gives 1
    even = torch.arange(8).view(1, 4, 2)
    assert sequence_balance_loss(torch.ones(1, 4, E), even, E).item() == pytest.approx(1.0)


def test_balance_loss_joins_the_training_loss_and_reaches_the_router():
    torch.manual_seed(4)
    model = Transformer(moe_config(moe_balance_loss=0.5, mtp_depth=0))
    ids = torch.randint(0, 64, (2, 12))
    _, loss = model(ids, ids)
    parts = model.last_losses
    assert set(parts) == {"lm", "moe_balance"}
    assert loss.item() == pytest.approx(float(parts["lm"] + parts["moe_balance"]), rel=1e-6)
    assert float(parts["moe_balance"]) > 0.4  # alpha * (about 1 when roughly balanced)
    loss.backward()
    assert model.blocks[1].mlp.router.weight.grad.abs().sum() > 0
    model.eval()
    _, eval_loss = model(ids, ids)  # eval: the plain LM cross-entropy
    assert eval_loss.item() == pytest.approx(float(parts["lm"]), rel=1e-5)


def test_bias_update_moves_each_expert_toward_the_mean_load():
    layer = MoE(moe_config(moe_bias_update=0.01))
    layer._record(torch.tensor([10, 0, 5, 5, 5, 5, 5, 5]))  # mean 5
    layer.update_bias()
    torch.testing.assert_close(layer.router.expert_bias, torch.tensor([-0.01, 0.01, 0, 0, 0, 0, 0, 0]))
    layer.update_bias()  # nothing routed since the last update: no change
    torch.testing.assert_close(layer.router.expert_bias, torch.tensor([-0.01, 0.01, 0, 0, 0, 0, 0, 0]))


def _skewed_training_run(gamma: float, steps: int = 40) -> float:
    """Train from a router that sends every token to experts 0 and 1; the max/mean load of the last steps."""
    torch.manual_seed(5)
    cfg = moe_config(moe_bias_update=gamma, moe_groups=1, moe_top_groups=1, moe_top_k=2, moe_balance_loss=0.0,
                     mtp_depth=0, init_std=0.02)
    model = Transformer(cfg)
    with torch.no_grad():
        direction = torch.randn(32)
        model.tok_emb.weight += direction  # every token shares this component...
        model.blocks[1].mlp.router.weight[:2] += 0.5 * direction  # ...which experts 0 and 1 prefer
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, 64, (8, 33))
    for step in range(steps):
        if step == steps - 10:
            model.moe_stats(reset=True)
        _, loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.after_optimizer_step()
    return model.moe_stats()["max_over_mean"]


def test_bias_balancing_lowers_the_max_over_mean_load():
    without = _skewed_training_run(gamma=0.0)
    with_bias = _skewed_training_run(gamma=0.02)
    assert without > 3.0  # experts 0 and 1 take (nearly) everything: max/mean near 8/2 = 4
    assert with_bias < 0.6 * without


def test_first_layers_dense_and_expert_load_statistics():
    model = Transformer(get_preset("deepseek-tiny"))
    assert not isinstance(model.blocks[0].mlp, MoE) and isinstance(model.blocks[1].mlp, MoE)
    model.eval()
    model(torch.randint(0, 512, (2, 8)))
    assert model.moe_stats()["layers"] == {}  # eval forwards are not counted
    model.train()
    model(torch.randint(0, 512, (2, 8)))
    stats = model.moe_stats()
    (name, layer), = [(k, v) for k, v in stats["layers"].items() if k.startswith("blocks")]
    assert name == "blocks.1.mlp" and sum(layer["load"]) == pytest.approx(1.0)
    assert layer["max_over_mean"] >= 1.0
    # a model without MoE: the hook is a no-op and there are no statistics
    plain = Transformer(get_preset("tiny-gatorgpt"))
    plain.after_optimizer_step()
    assert plain.moe_stats() == {"layers": {}, "max_over_mean": None}


def test_expert_load_is_logged_per_step_and_plotted(tmp_path):
    from gator.viz import plot_expert_load

    torch.manual_seed(6)
    model = Transformer(get_preset("deepseek-tiny"))
    history = []
    for step in range(3):
        _, loss = model(torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16)))
        loss.backward()
        model.after_optimizer_step()
        history.append({"step": step, "moe": model.moe_stats(reset=True)})
    assert all(set(h["moe"]["layers"]) == {"blocks.1.mlp", "mtp.0.block.mlp"} for h in history)
    layer = model.blocks[1].mlp  # reset=True: the counts start again, so an entry covers its own steps
    assert layer.load().sum() == 0
    model(torch.randint(0, 512, (2, 16)))
    assert layer.load().sum() == 2 * 16 * 2  # tokens x top-2 slots
    out = plot_expert_load(history, tmp_path / "load.png")
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no expert-load statistics"):
        plot_expert_load([{"step": 0, "moe": Transformer(get_preset("tiny-gatorgpt")).moe_stats()}], tmp_path / "x.png")
