"""DeepSeek and Mixture-of-Depths config fields: errors that name the field, JSON round trip, preset
shapes against transformers' parameter counts, and presets that train with a plain training step."""

import pytest
import torch

from gator.config import ModelConfig, get_preset
from gator.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("overrides,field", [
    (dict(moe_top_k=9), "moe_top_k"),  # more than the 8 routed experts
    (dict(moe_top_k=0), "moe_top_k"),
    (dict(moe_groups=3), "moe_groups"),  # does not divide 8 experts
    (dict(moe_top_groups=5), "moe_top_groups"),
    (dict(moe_top_k=5, moe_groups=4, moe_top_groups=2), "moe_top_k"),  # 2 groups of 2 hold only 4
    (dict(moe_ffn_dim=0), "moe_ffn_dim"),
    (dict(moe_scoring="relu"), "moe_scoring"),
    (dict(moe_dense_layers=3), "moe_dense_layers"),
    (dict(moe_bias_update=-0.1), "moe_bias_update"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),  # RoPE rotates pairs
    (dict(kv_lora_rank=0), "kv_lora_rank"),
    (dict(v_head_dim=0), "v_head_dim"),
    (dict(q_lora_rank=0), "q_lora_rank"),
    (dict(head_dim=32), "head_dim"),  # MLA's head dim is qk_nope + qk_rope = 24
    (dict(positions="learned"), "positions"),
    (dict(mtp_depth=-1), "mtp_depth"),
    (dict(mod_capacity=0.0), "mod_capacity"),
    (dict(mod_capacity=1.01), "mod_capacity"),
    (dict(rope_scaling={"type": "yarn", "factor": 4}), "rope_scaling"),  # no original_context_length
    (dict(rope_scaling={"type": "ntk", "factor": 4, "original_context_length": 64}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": 4, "original_context_length": 64, "truncate": "no"}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": 4, "original_context_length": 64, "attention_factor": 0}),
     "rope_scaling"),
    (dict(mla_norm_eps=0.0), "mla_norm_eps"),
])
def test_inconsistent_dims_fail_at_config_time_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}:"):
        get_preset("deepseek-tiny", **overrides)


def test_gqa_rope_scaling_and_odd_head_dim_are_rejected():
    with pytest.raises(ValueError, match=r"ModelConfig\.rope_scaling:"):
        get_preset("tiny-gatorgpt", rope_scaling={"type": "yarn", "factor": 2, "original_context_length": 64})
    with pytest.raises(ValueError, match=r"ModelConfig\.head_dim:"):
        get_preset("tiny-gatorgpt", head_dim=15)


def test_json_round_trip(tmp_path):
    c = get_preset("deepseek-v2-lite", mod_layers=[2, 5])
    c.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == c


def test_deepseek_v2_lite_matches_transformers_parameter_count():
    """The published shape: 15.7B parameters, counted by transformers' DeepseekV2 on the meta device."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    c = get_preset("deepseek-v2-lite")
    hf_cfg = DeepseekV2Config(vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                              num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, n_shared_experts=2,
                              n_routed_experts=64, num_experts_per_tok=6, first_k_dense_replace=1, kv_lora_rank=512,
                              q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                              tie_word_embeddings=False)
    with torch.device("meta"):
        hf = DeepseekV2ForCausalLM(hf_cfg)
        ours = Transformer(c)
    assert ours.num_params() == hf.num_parameters() == 15_706_484_224


def test_deepseek_tiny_matches_transformers_parameter_count():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from gator.interop.hf_deepseek import config_to_hf

    c = get_preset("deepseek-tiny")
    cfg = {k: v for k, v in config_to_hf(c).items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        hf = DeepseekV3ForCausalLM(DeepseekV3Config(**cfg))
        ours = Transformer(c)
    mtp = sum(p.numel() for p in ours.mtp.parameters())  # transformers' causal LM has no MTP module
    assert ours.num_params() - mtp == hf.num_parameters()


@pytest.mark.parametrize("name,overrides,steps", [
    ("deepseek-tiny", {}, 12),
    ("deepseek-tiny", dict(mod_layers=[1], mtp_depth=2, moe_balance_loss=0.01), 12),  # everything at once
    ("deepseek-v2-lite-mini", {}, 4),
])
def test_presets_train_with_a_plain_training_step(name, overrides, steps):
    """What a training loop does: logits, loss = model(ids, targets); backward; step; the MoE hook."""
    torch.manual_seed(0)
    model = Transformer(get_preset(name, **overrides))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, model.config.vocab_size, (4, 33))
    losses = []
    bias_before = [m.router.expert_bias.clone() for m in model.modules() if hasattr(m, "router")
                   and hasattr(m.router, "expert_bias")]
    for _ in range(steps):
        _, loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.after_optimizer_step()
        losses.append(model.last_losses["lm"].item())
    assert losses[-1] < losses[0] - 0.5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    bias_after = [m.router.expert_bias for m in model.modules() if hasattr(m, "router")
                  and hasattr(m.router, "expert_bias")]
    if model.config.moe_bias_update > 0:  # the hook moved the balancing biases
        assert any(not torch.equal(a, b) for a, b in zip(bias_before, bias_after))


def test_save_and_load_keep_every_deepseek_and_mod_weight(tmp_path):
    yarn = dict(type="yarn", factor=4, original_context_length=32, mscale=0.707, mscale_all_dim=0.707)
    torch.manual_seed(1)
    model = Transformer(get_preset("deepseek-tiny", mod_layers=[0], rope_scaling=yarn)).eval()
    model.blocks[1].mlp.router.expert_bias.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    back = Transformer.from_pretrained(tmp_path).eval()
    assert back.config == model.config
    torch.testing.assert_close(back.blocks[1].mlp.router.expert_bias, model.blocks[1].mlp.router.expert_bias)
    torch.testing.assert_close(back.rope.cos, model.rope.cos)  # YaRN tables rebuilt after loading
    ids = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(ids)[0], model(ids)[0])
