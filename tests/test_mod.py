"""Mixture-of-Depths against a per-row reference that runs a plain block on the chosen tokens only;
capacity, the router's gradient (against finite differences), the predictor's stop-gradient, cached
decoding against full recompute, and the causal rule learning the top-k choice."""

import math

import pytest
import torch

from gator.config import get_preset
from gator.generate import generate
from gator.model import KVCache, Transformer
from gator.model.depth import MixtureOfDepths

pytestmark = pytest.mark.usefixtures("one_thread")


def mod_model(preset="tiny-gatorgpt", **kw):
    base = dict(n_layers=3, mod_layers=[1], mod_capacity=0.25)
    base.update(kw)
    return Transformer(get_preset(preset, **base))


def reference(layer: MixtureOfDepths, x: torch.Tensor, rope, chosen: list[torch.Tensor], window=None):
    """Per row: the wrapped block sees ONLY the chosen tokens (at their own positions); their update is
    scaled by sigmoid(router); every other token is passed through unchanged."""
    cos, sin = rope
    out = x.clone()
    for b, idx in enumerate(chosen):
        xs = x[b, idx][None]  # (1, k, d)
        mask = None
        if window is not None:
            qp, kp = idx[:, None], idx[None, :]
            mask = ((kp <= qp) & (kp > qp - window))[None, None]
        y = layer.block(xs, (cos[idx], sin[idx]), None, mask)
        w = torch.sigmoid(layer.router(xs)).squeeze(0)  # (k, 1)
        out[b, idx] = xs[0] + w * (y[0] - xs[0])
    return out


@pytest.mark.parametrize("preset,kw", [("tiny-gatorgpt", {}), ("tiny-gatorgpt", dict(sliding_window=4)),
                                       ("deepseek-tiny", dict(mtp_depth=0)),
                                       ("tiny-gatorgpt", dict(mod_decode="predictor"))])
def test_training_forward_matches_reference_and_capacity(preset, kw):
    torch.manual_seed(0)
    model = mod_model(preset, **kw)
    layer = model.blocks[1]
    x = torch.randn(3, 13, model.config.d_model)
    rope = model.rope_at(torch.arange(13))
    out = layer(x, rope, None, None)  # training mode: top-k routing
    k = math.ceil(0.25 * 13)
    r = layer.router(x).squeeze(-1)
    chosen = [row.topk(k).indices.sort().values for row in r]
    torch.testing.assert_close(out, reference(layer, x, rope, chosen, model.config.sliding_window))
    changed = (out != x).any(-1)  # (B, T): exactly the capacity per row
    assert changed.sum(-1).tolist() == [k] * 3
    assert all(set(torch.nonzero(changed[b]).flatten().tolist()) == set(chosen[b].tolist()) for b in range(3))


@pytest.mark.parametrize("capacity,T", [(0.125, 16), (0.5, 7), (1.0, 5)])
def test_capacity_fraction(capacity, T):
    model = mod_model(mod_capacity=capacity)
    x = torch.randn(2, T, model.config.d_model)
    out = model.blocks[1](x, model.rope_at(torch.arange(T)), None, None)
    assert (out != x).any(-1).sum(-1).tolist() == [max(1, math.ceil(capacity * T))] * 2


def test_router_learns_from_the_lm_loss_alone():
    """The update is scaled by sigmoid(r), so the LM loss has a gradient on the router; check it against
    a finite difference (a shift of the router bias moves every r alike, so the top-k choice stays)."""
    torch.manual_seed(1)
    model = mod_model(mod_aux_loss=0.0).double()
    ids = torch.randint(0, 512, (2, 16))

    def lm_loss():  # in float64 throughout (the model's own loss is computed in fp32)
        return torch.nn.functional.cross_entropy(model(ids[:, :-1])[0].flatten(0, 1), ids[:, 1:].flatten())

    lm_loss().backward()
    router = model.blocks[1].router
    assert router.weight.grad.abs().sum() > 0
    eps = 1e-6
    with torch.no_grad():
        router.bias += eps
        up = lm_loss().item()
        router.bias -= 2 * eps
        down = lm_loss().item()
    assert router.bias.grad.item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9)


