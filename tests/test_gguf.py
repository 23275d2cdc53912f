"""GGUF export (interop/gguf.py), checked without llama.cpp.

The file is read back with the `gguf` package's reader. An independent numpy forward pass that follows
llama.cpp's conventions (llama arch: RMSNorm, SwiGLU, GQA, RoPE rotating *adjacent* pairs (2i, 2i+1),
"normal" mode; gpt2 arch: LayerNorm, tanh GELU, fused QKV, learned positions), computed from nothing but
the GGUF tensors and metadata, must give Gator's logits: that proves the names, the shapes, the metadata
and the Q/K row permutation. The vocabulary is checked by building a `tokenizers` BPE from the GGUF
tokens and merges and comparing its ids with Gator's. The engines themselves run in tests/deploy/.
"""

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

import gator.interop.gguf as gator_gguf
from gator.cli import main as gator_main
from gator.config import get_preset
from gator.interop.gguf import chatml_jinja, export_gguf
from gator.model import Transformer
from gator.model.lora import LoRAConfig, apply_lora
from gator.tokenizer import GPT4_PATTERN, O200K_PATTERN, train_bpe
from gator.tokenizer.chat import add_chat_template, apply_chat_template

TEXTS = ["Hello world! It's 2024, isn't it?", "numbers 1234567 and 3.14159",
         "  leading spaces\n\n\ttabs\t\tand   runs  ",
         "unicode: café naïve 日本語 Ελληνικά 🐊🐊", "special<|endoftext|>in the middle<|endoftext|>", "",
         "I had always thought Jack Gisburn rather a cheap genius"]


VERDICT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "the_verdict.txt"


@pytest.fixture(scope="module")
def tok():
    return train_bpe(VERDICT, 400, special_tokens=["<|endoftext|>"], progress=False)


def make_model(preset: str, std: float = 0.3, **overrides) -> Transformer:
    """Weights large enough (std 0.3) that attention is far from uniform, so a wrong RoPE layout shows."""
    torch.manual_seed(0)
    model = Transformer(get_preset(preset, init_std=std, **overrides)).eval()
    with torch.no_grad():  # norms and biases start as constants; give them values the test can see
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


# ------------------------------------------------------------------------------------------------------
# an independent reader and forward pass in llama.cpp's conventions
# ------------------------------------------------------------------------------------------------------

def read(path):
    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items()}
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    return meta, tensors, r


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def rope_adjacent_pairs(x, theta, n_dims):
    """llama.cpp's "normal" RoPE: dims (2i, 2i+1) rotate together by pos * theta^(-2i/n_dims). x: (T, H, D)."""
    T = x.shape[0]
    inv = theta ** (-np.arange(0, n_dims, 2) / n_dims)
    ang = np.arange(T)[:, None] * inv[None]  # (T, n_dims/2)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
    out = x.copy()
    out[..., 0:n_dims:2] = x0 * cos - x1 * sin
    out[..., 1:n_dims:2] = x0 * sin + x1 * cos
    return out


def attention(q, k, v):
    """Causal attention, q (T, H, D), k/v (T, Hkv, D): query head h reads key/value head h // (H/Hkv)."""
    T, H, D = q.shape
    rep = H // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v).reshape(T, H * D)


def linear(x, t, name):
    y = x @ t[name + ".weight"].T
    return y + t[name + ".bias"] if name + ".bias" in t else y


