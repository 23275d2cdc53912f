"""DeepSeek-V3 interop: import from and export to transformers' DeepseekV3ForCausalLM (tiny random-init
models built offline), fp32 logits parity including MLA, MoE weights, the expert bias, YaRN and the
interleaved RoPE layout; the MTP layers round-trip through files."""

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
