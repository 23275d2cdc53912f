"""LoRA (gator.model.lora) against direct computation: the layer is W x + s B A x with s = alpha / r (or
alpha / sqrt(r)), fused Linear layers behave like separate per-projection adapters, only adapters train,
and a merged model equals the adapted one. PEFT compatibility is in test_peft.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gator.config import ModelConfig
from gator.model import Transformer
from gator.model.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    count_parameters,
    default_targets,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    remove_lora,
    trainable_summary,
    unmerge_lora,
)

LLAMA = dict(vocab_size=97, context_length=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48,
             norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, tie_embeddings=False)
GPT2 = dict(vocab_size=97, context_length=32, d_model=32, n_layers=2, n_heads=4)


def randomize_b(model, std=0.2):
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, std)


@pytest.mark.parametrize("rslora", [False, True])
def test_layer_is_w_x_plus_scaled_b_a_x(rslora):
    torch.manual_seed(0)
    base = nn.Linear(12, 20)
    layer = LoRALinear(base, [("o", 20)], ["o"], LoRAConfig(r=4, alpha=6, targets=("o",), rslora=rslora))
    x = torch.randn(3, 5, 12)
    assert torch.equal(layer(x), F.linear(x, base.weight, base.bias))  # B = 0: exactly the base layer
    with torch.no_grad():
        layer.lora_B["o"].normal_()
    A, B = layer.lora_A["o"], layer.lora_B["o"]
    s = 6 / math.sqrt(4) if rslora else 6 / 4
    expected = x @ base.weight.T + base.bias + s * (x @ A.T) @ B.T
    assert (layer(x) - expected).abs().max() < 1e-5
    # the same Parameters as the base layer, so a model keeps its state-dict keys
    assert layer.weight is base.weight and layer.bias is base.bias


def test_a_is_kaiming_uniform_and_b_zero():
    """PEFT's init: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(400, 8), [("o", 8)], ["o"], LoRAConfig(r=64, targets=("o",)))
    A = layer.lora_A["o"]
    bound = 1 / math.sqrt(400)
    assert A.abs().max() <= bound and A.abs().max() > 0.99 * bound
    assert abs(A.std().item() - bound / math.sqrt(3)) < 0.02 * bound  # the std of U(-b, b)
    assert torch.count_nonzero(layer.lora_B["o"]) == 0


