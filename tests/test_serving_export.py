"""`export_hf` writes a complete serving directory, the one `vllm serve DIR` needs with no extra flags:
config.json, model.safetensors (dtype selectable), generation_config.json (token ids only), tokenizer.json
and tokenizer_config.json (special tokens, chat template). Checked with transformers, which is what vLLM
reads these files with; vLLM itself runs in tests/deploy/ (`make test-deploy`)."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from gator.cli import main as gator_main
from gator.config import get_preset
from gator.generate import generate
from gator.interop.hf import export_hf
from gator.model import Transformer
from gator.tokenizer import train_bpe
from gator.tokenizer.chat import add_chat_template, apply_chat_template, chat_stop_ids

VERDICT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "the_verdict.txt"


@pytest.fixture(scope="module")
def tok():
    return add_chat_template(train_bpe(VERDICT, 400, special_tokens=["<|endoftext|>"], progress=False))


def model_for(tok, **overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(get_preset("tiny-gatorgpt", vocab_size=len(tok), init_std=0.3, **overrides)).eval()


def test_serving_directory_files_and_generation_config(tmp_path, tok):
    model = model_for(tok, n_heads=2, n_kv_heads=1, head_dim=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # head_dim 32: no vLLM warning
        export_hf(model, tmp_path / "hf", tokenizer=tok, dtype=torch.bfloat16)
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    eot, im_end = tok.special_ids["<|endoftext|>"], tok.special_ids["<|im_end|>"]
    gen = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert gen.eos_token_id == [im_end, eot] and gen.bos_token_id == eot and gen.pad_token_id == eot
    raw = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert not {"temperature", "top_p", "top_k", "do_sample"} & set(raw)  # sampling defaults: the server's
    cfg = AutoConfig.from_pretrained(tmp_path / "hf")
    assert cfg.eos_token_id == [im_end, eot] and cfg.bos_token_id == eot
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.dtype == torch.bfloat16


def test_tokenizer_and_chat_template_load_in_transformers(tmp_path, tok):
    export_hf(model_for(tok), tmp_path / "hf", tokenizer=tok)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ["Hello, world!  It's 42.", "café 日本語 🐊\n\n\ttabs", "I had always thought Jack Gisburn"]:
        assert hf_tok(text)["input_ids"] == tok.encode(text)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_end|> there"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == apply_chat_template(tok, messages)


def test_transformers_generate_stops_where_gator_stops(tmp_path, tok):
    """generation_config.json's eos ids make transformers (and so vLLM) stop a greedy chat reply where Gator
    stops it. A model whose head has been pushed toward <|im_end|> ends its reply within a few tokens."""
    model = model_for(tok)
    with torch.no_grad():
        model.lm_head.weight[tok.special_ids["<|im_end|>"]] *= 4
    export_hf(model, tmp_path / "hf", tokenizer=tok)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    prompt = apply_chat_template(tok, [{"role": "user", "content": "Tell me a story."}])
    ours = generate(model, prompt, max_new_tokens=40, temperature=0,
                    stop_tokens=chat_stop_ids(tok) + [tok.special_ids["<|endoftext|>"]])
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
    if ours.finish_reason == "stop":
        assert theirs[-1] in chat_stop_ids(tok) + [tok.special_ids["<|endoftext|>"]]
        theirs = theirs[:-1]
    assert ours.finish_reason == "stop" and theirs == ours.tokens


def test_small_head_dim_warns_about_vllm_cpu(tmp_path, tok, capsys):
    with pytest.warns(UserWarning, match="head_dim >= 32"):
        export_hf(model_for(tok), tmp_path / "hf", tokenizer=tok)  # head_dim 16
    model_for(tok).save_pretrained(tmp_path / "g", tokenizer=tok)
    with pytest.warns(UserWarning, match="vLLM's CPU attention"):
        assert gator_main(["export", "hf", str(tmp_path / "g"), str(tmp_path / "hf2"), "--dtype", "float16"]) == 0
    assert GenerationConfig.from_pretrained(tmp_path / "hf2").eos_token_id == [tok.special_ids["<|im_end|>"],
                                                                                tok.special_ids["<|endoftext|>"]]
