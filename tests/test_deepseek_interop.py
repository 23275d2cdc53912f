"""DeepSeek-V3 interop: import from and export to transformers' DeepseekV3ForCausalLM (tiny random-init
models built offline), fp32 logits parity including MLA, MoE weights, the expert bias, YaRN and the
interleaved RoPE layout; the MTP layers round-trip through files."""

import itertools

import pytest
import torch

from gator.config import get_preset
from gator.interop.hf import export_hf, from_hf, import_hf, to_hf
from gator.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_hf(**kw):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    base = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                num_attention_heads=4, n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=3, n_group=4,
                topk_group=2, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=12, qk_rope_head_dim=8,
                qk_nope_head_dim=8, v_head_dim=12, max_position_embeddings=128, num_mtp_layers=0,
                routed_scaling_factor=2.5, initializer_range=0.1)
    base.update(kw)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**base)).eval()
    with torch.no_grad():  # a nonzero balancing bias, so that it must be carried over to route alike
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0, 0.05)
    return model


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
        "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}


@pytest.mark.parametrize("kw", [
    {},  # DeepSeek-V3 layout: interleaved RoPE, query bottleneck, group-limited routing
    dict(rope_interleave=False, q_lora_rank=None, n_group=1, topk_group=1, norm_topk_prob=False),
    dict(rope_parameters=YARN),  # YaRN frequencies, cos/sin magnitude and DeepSeek's softmax mscale
])
def test_import_matches_transformers(kw):
    hf = tiny_hf(**kw)
    ours = from_hf(hf).eval()
    assert ours.config.attention == "mla" and ours.config.moe_routed_experts == 8
    ids = torch.randint(0, 96, (2, 90))
    with torch.no_grad():
        ref = hf(ids).logits
        logits, _ = ours(ids)
    assert (logits - ref).abs().max() < 1e-4
    assert ref.abs().max() > 1.0  # large enough logits for the comparison to mean something
    bias = hf.model.layers[1].mlp.gate.e_score_correction_bias
    torch.testing.assert_close(ours.blocks[1].mlp.router.expert_bias, bias)


def test_export_loads_in_transformers_and_round_trips(tmp_path):
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(1)
    model = Transformer(get_preset("deepseek-tiny", init_std=0.1)).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "expert_bias"):
                m.expert_bias.normal_(0, 0.05)
    export_hf(model, tmp_path / "hf")
    hf = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        ours, _ = model(ids)
        assert (hf(ids).logits - ours).abs().max() < 1e-4
        assert (to_hf(model)(ids).logits - ours).abs().max() < 1e-4  # the in-memory object too
        # greedy generation agrees token for token
        hf_tokens = hf.generate(ids[:1, :8], max_new_tokens=10, do_sample=False)[0, 8:].tolist()
    from gator.generate import generate
    assert generate(model, ids[0, :8].tolist(), max_new_tokens=10, temperature=0).tokens == hf_tokens
    # the MTP module travels in DeepSeek-V3's checkpoint layout and comes back unchanged
    back = import_hf(tmp_path / "hf", tmp_path / "gator")
    assert back.config.mtp_depth == 1
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    assert Transformer.from_pretrained(tmp_path / "gator").config == back.config


def test_model_objects_without_mtp_import_without_it():
    hf = tiny_hf(num_mtp_layers=1)  # the config announces MTP, but transformers' model has no MTP weights
    assert from_hf(hf).mtp is None


@pytest.mark.parametrize("kw,reason", [
    (dict(moe_scoring="softmax"), "sigmoid"),
    (dict(mod_layers=[1]), "Mixture-of-Depths"),
    (dict(moe_shared_experts=0), "shared experts"),
])
def test_export_errors_name_the_reason(tmp_path, kw, reason):
    with pytest.raises(ValueError, match=reason):
        export_hf(Transformer(get_preset("deepseek-tiny", **kw)), tmp_path)


def test_import_rejects_what_it_cannot_represent():
    from gator.interop.hf import config_from_hf

    cfg = tiny_hf().config.to_dict()
    with pytest.raises(ValueError, match="attention_bias"):
        config_from_hf({**cfg, "attention_bias": True})
    with pytest.raises(ValueError, match="RoPE type 'linear'"):
        config_from_hf({**cfg, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}})


# --- YaRN: every key transformers' rope_parameters allows (issue 10, item 2) ---------------------------