def llama_forward(meta, t, ids):
    a = "llama"
    H, Hkv = meta[f"{a}.attention.head_count"], meta[f"{a}.attention.head_count_kv"]
    eps, theta = meta[f"{a}.attention.layer_norm_rms_epsilon"], meta[f"{a}.rope.freq_base"]
    n_rot = meta[f"{a}.rope.dimension_count"]
    D = meta.get(f"{a}.attention.key_length", meta[f"{a}.embedding_length"] // H)
    x = t["token_embd.weight"][ids]
    for i in range(meta[f"{a}.block_count"]):
        b = f"blk.{i}."
        h = rms_norm(x, t[b + "attn_norm.weight"], eps)
        q = linear(h, t, b + "attn_q").reshape(len(ids), H, D)
        k = linear(h, t, b + "attn_k").reshape(len(ids), Hkv, D)
        v = linear(h, t, b + "attn_v").reshape(len(ids), Hkv, D)
        q, k = rope_adjacent_pairs(q, theta, n_rot), rope_adjacent_pairs(k, theta, n_rot)
        x = x + linear(attention(q, k, v), t, b + "attn_output")
        h = rms_norm(x, t[b + "ffn_norm.weight"], eps)
        g = linear(h, t, b + "ffn_gate")
        x = x + linear(g / (1 + np.exp(-g)) * linear(h, t, b + "ffn_up"), t, b + "ffn_down")
    x = rms_norm(x, t["output_norm.weight"], eps)
    return x @ t.get("output.weight", t["token_embd.weight"]).T


def gpt2_forward(meta, t, ids):
    H, eps = meta["gpt2.attention.head_count"], meta["gpt2.attention.layer_norm_epsilon"]
    d = meta["gpt2.embedding_length"]
    x = t["token_embd.weight"][ids] + t["position_embd.weight"][: len(ids)]
    for i in range(meta["gpt2.block_count"]):
        b = f"blk.{i}."
        h = layer_norm(x, t[b + "attn_norm.weight"], t[b + "attn_norm.bias"], eps)
        q, k, v = np.split(linear(h, t, b + "attn_qkv"), 3, axis=-1)
        q, k, v = (z.reshape(len(ids), H, d // H) for z in (q, k, v))
        x = x + linear(attention(q, k, v), t, b + "attn_output")
        h = linear(layer_norm(x, t[b + "ffn_norm.weight"], t[b + "ffn_norm.bias"], eps), t, b + "ffn_up")
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # GELU, tanh form (ggml_gelu)
        x = x + linear(h, t, b + "ffn_down")
    x = layer_norm(x, t["output_norm.weight"], t["output_norm.bias"], eps)
    return x @ t.get("output.weight", t["token_embd.weight"]).T


def gator_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].double().numpy()


# ------------------------------------------------------------------------------------------------------
# logits
# ------------------------------------------------------------------------------------------------------

LLAMA_VARIANTS = {
    "gqa-tied": dict(),
    "untied-bias": dict(tie_embeddings=False, bias=True),
    "mqa-head_dim24": dict(n_kv_heads=1, head_dim=24, rope_theta=500.0),
}


@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS))
def test_llama_f32_logits_match_a_llamacpp_style_forward(tmp_path, tok, variant):
    model = make_model("tiny-gatorgpt", **LLAMA_VARIANTS[variant])
    path = export_gguf(model, tmp_path / "m.gguf", tok)
    meta, t, _ = read(path)
    assert meta["general.architecture"] == "llama"
    ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = llama_forward(meta, t, ids)
    ours = gator_logits(model, ids)
    assert np.abs(ref - ours).max() < 1e-4
    assert (ref.argmax(-1) == ours.argmax(-1)).all()


def test_without_the_rotary_permutation_the_logits_differ(tmp_path, tok, monkeypatch):
    """The check above can see a missing permutation: with it switched off, llama.cpp's RoPE convention
    gives other logits."""
    model = make_model("tiny-gatorgpt")
    monkeypatch.setattr(gator_gguf, "permute_rotary", lambda w, n_heads: w)
    meta, t, _ = read(export_gguf(model, tmp_path / "m.gguf", tok))
    ids = list(range(1, 41))
    assert np.abs(llama_forward(meta, t, ids) - gator_logits(model, ids)).max() > 0.1


@pytest.mark.parametrize("untied", [False, True])
def test_gpt2_f32_logits_match_a_llamacpp_style_forward(tmp_path, tok, untied):
    model = make_model("tiny-gpt2", tie_embeddings=not untied)
    meta, t, _ = read(export_gguf(model, tmp_path / "m.gguf", tok))
    assert meta["general.architecture"] == "gpt2"
    ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    ref, ours = gpt2_forward(meta, t, ids), gator_logits(model, ids)
    assert np.abs(ref - ours).max() < 1e-4
    assert ("output.weight" in t) == untied


@pytest.mark.parametrize("kind,weight_tol", [("f16", 1e-3), ("bf16", 8e-3), ("q8_0", 1e-2)])
def test_reduced_precision_weights_stay_close(tmp_path, tok, kind, weight_tol):
    """Each stored matrix, dequantized, is within weight_tol * max|w| of the float32 original (bf16 keeps 8
    mantissa bits, f16 11, Q8_0 int8 with one fp16 scale per 32 weights); norms stay F32; the logits of
    the dequantized model stay close and pick the same top token almost everywhere."""
    model = make_model("tiny-gatorgpt", std=0.1)
    f32 = read(export_gguf(model, tmp_path / "f32.gguf", tok))[1]
    meta, t, r = read(export_gguf(model, tmp_path / f"{kind}.gguf", tok, type=kind))
    types = {x.name: x.tensor_type.name for x in r.tensors}
    for name, w in f32.items():
        assert types[name] == ("F32" if w.ndim == 1 else kind.upper()), name
        assert np.abs(t[name] - w).max() <= weight_tol * np.abs(w).max(), name
    ids = list(range(3, 43))
    ref, ours = llama_forward(meta, t, ids), gator_logits(model, ids)
    assert np.abs(ref - ours).max() < 0.05 * np.abs(ours).max()
    assert (ref.argmax(-1) == ours.argmax(-1)).mean() >= 0.9
    assert (tmp_path / f"{kind}.gguf").stat().st_size < (tmp_path / "f32.gguf").stat().st_size * 0.6


