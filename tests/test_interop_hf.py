"""Hugging Face round trip, offline: tiny random-init transformers models imported into Gator, and Gator
models exported to a directory that `AutoModelForCausalLM.from_pretrained` loads with no custom code.
Logits must agree (fp32, max abs diff < 1e-4) and greedy generation must be token-identical."""

import json

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from gator.cli import main as gator_main
from gator.config import get_preset
from gator.generate import generate
from gator.interop.hf import export_hf, from_hf, import_hf
from gator.model import Transformer

V = 300


def hf_models():
    yield "gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    yield "gpt2-untied", transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=96, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0))
    yield "llama-gqa", transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0))
    yield "llama-mqa-tied-bias", transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, attention_bias=True,
        mlp_bias=True, head_dim=24))


def randomize(model):
    """transformers initialises biases and norms to constants; perturb everything so the test sees them."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name,hf", list(hf_models()), ids=[n for n, _ in hf_models()])
def test_import_matches_transformers(tmp_path, name, hf):
    torch.manual_seed(0)
    hf = randomize(hf)
    ids = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        ref = hf(ids).logits
        ours = from_hf(hf).eval()(ids)[0]  # from the model object
    assert (ours - ref).abs().max() < 1e-4
    hf.save_pretrained(tmp_path / "hf")  # and from a directory on disk, through the Gator format
    model = import_hf(tmp_path / "hf", tmp_path / "gator")
    loaded = Transformer.from_pretrained(tmp_path / "gator").eval()
    with torch.no_grad():
        assert (loaded(ids)[0] - ref).abs().max() < 1e-4
    assert model.config.extra["hf_model_type"] in ("gpt2", "llama")


def gator_models():
    yield "tiny-gpt2", get_preset("tiny-gpt2", init_std=0.3)
    yield "tiny-gatorgpt", get_preset("tiny-gatorgpt", init_std=0.3)
    yield "gatorgpt-untied-bias", get_preset("tiny-gatorgpt", init_std=0.3, tie_embeddings=False, bias=True)
    yield "sliding-window(mistral)", get_preset("tiny-gatorgpt", init_std=0.3, sliding_window=8)


@pytest.mark.parametrize("name,config", list(gator_models()), ids=[n for n, _ in gator_models()])
def test_export_loads_in_transformers_with_same_logits_and_greedy_tokens(tmp_path, name, config):
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():  # give biases and norm weights non-trivial values
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    export_hf(model, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "auto_map" not in cfg  # no custom code needed
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    expected = {"tiny-gpt2": "GPT2LMHeadModel", "sliding-window(mistral)": "MistralForCausalLM"}
    expected = expected.get(name, "LlamaForCausalLM")
    assert type(hf).__name__ == expected
    ids = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max() < 1e-4
        prompt = ids[:1, :6]
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                             pad_token_id=0, eos_token_id=None)[0, 6:].tolist()
    ours = generate(model, prompt[0].tolist(), max_new_tokens=24, temperature=0).tokens
    assert ours == theirs
    assert len(set(ours)) > 3


def test_cli_export_and_import_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt")).eval()
    model.save_pretrained(tmp_path / "g")
    assert gator_main(["export", "hf", str(tmp_path / "g"), str(tmp_path / "hf")]) == 0
    assert gator_main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "g2")]) == 0
    back = Transformer.from_pretrained(tmp_path / "g2").eval()
    ids = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(ids)[0], model(ids)[0])
    assert gator_main(["export", "hf", str(tmp_path / "g"), str(tmp_path / "hf16"), "--dtype", "bfloat16"]) == 0
    hf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "hf16")
    assert hf16.dtype == torch.bfloat16
    assert "exported" in capsys.readouterr().out


def test_import_errors_are_clear(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        from_hf(tmp_path / "missing")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        from_hf(tmp_path / "bert")
    assert gator_main(["import", "hf", str(tmp_path / "bert"), str(tmp_path / "out")]) == 1
    assert "not supported" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no transformers architecture matches"):
        export_hf(Transformer(get_preset("tiny-gatorgpt", mlp="gelu")), tmp_path / "x")


def test_gator_info_cli(capsys):
    assert gator_main(["info", "gatorgpt"]) == 0
    out = capsys.readouterr().out
    assert "32,587,008" in out and "KV cache per token, bf16" in out and "7,680 bytes" in out
    assert gator_main(["info", "no-such-preset"]) == 1
    assert "presets:" in capsys.readouterr().err


@pytest.mark.parametrize("tie", [True, False])
def test_export_gpt2_family_without_biases(tmp_path, tie):
    """bias=False exports zero biases, each in its own storage (safetensors refuses shared memory), and
    transformers' GPT2LMHeadModel computes the same logits."""
    from gator.config import ModelConfig

    torch.manual_seed(5)
    model = Transformer(ModelConfig(vocab_size=V, context_length=64, d_model=32, n_layers=2, n_heads=4,
                                    bias=False, tie_embeddings=tie, init_std=0.1)).eval()
    export_hf(model, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert all(torch.equal(b, torch.zeros_like(b)) for n, b in hf.named_parameters() if n.endswith(".bias"))
    ids = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)[0]).abs().max() < 1e-4