def _yarn_grid():
    """Each YaRN key absent or at values that take each branch of transformers' computation."""
    mscales = [(None, None), (0.707, 0.707), (1.0, 0.5), (1.0, None), (0, 0.707)]
    for factor, original, beta_fast, beta_slow, (m, m_all), attention_factor, truncate in itertools.product(
            [1.0, 40, 0.5], [16, 4096], [None, 8.5], [None, 2], mscales, [None, 1.3], [None, True, False]):
        rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": factor,
                "original_max_position_embeddings": original, "beta_fast": beta_fast, "beta_slow": beta_slow,
                "mscale": m, "mscale_all_dim": m_all,
                "attention_factor": attention_factor, "truncate": truncate}
        yield {k: v for k, v in rope.items() if v is not None}


def test_yarn_tables_equal_transformers_for_every_key_combination():
    """cos/sin tables and the softmax scale from transformers' YaRN (ROPE_INIT_FUNCTIONS["yarn"] and
    DeepseekV3's yarn_apply_mscale) for every combination of the keys; export writes the same keys back.
    A factor below 1 (which shrinks the context) is refused with a message naming it."""
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    from gator.interop.hf import config_from_hf, config_to_hf
    from gator.model.layers import make_rope
    from gator.model.mla import mla_softmax_scale

    small = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=1,
                 num_attention_heads=2, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                 kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=16, qk_nope_head_dim=8, v_head_dim=8,
                 max_position_embeddings=256)
    positions = torch.arange(256, dtype=torch.float32)
    checked = refused = 0
    for rope in _yarn_grid():
        hf = DeepseekV3Config(**small, rope_parameters=dict(rope))
        if rope["factor"] < 1:
            with pytest.raises(ValueError, match="factor"):
                config_from_hf(hf.to_dict())
            refused += 1
            continue
        c = config_from_hf(hf.to_dict())
        inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS["yarn"](hf)
        angles = torch.outer(positions, inv_freq).repeat(1, 2)  # what DeepseekV3RotaryEmbedding.forward does
        ours = make_rope(c)
        assert (ours.cos - angles.cos() * attention_scaling).abs().max() < 1e-5, rope
        assert (ours.sin - angles.sin() * attention_scaling).abs().max() < 1e-5, rope
        assert mla_softmax_scale(c) == pytest.approx(yarn_apply_mscale(hf.rope_parameters, 24 ** -0.5), rel=1e-12)
        assert config_to_hf(c)["rope_parameters"] == rope  # the keys go back as they came
        checked += 1
    assert checked == 480 and refused == 240


@pytest.mark.parametrize("extra", [dict(attention_factor=1.3), dict(truncate=False),
                                   dict(attention_factor=0.8, truncate=False, beta_fast=8, beta_slow=2)])
def test_yarn_attention_factor_and_truncate_match_transformers_logits(tmp_path, extra):
    from transformers import DeepseekV3ForCausalLM

    rope = {**YARN, **extra}
    hf = tiny_hf(rope_parameters=dict(rope))
    ours = from_hf(hf).eval()
    ids = torch.randint(0, 96, (2, 90))  # past the original context of 32
    with torch.no_grad():
        ref = hf(ids).logits
        assert (ours(ids)[0] - ref).abs().max() < 1e-4
    export_hf(ours, tmp_path / "hf")  # and back: the exported config computes the same model
    back = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert {k: back.config.rope_parameters[k] for k in rope} == rope
    with torch.no_grad():
        assert (back(ids).logits - ref).abs().max() < 1e-4


def test_yarn_import_refuses_what_it_cannot_reproduce():
    from gator.interop.hf import config_from_hf

    cfg = tiny_hf().config.to_dict()
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        config_from_hf({**cfg, "rope_parameters": {**YARN, "partial_rotary_factor": 0.5}})
    with pytest.raises(ValueError, match="'factor'"):
        config_from_hf({**cfg, "rope_parameters": {k: v for k, v in YARN.items() if k != "factor"}})


def test_yarn_original_context_is_resolved_as_transformers_does():
    """A top-level original_max_position_embeddings wins over the one in rope_parameters (transformers'
    standardize_rope_params); a legacy rope_scaling dict wins over rope_parameters."""
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from gator.interop.hf import config_from_hf
    from gator.model.layers import make_rope

    base = tiny_hf().config.to_dict()
    for cfg in ({**base, "original_max_position_embeddings": 16, "rope_parameters": dict(YARN)},
                {**base, "rope_scaling": {**YARN, "factor": 2.0}, "rope_parameters": dict(YARN)}):
        hf = DeepseekV3Config.from_dict(cfg)
        inv_freq, scaling = ROPE_INIT_FUNCTIONS["yarn"](hf)
        angles = torch.outer(torch.arange(128, dtype=torch.float32), inv_freq).repeat(1, 2)
        assert (make_rope(config_from_hf(cfg)).cos - angles.cos() * scaling).abs().max() < 1e-5


# --- the MLA latent norms' eps (item 3) ---------------------------------------------------------------