def test_q8_0_keeps_rows_that_do_not_fill_a_block_in_f32(tmp_path, tok):
    model = make_model("tiny-gatorgpt", d_model=48, n_heads=4, n_kv_heads=2, ffn_dim=80)  # rows of 48 and 80
    _, _, r = read(export_gguf(model, tmp_path / "q.gguf", tok, type="q8_0"))
    types = {x.name: x.tensor_type.name for x in r.tensors}
    assert types["blk.0.attn_q.weight"] == "F32" and types["blk.0.ffn_down.weight"] == "F32"


# ------------------------------------------------------------------------------------------------------
# metadata, names, shapes
# ------------------------------------------------------------------------------------------------------

def test_llama_metadata_names_and_shapes(tmp_path, tok):
    model = make_model("tiny-gatorgpt", tie_embeddings=False)
    c = model.config
    meta, _, r = read(export_gguf(model, tmp_path / "m.gguf", tok, name="tiny"))
    expected = {"general.architecture": "llama", "general.name": "tiny", "llama.context_length": 128,
                "llama.embedding_length": 64, "llama.block_count": 2, "llama.feed_forward_length": 128,
                "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 10000.0,
                "llama.rope.dimension_count": 16, "llama.vocab_size": 512, "general.file_type": 0}
    assert {k: meta[k] for k in expected} == expected
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    shapes = {x.name: tuple(int(n) for n in x.shape) for x in r.tensors}  # ggml order: (in, out)
    per_block = {"attn_norm.weight": (64,), "attn_q.weight": (64, 64), "attn_k.weight": (64, 32),
                 "attn_v.weight": (64, 32), "attn_output.weight": (64, 64), "ffn_norm.weight": (64,),
                 "ffn_gate.weight": (64, 128), "ffn_up.weight": (64, 128), "ffn_down.weight": (128, 64)}
    want = {"token_embd.weight": (64, 512), "output_norm.weight": (64,), "output.weight": (64, 512)}
    want |= {f"blk.{i}.{k}": v for i in range(2) for k, v in per_block.items()}
    assert shapes == want
    known = {gguf.TENSOR_NAMES[x].format(bid=i) for x in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LLAMA] for i in range(2)}
    assert {n.rsplit(".", 1)[0] for n in shapes} <= known  # llama.cpp's own table of llama tensor names


def test_gpt2_metadata_and_names(tmp_path, tok):
    meta, _, r = read(export_gguf(make_model("tiny-gpt2"), tmp_path / "m.gguf", tok))
    assert meta["gpt2.context_length"] == 128 and meta["gpt2.embedding_length"] == 64
    assert meta["gpt2.attention.head_count"] == 4 and meta["gpt2.feed_forward_length"] == 256
    names = {x.name.rsplit(".", 1)[0] for x in r.tensors}
    known = {gguf.TENSOR_NAMES[x].format(bid=i) for x in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GPT2] for i in range(2)}
    assert names <= known and "position_embd" in names and "blk.1.attn_qkv" in names


# ------------------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------------------

def tokenizers_from_gguf(meta, pattern):
    """A Hugging Face `tokenizers` BPE built only from the GGUF vocabulary: an independent encoder."""
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    vocab = {s: i for i, (s, ty) in enumerate(zip(tokens, types)) if ty == gguf.TokenType.NORMAL}
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False)
                           for s, ty in zip(tokens, types) if ty == gguf.TokenType.CONTROL])
    for s, ty in zip(tokens, types):
        if ty == gguf.TokenType.CONTROL:
            assert hf.token_to_id(s) == tokens.index(s)
    return hf


