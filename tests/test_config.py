"""ModelConfig: JSON round trip, presets, validation errors, and the numbers `gator info` prints."""

import json

import pytest
import torch

from gator.config import PRESETS, ModelConfig, get_preset
from gator.model import KVCache, Transformer


def test_json_round_trip(tmp_path):
    c = get_preset("gatorgpt", sliding_window=256, dropout=0.1)
    c.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == c
    assert ModelConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_gatorgpt_preset_is_the_seed_model():
    c = get_preset("gatorgpt")
    assert (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim) == (384, 10, 8, 4, 768)
    assert (c.norm, c.norm_eps, c.mlp, c.positions, c.rope_theta) == ("rmsnorm", 1e-5, "swiglu", "rope", 10000.0)
    assert (c.context_length, c.vocab_size, c.tie_embeddings, c.bias) == (1024, 50281, True, False)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    with torch.device("meta"):
        model = Transformer(get_preset(name))
    assert model.num_params() > 0


@pytest.mark.parametrize("name,hf_cls,hf_kwargs", [
    ("gpt2", "GPT2Config", dict(n_embd=768, n_layer=12, n_head=12)),
    ("gpt2-medium", "GPT2Config", dict(n_embd=1024, n_layer=24, n_head=16)),
    ("llama2c-15m", "LlamaConfig", dict(vocab_size=32000, hidden_size=288, intermediate_size=768,
                                        num_hidden_layers=6, num_attention_heads=6, max_position_embeddings=256,
                                        tie_word_embeddings=True)),
    ("gatorgpt", "LlamaConfig", dict(vocab_size=50281, hidden_size=384, intermediate_size=768, num_hidden_layers=10,
                                     num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                                     tie_word_embeddings=True)),
])
def test_parameter_count_matches_transformers(name, hf_cls, hf_kwargs):
    import transformers

    cfg = getattr(transformers, hf_cls)(**hf_kwargs)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(cfg)
        ours = Transformer(get_preset(name))
    assert ours.num_params() == hf.num_parameters()


def test_info_numbers():
    with torch.device("meta"):
        m = Transformer(get_preset("gpt2"))
    info = m.info()
    assert info["parameters"] == 124_439_808  # the published GPT-2 small count
    # Without embeddings: drop the 50257x768 token table and the 1024x768 position table.
    assert info["parameters_without_embeddings"] == 124_439_808 - 50257 * 768 - 1024 * 768
    # Forward = 2 FLOPs per matmul weight (12 layers x 12 d^2, plus the LM head) + attention 4 L T d.
    d, L, T, V = 768, 12, 1024, 50257
    forward = 2 * (12 * L * d * d + V * d) + 4 * L * T * d
    assert info["flops_per_token_inference"] == forward
    assert info["flops_per_token_training"] == 3 * forward
    assert info["kv_cache_bytes_per_token_bf16"] == 2 * L * d * 2


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gatorgpt", "llama2c-15m"])
def test_kv_bytes_formula_matches_real_cache(name):
    model = Transformer(get_preset(name))
    for dtype, nbytes in ((torch.float32, 4), (torch.bfloat16, 2)):
        cache = KVCache.for_model(model, batch_size=1, max_len=64, dtype=dtype)
        assert cache.nbytes() == 64 * model.config.kv_cache_bytes_per_token(nbytes)


@pytest.mark.parametrize("overrides,field", [
    (dict(n_heads=8, n_kv_heads=3), "n_kv_heads"),
    (dict(d_model=100, n_heads=8), "n_heads"),
    (dict(head_dim=15, positions="rope"), "head_dim"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp="relu"), "mlp"),
    (dict(positions="alibi"), "positions"),
    (dict(dropout=1.5), "dropout"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(vocab_size=0), "vocab_size"),
])
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        get_preset("tiny-gatorgpt", **overrides)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="available presets"):
        get_preset("gpt5")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"d_model": 64, "n_head": 4})


def test_corrupt_config_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.load(tmp_path / "config.json")