@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v"), ("k",)])
def test_fused_slices_equal_separate_adapters(targets):
    """One fused QKV matrix with adapters on some slices equals separate q/k/v Linear layers where those
    slices have their own adapters (what PEFT builds on q_proj/k_proj/v_proj), output and gradients. The
    layer computes all slices in two products (stacked A, block-diagonal B); the reference does not."""
    torch.manual_seed(0)
    qd, kd = 16, 8
    base = nn.Linear(16, qd + 2 * kd, bias=True)
    config = LoRAConfig(r=2, alpha=4, targets=targets)
    layer = LoRALinear(base, [("q", qd), ("k", kd), ("v", kd)], list(targets), config)
    with torch.no_grad():
        for B in layer.lora_B.values():
            B.normal_()
    assert set(layer.lora_A) == set(targets) and layer.lora_B[targets[-1]].shape == (kd, 2)
    x = torch.randn(2, 7, 16, requires_grad=True)
    out = layer(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    got = {n: p.grad.clone() for n, p in layer.named_parameters()}  # the base trains here too: all gradients
    got_x = x.grad.clone()
    layer.zero_grad()
    x.grad = None
    parts = []
    for name, W, b in zip("qkv", base.weight.split([qd, kd, kd]), base.bias.split([qd, kd, kd])):
        y = F.linear(x, W, b)
        if name in targets:
            y = y + 2.0 * F.linear(F.linear(x, layer.lora_A[name]), layer.lora_B[name])
        parts.append(y)
    expected = torch.cat(parts, -1)
    (expected * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    assert (out - expected).abs().max() < 1e-5 and (got_x - x.grad).abs().max() < 1e-5
    assert set(got) == {n for n, _ in layer.named_parameters()} and {"weight", "bias"} <= set(got)
    for n, p in layer.named_parameters():
        assert (got[n] - p.grad).abs().max() < 1e-5, n


def test_with_dropout_each_slice_draws_its_own_mask_like_separate_layers():
    torch.manual_seed(0)
    base = nn.Linear(16, 32)
    layer = LoRALinear(base, [("q", 16), ("k", 8), ("v", 8)], ["q", "k", "v"],
                       LoRAConfig(r=2, dropout=0.5, targets=("q", "k", "v"))).train()
    with torch.no_grad():
        for B in layer.lora_B.values():
            B.normal_()
    x = torch.randn(3, 16)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)  # the same masks, drawn in the order of the rows, one per slice
    s = layer.scaling
    parts = [F.linear(x, W, b) + s * F.linear(F.linear(F.dropout(x, 0.5), layer.lora_A[n]), layer.lora_B[n])
             for n, W, b in zip("qkv", base.weight.split([16, 8, 8]), base.bias.split([16, 8, 8]))]
    assert (out - torch.cat(parts, -1)).abs().max() < 1e-5


@pytest.mark.parametrize("autocast", [False, True])
def test_a_bf16_base_or_autocast_keeps_fp32_adapters(autocast):
    """A bf16 base layer (no autocast): adapters compute in fp32 and the output keeps the base dtype. Under
    bf16 autocast: the adapters' products run in bf16 like every other Linear, with fp32 gradients."""
    torch.manual_seed(0)
    base = nn.Linear(16, 24).to(torch.float32 if autocast else torch.bfloat16)
    layer = LoRALinear(base, [("gate", 12), ("up", 12)], ["gate", "up"], LoRAConfig(r=2, targets=("gate", "up")))
    with torch.no_grad():
        for B in layer.lora_B.values():
            B.normal_()
    x = torch.randn(5, 16, dtype=base.weight.dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
    assert out.dtype == torch.bfloat16 and layer.lora_A["gate"].dtype == torch.float32
    W, b = base.weight.float(), base.bias.float()
    s = layer.scaling
    expected = torch.cat([F.linear(x.float(), Wi, bi) + s * F.linear(F.linear(x.float(), layer.lora_A[n]),
                                                                        layer.lora_B[n])
                          for n, Wi, bi in zip(("gate", "up"), W.split(12), b.split(12))], -1)
    assert (out.float() - expected).abs().max() < 0.03 * expected.abs().max()
    out.float().sum().backward()
    assert layer.lora_A["up"].grad.dtype == torch.float32 and layer.lora_B["up"].grad.abs().sum() > 0


def test_dropout_touches_only_the_adapter_input():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    layer = LoRALinear(base, [("o", 8)], ["o"], LoRAConfig(r=2, dropout=0.5, targets=("o",))).train()
    x = torch.randn(4, 8)
    assert torch.equal(layer(x), base(x))  # B = 0: dropout on the adapter path changes nothing
    with torch.no_grad():
        layer.lora_B["o"].normal_()
    assert not torch.allclose(layer(x), layer(x))  # training: random masks on the adapter input
    layer.eval()
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("shape,targets", [(LLAMA, ("q", "k", "v", "o", "gate", "up", "down")),
                                           (LLAMA, ("v", "up")), (GPT2, ("qkv", "o", "up", "down"))])
def test_only_adapters_train_and_the_count_is_r_times_in_plus_out(shape, targets):
    torch.manual_seed(0)
    c = ModelConfig(**shape)
    model = Transformer(c)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, c.vocab_size, (2, 12))
    base_logits = model(ids)[0].detach()
    r = 4
    apply_lora(model, LoRAConfig(r=r, alpha=8, targets=targets))
    assert torch.equal(model(ids)[0], base_logits)  # B = 0: the adapted model starts as the base model
    out_rows = {"q": c.q_dim, "k": c.kv_dim, "v": c.kv_dim, "qkv": c.q_dim + 2 * c.kv_dim, "o": c.d_model,
                "gate": c.ffn_dim, "up": c.ffn_dim, "down": c.d_model}
    in_cols = {"o": c.q_dim, "down": c.ffn_dim}
    expected = c.n_layers * sum(r * (in_cols.get(t, c.d_model) + out_rows[t]) for t in targets)
    base_total = sum(p.numel() for p in {id(p): p for p in Transformer(c).parameters()}.values())
    assert count_parameters(model) == (expected, base_total + expected)
    assert f"{expected:,} of {base_total + expected:,}" in trainable_summary(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # one step: B gets a gradient, A none (B = 0 blocks it), and no base weight moves
    loss = model(ids[:, :-1], ids[:, 1:])[1]
    loss.backward()
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif ".lora_A." in name:
            assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name
        else:
            assert p.grad is None, name
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # base keys unchanged, values too


@pytest.mark.parametrize("shape,targets,rslora", [(LLAMA, ("q", "k", "v", "o", "gate", "up", "down"), False),
                                                  (LLAMA, ("k", "gate"), True), (GPT2, ("qkv", "down"), False)])
def test_merged_model_equals_adapted_model(shape, targets, rslora, tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**shape)).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(r=4, alpha=16, targets=targets, rslora=rslora))
    randomize_b(model)
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        adapted = model(ids)[0]
        merge_lora(model)
        merged = model(ids)[0]
        assert (merged - adapted).abs().max() < 1e-5
        key = "blocks.0.mlp.gate_up.weight" if "gate" in targets else "blocks.0.attn.qkv.weight"
        assert not torch.allclose(model.state_dict()[key], original[key])  # the adapters went into W
        unmerge_lora(model)
        assert all((model.state_dict()[k] - v).abs().max() < 1e-6 for k, v in original.items())
        assert (model(ids)[0] - adapted).abs().max() < 1e-5
    # remove_lora: a plain model again, same keys as before, saved and reloaded like any model
    types = {n: type(m) for n, m in Transformer(ModelConfig(**shape)).named_modules()}
    plain = remove_lora(model, merge=True)
    assert {n: type(m) for n, m in plain.named_modules()} == types
    assert set(plain.state_dict()) == set(original) and getattr(plain, "lora_config", None) is None
    plain.save_pretrained(tmp_path / "merged")
    reloaded = Transformer.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (reloaded(ids)[0] - adapted).abs().max() < 1e-5