def test_tokenizer_metadata_encodes_like_gator(tmp_path, tok):
    meta, _, _ = read(export_gguf(make_model("tiny-gatorgpt"), tmp_path / "m.gguf", tok))
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    eot = tok.special_ids["<|endoftext|>"]
    assert meta["tokenizer.ggml.eos_token_id"] == eot and meta["tokenizer.ggml.bos_token_id"] == eot
    assert meta["tokenizer.ggml.add_bos_token"] is False
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == 512 and len(set(tokens)) == 512  # padded to the model's embedding rows
    assert tokens[eot] == "<|endoftext|>" and types[eot] == gguf.TokenType.CONTROL
    assert types[len(tok.vocab)] == gguf.TokenType.UNUSED and types[0] == gguf.TokenType.NORMAL
    assert len(meta["tokenizer.ggml.merges"]) == len(tok.merges)
    hf = tokenizers_from_gguf(meta, tok.pattern)
    for text in TEXTS:
        ids = tok.encode(text, allowed_special="all")
        assert hf.encode(text).ids == ids, text
        assert hf.decode(ids, skip_special_tokens=False) == text


def test_chat_template_and_end_of_turn(tmp_path, tok):
    """The GGUF carries Gator's ChatML template as Jinja; rendered (with jinja2, as llama.cpp's Jinja engine
    renders it) and tokenized with special tokens parsed, it gives the ids of Gator's apply_chat_template.
    The end-of-turn marker is the eot id, where llama.cpp stops a reply."""
    import jinja2

    chat_tok = add_chat_template(tok)
    model = make_model("tiny-gatorgpt")
    meta, _, _ = read(export_gguf(model, tmp_path / "m.gguf", chat_tok))
    assert meta["tokenizer.ggml.eot_token_id"] == chat_tok.special_ids["<|im_end|>"]
    assert meta["tokenizer.ggml.token_type"][chat_tok.special_ids["<|im_start|>"]] == gguf.TokenType.CONTROL
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there,\n  friend!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What's 2+2?"}]
    for prompt in (True, False):
        text = jinja2.Environment().from_string(meta["tokenizer.chat_template"]).render(
            messages=messages, add_generation_prompt=prompt)
        assert chat_tok.encode(text, allowed_special="all") == apply_chat_template(chat_tok, messages, prompt)


@pytest.mark.parametrize("pattern,name", [(GPT4_PATTERN, "llama-bpe"), (O200K_PATTERN, "gpt-4o")])
def test_other_builtin_patterns_get_llamacpp_names(tmp_path, pattern, name):
    tok = train_bpe(VERDICT, 300, special_tokens=["<|endoftext|>"],
                    pattern=pattern, progress=False)
    meta, _, _ = read(export_gguf(make_model("tiny-gatorgpt"), tmp_path / "m.gguf", tok))
    assert meta["tokenizer.ggml.pre"] == name


# ------------------------------------------------------------------------------------------------------
# refusals, atomic writes, the CLI
# ------------------------------------------------------------------------------------------------------

def test_refusals_say_what_would_be_lost(tmp_path, tok):
    out = tmp_path / "x.gguf"
    cases = [
        (dict(preset="tiny-gatorgpt", mod_layers=[1]), "Mixture-of-Depths"),
        (dict(preset="deepseek-tiny"), "gator export hf"),
        (dict(preset="tiny-gatorgpt", mtp_depth=1), "multi-token-prediction"),
        (dict(preset="tiny-gatorgpt", sliding_window=16), "no sliding window"),
        (dict(preset="tiny-gatorgpt", mlp="gelu"), "no llama.cpp architecture"),
    ]
    for overrides, message in cases:
        preset = overrides.pop("preset")
        with pytest.raises(ValueError, match=message):
            export_gguf(Transformer(get_preset(preset, **overrides)), out, tok)
    custom = train_bpe(VERDICT, 280, pattern=r"\w+|\s+|[^\w\s]+", progress=False)
    with pytest.raises(ValueError, match="no pre-tokenizer for the regex"):
        export_gguf(make_model("tiny-gatorgpt"), out, custom)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        export_gguf(make_model("tiny-gatorgpt"), out, None)
    with pytest.raises(ValueError, match="LoRA adapters"):
        export_gguf(apply_lora(make_model("tiny-gatorgpt"), LoRAConfig(r=4)), out, tok)
    assert list(tmp_path.iterdir()) == []


def test_mtp_modules_can_be_dropped_on_purpose(tmp_path, tok):
    model = make_model("tiny-gatorgpt", mtp_depth=1)
    with pytest.warns(UserWarning, match="dropping 1 multi-token"):
        meta, t, _ = read(export_gguf(model, tmp_path / "m.gguf", tok, drop_mtp=True))
    ids = list(range(5, 30))
    assert np.abs(llama_forward(meta, t, ids) - gator_logits(model, ids)).max() < 1e-4