def test_mla_norm_eps_is_transformers_fixed_1e_6_on_import_and_export(tmp_path):
    """transformers builds q_a_layernorm/kv_a_layernorm with eps 1e-6 whatever rms_norm_eps says."""
    from transformers import DeepseekV3ForCausalLM

    hf = tiny_hf(rms_norm_eps=1e-2, initializer_range=0.02)  # small latents, so the eps matters
    attn = hf.model.layers[0].self_attn
    ours = from_hf(hf).eval()
    ids = torch.randint(0, 96, (2, 40))
    with torch.no_grad():
        ref = hf(ids).logits
        assert (ours(ids)[0] - ref).abs().max() < 1e-5
    assert ours.config.norm_eps == 1e-2
    assert ours.config.mla_norm_eps == attn.q_a_layernorm.variance_epsilon == attn.kv_a_layernorm.variance_epsilon
    with torch.no_grad():
        # the test can see the difference: with rms_norm_eps in the latent norms the logits move
        wrong = Transformer(ours.config.__class__.from_dict({**ours.config.to_dict(), "mla_norm_eps": 1e-2})).eval()
        wrong.load_state_dict(ours.state_dict())
        assert (wrong(ids)[0] - ref).abs().max() > 1e-3
    torch.manual_seed(3)
    model = Transformer(get_preset("deepseek-tiny", norm_eps=1e-2, init_std=0.02)).eval()
    export_hf(model, tmp_path / "hf")
    back = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert back.config.rms_norm_eps == 1e-2
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        assert (back(ids).logits - model(ids)[0]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="q_a_layernorm"):  # an eps transformers cannot hold is refused
        export_hf(Transformer(get_preset("deepseek-tiny", mla_norm_eps=1e-5)), tmp_path / "other")


# --- keys a config.json leaves out (item 4) -----------------------------------------------------------

def test_default_table_is_transformers_defaults():
    from transformers import DeepseekV3Config

    from gator.interop.hf_deepseek import HF_DEFAULTS

    theirs = DeepseekV3Config()
    for key, value in HF_DEFAULTS.items():
        expected = theirs.rope_parameters["rope_theta"] if key == "rope_theta" else getattr(theirs, key)
        assert value == expected and type(value) is type(expected), key


@pytest.mark.parametrize("removed", [
    ("n_group", "topk_group", "routed_scaling_factor"),
    ("n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "n_shared_experts", "first_k_dense_replace",
     "rms_norm_eps", "rope_interleave", "tie_word_embeddings", "hidden_act", "attention_bias",
     "num_nextn_predict_layers", "num_mtp_layers"),
])
def test_missing_config_keys_give_transformers_logits(tmp_path, removed):
    """A config.json without the routing keys (or any key transformers defaults) loads as the same model."""
    import json

    from transformers import DeepseekV3ForCausalLM

    defaults = dict(n_group=8, topk_group=4, routed_scaling_factor=2.5, norm_topk_prob=True, n_shared_experts=1,
                    first_k_dense_replace=3, rms_norm_eps=1e-6, rope_interleave=True, tie_word_embeddings=False,
                    hidden_act="silu", attention_bias=False)
    hf = tiny_hf(num_hidden_layers=4, n_routed_experts=16, num_experts_per_tok=3, **defaults)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in removed:
        cfg.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ref_model = DeepseekV3ForCausalLM.from_pretrained(tmp_path).eval()
    ours = from_hf(tmp_path).eval()
    ids = torch.randint(0, 96, (2, 40))
    with torch.no_grad():
        ref = ref_model(ids).logits
        assert (ours(ids)[0] - ref).abs().max() < 1e-4
        assert (hf(ids).logits - ref).abs().max() == 0  # the keys removed held transformers' defaults
    c = ours.config
    assert (c.moe_groups, c.moe_top_groups, c.moe_routed_scale, c.moe_dense_layers) == (8, 4, 2.5, 3)


# --- MLA without MoE (item 8) -------------------------------------------------------------------------

def test_mla_without_moe_exports_a_config_both_sides_load(tmp_path):
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(4)
    model = Transformer(get_preset("deepseek-tiny", moe_routed_experts=0, init_std=0.1)).eval()  # keeps groups=4
    export_hf(model, tmp_path / "hf")
    hf = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    back = from_hf(tmp_path / "hf").eval()
    assert back.config.moe_routed_experts == 0 and back.config.mtp_depth == 1
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):  # MTP block dense too
        assert torch.equal(a, b), name
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        ours = model(ids)[0]
        assert (hf(ids).logits - ours).abs().max() < 1e-4
        assert (back(ids)[0] - ours).abs().max() == 0
