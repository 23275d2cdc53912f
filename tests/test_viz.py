"""Attention maps: causal, normalised, and consistent with what the attention layer actually computes."""

import pytest
import torch

from gator.config import get_preset
from gator.model import Transformer
from gator.viz import attention_maps, plot_attention


@pytest.mark.parametrize("preset,overrides", [("tiny-gatorgpt", {}), ("tiny-gpt2", {}),
                                              ("tiny-gatorgpt", {"sliding_window": 4})])
def test_maps_are_causal_normalised_and_match_the_layer_output(preset, overrides):
    torch.manual_seed(0)
    model = Transformer(get_preset(preset, **overrides)).eval()
    ids = torch.randint(0, 512, (1, 11))
    outputs, inputs = [], []

    def record(module, args, out):
        inputs.append(args[0])
        outputs.append(out)

    hooks = [b.attn.register_forward_hook(record) for b in model.blocks]
    maps = attention_maps(model, ids)
    model(ids)  # a plain forward: hooks record each attention layer's input and its SDPA output
    for h in hooks:
        h.remove()
    c = model.config
    assert maps.shape == (c.n_layers, c.n_heads, 11, 11)
    torch.testing.assert_close(maps.sum(-1), torch.ones(c.n_layers, c.n_heads, 11))
    assert torch.all(maps.triu(diagonal=1) == 0)  # no token attends to the future
    if c.sliding_window:
        assert torch.all(maps.tril(diagonal=-c.sliding_window) == 0)
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        x = inputs[layer]
        v = attn.qkv(x).split([attn.q_dim, attn.kv_dim, attn.kv_dim], dim=-1)[2]
        v = v.view(1, 11, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        v = v.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
        y = (maps[layer][None] @ v).transpose(1, 2).reshape(1, 11, attn.q_dim)
        torch.testing.assert_close(attn.proj(y), outputs[layer], atol=1e-5, rtol=1e-5)


def test_plot_attention_writes_a_png(tmp_path):
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt")).eval()
    maps = attention_maps(model, [1, 2, 3, 4])
    out = plot_attention(maps, ["a", "b", "c", "d"], tmp_path / "a.png", layers=[1], max_heads=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="one sequence"):
        attention_maps(model, torch.zeros(2, 3, dtype=torch.long))


def test_cli_draws_attention_for_a_checkpoint(tmp_path, capsys):
    from gator.cli import main
    from gator.tokenizer import train_bpe

    tok = train_bpe("once upon a time there was a little cat. " * 30, 280, special_tokens=["<|endoftext|>"],
                    progress=False)
    model = Transformer(get_preset("tiny-gatorgpt", vocab_size=len(tok.vocab)))
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    assert main(["viz", "attention", "--checkpoint", str(tmp_path / "m"), "--text", "once upon a time",
                 "--out", str(tmp_path / "a.png"), "--layers", "1"]) == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["viz", "attention", "--checkpoint", str(tmp_path / "m"), "--text", "cat", "--layers", "7"]) == 1
    assert "layer 7 does not exist" in capsys.readouterr().err