def test_no_partial_file_and_no_silent_overwrite(tmp_path, tok, monkeypatch):
    model = make_model("tiny-gatorgpt")
    out = tmp_path / "m.gguf"
    real = gator_gguf.encode_tensor
    calls = []

    def fail_midway(name, tensor, kind):
        calls.append(name)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(name, tensor, kind)

    monkeypatch.setattr(gator_gguf, "encode_tensor", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(model, out, tok)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp file
    monkeypatch.setattr(gator_gguf, "encode_tensor", real)
    export_gguf(model, out, tok)
    before = out.read_bytes()
    with pytest.raises(Exception, match="exists; pass force=True"):
        export_gguf(make_model("tiny-gatorgpt", std=0.1), out, tok)
    assert out.read_bytes() == before
    export_gguf(model, out, tok, type="f16", force=True)
    assert out.read_bytes() != before and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_cli_export_gguf(tmp_path, tok, capsys):
    model = make_model("tiny-gatorgpt")
    model.save_pretrained(tmp_path / "model", tokenizer=tok)
    out = tmp_path / "model.gguf"
    assert gator_main(["export", "gguf", str(tmp_path / "model"), str(out), "--type", "q8_0"]) == 0
    assert "q8_0" in capsys.readouterr().out
    meta, _, r = read(out)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0 and meta["general.name"] == "model"
    assert gator_main(["export", "gguf", str(tmp_path / "model"), str(out)]) == 1
    err = capsys.readouterr().err
    assert "exists; pass force=True (--force)" in err and len(err.strip().splitlines()) == 1
    assert gator_main(["export", "gguf", str(tmp_path / "model"), str(out), "--force"]) == 0
    Transformer(get_preset("tiny-gatorgpt", mod_layers=[0])).save_pretrained(tmp_path / "mod", tokenizer=tok)
    assert gator_main(["export", "gguf", str(tmp_path / "mod"), str(tmp_path / "mod.gguf")]) == 1
    assert "Mixture-of-Depths" in capsys.readouterr().err
    model.save_pretrained(tmp_path / "bare")
    assert gator_main(["export", "gguf", str(tmp_path / "bare"), str(tmp_path / "bare.gguf")]) == 1
    assert "needs the tokenizer" in capsys.readouterr().err


def test_imported_model_directory_uses_tokenizer_json(tmp_path, tok, capsys):
    """A model imported from transformers keeps tokenizer.json (+ tokenizer_config.json); the export reads it.
    A SentencePiece tokenizer.model (Llama 2, Mistral) is refused by name."""
    model = make_model("tiny-gatorgpt")
    model.save_pretrained(tmp_path / "imported")
    add_chat_template(tok).save_hf(tmp_path / "imported")
    assert gator_main(["export", "gguf", str(tmp_path / "imported"), str(tmp_path / "m.gguf")]) == 0
    meta, _, _ = read(tmp_path / "m.gguf")
    assert meta["tokenizer.ggml.tokens"][tok.special_ids["<|endoftext|>"]] == "<|endoftext|>"
    assert meta["tokenizer.chat_template"] == chatml_jinja(add_chat_template(tok).chat_template)  # not escaped
    foreign = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (tmp_path / "foreign").mkdir()
    model.save_pretrained(tmp_path / "foreign")
    tok.save_hf(tmp_path / "foreign")
    hf_config = json.loads((tmp_path / "foreign" / "tokenizer_config.json").read_text())
    (tmp_path / "foreign" / "tokenizer_config.json").write_text(json.dumps({**hf_config, "chat_template": foreign}))
    assert gator_main(["export", "gguf", str(tmp_path / "foreign"), str(tmp_path / "f.gguf")]) == 0
    assert read(tmp_path / "f.gguf")[0]["tokenizer.chat_template"] == foreign  # someone else's: kept as is
    hf = tokenizers_from_gguf(meta, tok.pattern)
    assert hf.encode(TEXTS[3]).ids == tok.encode(TEXTS[3])
    model.save_pretrained(tmp_path / "spm")
    (tmp_path / "spm" / "tokenizer.model").write_bytes(b"\x00")
    assert gator_main(["export", "gguf", str(tmp_path / "spm"), str(tmp_path / "spm.gguf")]) == 1
    assert "SentencePiece" in capsys.readouterr().err
