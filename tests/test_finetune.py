"""`gator finetune` end to end: full and LoRA fine-tuning through `gator.cli.main`, on Gator models and on
models made by `gator import hf` from transformers Llama and GPT-2 directories.

- A full run learns (validation loss falls) and writes metrics, the plot and model folders.
- Resume is bit-exact: a run interrupted (SIGINT) and resumed logs the losses and ends with the weights of
  the uninterrupted run, for full fine-tuning with packing and for LoRA with dropout.
- In a LoRA run only the adapters change: every weight of the written (merged) model equals the base
  model's, except the adapted matrices, which equal W + (alpha/r) B A of the adapter found next to it;
  the optimizer holds state for the adapters only.
- The adapter, in PEFT's layout, loads with `peft.PeftModel.from_pretrained` on the original transformers
  model and gives the logits of Gator's fine-tuned model (< 1e-4), for Llama and GPT-2.
- Bad input is refused with one line naming the file and line.
"""

import json
import os
import signal

import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file
from sft_fixtures import TRAIN_SETTINGS, make_base, tiny_tokenizer, write_chat, write_text

from gator.cli import main
from gator.interop.peft import load_adapter
from gator.model import Transformer
from gator.model.lora import lora_layers
from gator.train.checkpoint import load_training_state
from gator.train.finetune import finetune

FLAGS = [f"{k}={v}" for k, v in TRAIN_SETTINGS.items() if k not in ("progress",)] + ["--no-progress"]


def records(run, key="loss"):
    return [(r["step"], r[key]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]


def hf_base(tmp_path, family: str):
    """A tiny transformers model (with a Gator tokenizer saved in transformers' files) and its import."""
    tok = tiny_tokenizer(chat=family == "llama")
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=64, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=4)
        model = transformers.GPT2LMHeadModel(config)
    hf_dir, gator_dir = tmp_path / f"hf-{family}", tmp_path / f"gator-{family}"
    model.save_pretrained(hf_dir)
    tok.save_hf(hf_dir)
    assert main(["import", "hf", "--model", str(hf_dir), "--out", str(gator_dir)]) == 0
    return hf_dir, gator_dir


def test_full_finetune_through_the_cli(tmp_path):
    base = make_base(tmp_path / "base")  # no chat template: finetune adds one and grows the model
    data = write_chat(tmp_path / "chat.jsonl", n=80)
    run = tmp_path / "run"
    code = main(["finetune", "--model", str(base), "--data", str(data), "--out", str(run), *FLAGS,
                 "max_steps=24", "eval_every=12"])
    assert code == 0
    val = [v for _, v in records(run, "val_loss")]
    assert len(val) == 2 and val[-1] < val[0]
    assert (run / "loss.png").is_file() and (run / "train_config.yaml").is_file()
    model = Transformer.from_pretrained(run / "best")
    assert model.config.vocab_size == tiny_tokenizer().vocab_size + 2
    assert not (run / "best" / "adapter_config.json").exists()


@pytest.mark.parametrize("lora", [False, True])
def test_resume_is_bit_exact(tmp_path, lora):
    base = make_base(tmp_path / "base", chat=True)
    data = write_chat(tmp_path / "chat.jsonl", n=60)
    kw = dict(TRAIN_SETTINGS, init_from=str(base), data=str(data))
    kw.update(dict(lora=True, lora_rank=4, lora_alpha=8, lora_dropout=0.1) if lora else dict(packing=True))
    finetune(out_dir=str(tmp_path / "a"), **kw)

    def interrupt(step, record):
        if step == 6:  # an evaluation step: the interrupted run logs no extra evaluation
            os.kill(os.getpid(), signal.SIGINT)

    first = finetune(out_dir=str(tmp_path / "b"), on_step=interrupt, **kw)
    assert first["stopped"] == "interrupted (SIGINT)" and first["steps"] == 6
    finetune(out_dir=str(tmp_path / "b"), resume=True, **kw)
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert len(a) == 12 and a == b
    assert records(tmp_path / "a", "val_loss") == records(tmp_path / "b", "val_loss")
    for name in ("model.safetensors",) + (("adapter_model.safetensors",) if lora else ()):
        wa, wb = load_file(tmp_path / "a" / "checkpoint" / name), load_file(tmp_path / "b" / "checkpoint" / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_trains_only_adapters_and_peft_loads_them(tmp_path, family):
    hf_dir, gator_dir = hf_base(tmp_path, family)
    if family == "llama":  # conversations (the tokenizer has a chat template), every Llama projection
        data, targets = write_chat(tmp_path / "chat.jsonl", n=60), "q,k,v,o,gate,up,down"
    else:  # the user's own text (no template needed), GPT-2's fused c_attn and the rest
        data, targets = write_text(tmp_path / "text.jsonl", n=60), "qkv,o,up,down"
    run = tmp_path / "run"
    code = main(["finetune", "--model", str(gator_dir), "--data", str(data), "--out", str(run), "--lora",
                 "--rank", "4", "--alpha", "8", "--targets", targets, *FLAGS, "lr=1e-2"])
    assert code == 0

    # only the adapters changed: the merged model is the base plus s B A on the adapted matrices
    base = Transformer.from_pretrained(gator_dir)
    adapted = load_adapter(Transformer.from_pretrained(gator_dir), run / "checkpoint")
    layers = lora_layers(adapted)
    merged = load_file(run / "checkpoint" / "model.safetensors")
    changed = 0
    for name, w in base.state_dict().items():
        if name not in merged:
            continue  # a tied lm_head
        layer = layers.get(name.removesuffix(".weight"))
        if layer is None or not name.endswith(".weight"):
            assert torch.equal(merged[name], w), name
            continue
        expected = w.clone()
        start = 0
        for target, rows in layer.slices:
            if target in layer.lora_A:
                expected[start:start + rows] += layer.delta(target).detach()
            start += rows
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=0)
        changed += int(not torch.equal(merged[name], w))
    assert changed == len(layers) > 0
    state = load_training_state(run / "checkpoint")
    n_adapters = sum(len(m.lora_A) + len(m.lora_B) for m in layers.values())
    assert len(state["optimizer"]["state"]) == n_adapters

    # PEFT on the original transformers model gives the fine-tuned model's logits
    ids = torch.randint(0, base.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    peft_model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(hf_dir), run / "best")
    peft_model.eval()
    with torch.no_grad():
        ref = peft_model(ids).logits
        ours, _ = Transformer.from_pretrained(run / "best").eval()(ids)
        untuned = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()(ids).logits
    assert (ref - ours).abs().max() < 1e-4
    assert (ref - untuned).abs().max() > 1e-3  # the adapter did something
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == str(gator_dir)


def test_bad_input_is_one_line_with_the_line_number(tmp_path, capsys):
    base = make_base(tmp_path / "base", chat=True)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "say red", "completion": "red"}\n{"prompt": "say red"}\n')
    code = main(["finetune", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "run"), *FLAGS])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "bad.jsonl, line 2: unknown record shape" in err and "--skip-bad-lines" in err
    good = write_chat(tmp_path / "chat.jsonl", n=10)
    code = main(["finetune", "--model", str(base), "--data", str(good), "--out", str(tmp_path / "run"), *FLAGS,
                 "--lora", "--targets", "q,nope"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "unknown LoRA target(s) ['nope']" in err