def test_predictor_loss_trains_only_the_predictor():
    torch.manual_seed(2)
    model = mod_model(mod_decode="predictor", mod_aux_loss=1.0)
    ids = torch.randint(0, 512, (2, 16))
    model(ids)  # a training forward without targets leaves the auxiliary losses on the modules
    layer = model.blocks[1]
    layer.aux_loss.backward()  # the predictor's BCE alone
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.predictor.parameters())
    others = [p for n, p in model.named_parameters() if "predictor" not in n]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in others)


@pytest.mark.parametrize("preset,kw", [("tiny-gatorgpt", {}), ("tiny-gatorgpt", dict(mod_decode="predictor")),
                                       ("deepseek-tiny", dict(mtp_depth=0, mod_layers=[0, 1]))])
def test_cached_decoding_equals_full_recompute(preset, kw):
    torch.manual_seed(3)
    model = mod_model(preset, **kw).eval()
    for m in model.modules():
        if isinstance(m, MixtureOfDepths):
            torch.nn.init.normal_(m.router.weight, std=1.0)  # a real mix of processed and skipped tokens
            if m.predictor is not None:
                torch.nn.init.normal_(m.predictor[0].weight, std=1.0)
    ids = torch.randint(0, 512, (2, 14))
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache.for_model(model, 2, max_len=14)
        steps = [model(ids[:, :5], cache=cache)[0]] + [model(ids[:, t:t + 1], cache=cache)[0] for t in range(5, 14)]
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5
    skipped = ~cache.key_mask(model.config.mod_layers[0])[:, :14]
    assert 0 < skipped.float().mean() < 1  # some tokens skipped the layer, some did not
    # a left-padded batch generates what each prompt does alone
    prompts = [[3, 4, 5, 6, 7, 8], [9, 10]]
    together = generate(model, prompts, max_new_tokens=5, temperature=0)
    assert [c.tokens for c in together] == [generate(model, p, max_new_tokens=5, temperature=0).tokens
                                            for p in prompts]


def test_eval_forward_follows_the_causal_rule():
    """In eval each token decides alone (router > 0) and skipped tokens are not attended to."""
    torch.manual_seed(4)
    model = mod_model().eval()
    layer = model.blocks[1]
    torch.nn.init.normal_(layer.router.weight, std=1.0)
    x = torch.randn(2, 11, model.config.d_model)
    rope = model.rope_at(torch.arange(11))
    with torch.no_grad():
        out = layer(x, rope, None, None)
        chosen = [torch.nonzero(row > 0).flatten() for row in layer.router(x).squeeze(-1)]
        assert all(0 < len(c) < 11 for c in chosen)
        torch.testing.assert_close(out, reference(layer, x, rope, chosen))


def test_causal_rule_learns_the_top_k_choice():
    torch.manual_seed(5)
    model = mod_model(n_layers=4, mod_layers=[1, 3], mod_aux_loss=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, 512, (64, 33))
    first = None
    for _ in range(120):
        batch = data[torch.randint(0, 64, (8,))]
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = first or model.last_losses["lm"].item()
    agreement = model.mod_stats()
    assert set(agreement) == {"blocks.1", "blocks.3"}
    assert min(agreement.values()) > 0.9  # causal rule == top-k on > 90% of tokens
    assert model.last_losses["lm"].item() < first - 1.0  # and the model trains


@pytest.mark.parametrize("kw,field", [(dict(mod_capacity=0.0), "mod_capacity"),
                                      (dict(mod_capacity=1.5), "mod_capacity"),
                                      (dict(mod_layers=[3]), "mod_layers"), (dict(mod_layers=[1, 1]), "mod_layers"),
                                      (dict(mod_decode="oracle"), "mod_decode")])
def test_bad_settings_fail_at_config_time(kw, field):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        get_preset("tiny-gatorgpt", n_layers=3, **kw)


def test_export_refuses_mixture_of_depths(tmp_path):
    from gator.interop.hf import export_hf

    with pytest.raises(ValueError, match="Mixture-of-Depths"):
        export_hf(mod_model(), tmp_path)