def test_adapter_changes_the_output():
    """The merge test above would pass with adapters that do nothing: check they do something."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**LLAMA)).eval()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        base = model(ids)[0]
        apply_lora(model, LoRAConfig(r=4, targets=("q", "down")))
        randomize_b(model)
        assert (model(ids)[0] - base).abs().max() > 1e-2


def test_lora_state_dict_round_trip():
    torch.manual_seed(0)
    a = apply_lora(Transformer(ModelConfig(**LLAMA)), LoRAConfig(r=2, targets=("q", "v")))
    randomize_b(a)
    b = apply_lora(Transformer(ModelConfig(**LLAMA)), LoRAConfig(r=2, targets=("q", "v")))
    state = lora_state_dict(a)
    assert sorted(state) == sorted(f"blocks.{i}.attn.qkv.lora_{m}.{t}" for i in range(2) for m in "AB"
                                   for t in ("q", "v"))
    load_lora_state_dict(b, state)
    assert all(torch.equal(lora_state_dict(b)[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.lora_A.q"):
        load_lora_state_dict(b, {**state, "blocks.0.attn.qkv.lora_A.q": torch.zeros(3, 32)})
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(b, {k: v for k, v in state.items() if "lora_B.v" not in k})


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="unknown LoRA target"):
        LoRAConfig(targets=("q", "w_q"))
    with pytest.raises(ValueError, match="cannot be combined"):
        LoRAConfig(targets=("qkv", "q"))
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(r=0)
    gpt2 = Transformer(ModelConfig(**GPT2))
    with pytest.raises(ValueError, match=r"\['gate'\] match no layer.*qkv, o, up, down"):
        apply_lora(gpt2, LoRAConfig(targets=("q", "gate")))
    assert all(p.requires_grad for p in gpt2.parameters())  # a refused call leaves the model alone
    apply_lora(gpt2, LoRAConfig(targets=default_targets(gpt2.config)))
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(gpt2, LoRAConfig(targets=("o",)))


def test_an_adapted_model_is_not_saved_as_a_plain_one(tmp_path):
    """save_pretrained / export_hf of an adapted model would write the base weights (or merged ones) and drop
    or mix in the adapters: both refuse and say what to do."""
    from gator.interop.hf import export_hf

    model = apply_lora(Transformer(ModelConfig(**LLAMA)), LoRAConfig(r=2, targets=("q",)))
    with pytest.raises(ValueError, match="save_adapter"):
        model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="save_adapter"):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "m").exists() and not (tmp_path / "hf").exists()
