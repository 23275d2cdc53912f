"""PEFT's adapter layout both ways, against PEFT itself (offline, tiny random models):
(1) Gator's adapter on Gator's transformers export, loaded by `peft.PeftModel.from_pretrained`, gives Gator's
    logits; (2) an adapter PEFT made on a transformers model loads into Gator (after import) with PEFT's
    logits, rsLoRA included; (3) an adapter whose keys or shapes do not match is refused, naming the key;
and `gator lora merge` writes a plain model that equals PEFT's merge_and_unload."""

import json

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from gator.cli import main as gator_main
from gator.config import ModelConfig
from gator.interop.hf import export_hf, import_hf
from gator.interop.peft import load_adapter, save_adapter, target_modules
from gator.model import Transformer
from gator.model.lora import LoRAConfig, apply_lora, lora_state_dict

V = 97
LLAMA = dict(vocab_size=V, context_length=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48,
             norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, tie_embeddings=False)
GPT2 = dict(vocab_size=V, context_length=32, d_model=32, n_layers=2, n_heads=4)


def randomize(params, seed=3, std=0.2):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.normal_(0, std)


def gator_lora_b(model):
    return [p for n, p in model.named_parameters() if ".lora_B." in n]


def peft_lora_b(model):
    return [p for n, p in model.named_parameters() if "lora_B" in n]


@pytest.mark.parametrize("shape,targets,rslora", [
    (LLAMA, ("q", "k", "v", "o", "gate", "up", "down"), False),
    (LLAMA, ("q", "v", "up"), True),
    (GPT2, ("qkv", "o", "up", "down"), False),
    (GPT2, ("qkv", "down"), True),  # only the MLP's c_proj: target_modules must say mlp.c_proj
])
def test_gator_adapter_loads_in_peft(tmp_path, shape, targets, rslora):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**shape)).eval()
    export_hf(model, tmp_path / "hf")
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=targets, rslora=rslora))
    ids = torch.randint(0, V, (2, 12))
    model.train()  # one training step moves B off zero; then random B so every adapter matters
    loss = model(ids[:, :-1], ids[:, 1:])[1]
    loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    randomize(gator_lora_b(model))
    model.eval()
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "hf"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["task_type"], cfg["bias"], cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == \
        ("LORA", "CAUSAL_LM", "none", 4, 8, rslora)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        base = hf(input_ids=ids).logits
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()(input_ids=ids).logits
        ours = model(ids)[0]
    assert (theirs - base).abs().max() > 1e-2  # PEFT really applied the adapter...
    assert (ours - theirs).abs().max() < 1e-4  # ...and computes what Gator computes


def test_target_modules_use_transformers_names():
    assert target_modules("llama", ("q", "k", "v", "o", "gate", "up", "down")) == \
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert target_modules("gpt2", ("qkv", "o", "up", "down")) == ["c_attn", "c_proj", "c_fc"]
    assert target_modules("gpt2", ("o",)) == ["attn.c_proj"]
    with pytest.raises(ValueError, match="use the target 'qkv'"):
        target_modules("gpt2", ("q",))
    with pytest.raises(ValueError, match="use the targets 'q', 'k', 'v'"):
        target_modules("llama", ("qkv",))


def peft_llama(tmp_path, lora_config):
    """A transformers Llama (random weights), saved; and PEFT's adapter on it with random B, saved."""
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    pm = peft.get_peft_model(hf, lora_config)
    randomize(peft_lora_b(pm))
    pm.save_pretrained(tmp_path / "adapter")
    return pm.eval()


def peft_gpt2(tmp_path, lora_config):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2,
                                                              n_head=4, bos_token_id=0, eos_token_id=0))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    pm = peft.get_peft_model(hf, lora_config)
    randomize(peft_lora_b(pm))
    pm.save_pretrained(tmp_path / "adapter")
    return pm.eval()


@pytest.mark.parametrize("make,lora", [
    (peft_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"])),
    (peft_llama, dict(r=2, lora_alpha=16, target_modules=["v_proj", "gate_proj"], use_rslora=True)),
    (peft_llama, dict(r=4, lora_alpha=4, target_modules=r".*\.(q_proj|down_proj)")),  # a regex
    (peft_gpt2, dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    (peft_gpt2, dict(r=3, lora_alpha=5, target_modules=["attn.c_proj"], fan_in_fan_out=True, use_rslora=True)),
], ids=["llama-all", "llama-rslora", "llama-regex", "gpt2-all", "gpt2-attn-proj-rslora"])
def test_peft_adapter_loads_in_gator(tmp_path, make, lora):
    pm = make(tmp_path, peft.LoraConfig(**lora))
    ids = torch.randint(0, V, (2, 12))
    import_hf(tmp_path / "hf", tmp_path / "gator")
    model = Transformer.from_pretrained(tmp_path / "gator").eval()
    with torch.no_grad():
        base = model(ids)[0]
        load_adapter(model, tmp_path / "adapter")
        ours = model(ids)[0]
        theirs = pm(input_ids=ids).logits
    assert (ours - base).abs().max() > 1e-2
    assert (ours - theirs).abs().max() < 1e-4
    assert model.lora_config.rslora == lora.get("use_rslora", False) and model.lora_config.r == lora["r"]
    # and back: Gator writes the same tensors under the same names
    save_adapter(model, tmp_path / "again")
    mine, peft_file = load_file(tmp_path / "again" / "adapter_model.safetensors"), \
        load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sorted(mine) == sorted(peft_file) and all(torch.equal(mine[k], peft_file[k]) for k in mine)


def test_mismatched_adapters_are_refused_naming_the_key(tmp_path):
    peft_llama(tmp_path, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    import_hf(tmp_path / "hf", tmp_path / "gator")
    good = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    assert key in good

    def attempt(state, config_changes=None, match=None):
        d = tmp_path / "bad"
        d.mkdir(exist_ok=True)
        save_file(state, str(d / "adapter_model.safetensors"))
        cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        (d / "adapter_config.json").write_text(json.dumps({**cfg, **(config_changes or {})}))
        model = Transformer.from_pretrained(tmp_path / "gator")
        with pytest.raises(ValueError, match=match):
            load_adapter(model, d)
        assert not lora_state_dict(model) and all(p.requires_grad for p in model.parameters())  # left as it was

    attempt({k: v for k, v in good.items() if k != key}, match=f"no tensor '{key}'")  # PEFT would load this
    attempt({**good, key: torch.zeros(16, 3)}, match=rf"'{key}' has shape \(16, 3\).*expects \(16, 4\)")
    extra = "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"  # the model has 2 layers
    attempt({**good, extra: torch.zeros(4, 32)}, match=f"'{extra}'")
    attempt(good, {"target_modules": ["q_proj", "v_proj", "k_proj"]}, match="k_proj.lora_A.weight")
    attempt(good, {"target_modules": ["q_proj", "lm_head"]}, match="'lm_head' is not one Gator's LoRA adapts")
    attempt(good, {"layers_to_transform": [0]}, match="layers_to_transform")
    attempt(good, {"use_dora": True}, match="use_dora")
    attempt(good, {"target_modules": r"model\.layers\.0\.self_attn\.(q|v)_proj"}, match="some layers only")


def test_a_refused_adapter_leaves_each_parameter_as_trainable_as_it_was(tmp_path):
    torch.manual_seed(0)
    save_adapter(apply_lora(Transformer(ModelConfig(**LLAMA)), LoRAConfig(r=2, targets=("q", "v"))), tmp_path / "a")
    state = load_file(tmp_path / "a" / "adapter_model.safetensors")
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, str(tmp_path / "a" / "adapter_model.safetensors"))
    model = Transformer(ModelConfig(**LLAMA))
    for name, p in model.named_parameters():  # e.g. a fine-tuning run that trains only the norms
        p.requires_grad_("norm" in name)
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    assert any(before.values()) and not all(before.values())
    with pytest.raises(ValueError, match="no tensor"):
        load_adapter(model, tmp_path / "a")
    assert not lora_state_dict(model) and {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_save_adapter_refuses_to_overwrite(tmp_path):
    model = apply_lora(Transformer(ModelConfig(**LLAMA)), LoRAConfig(r=2, targets=("q",)))
    save_adapter(model, tmp_path / "a")
    before = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    randomize(gator_lora_b(model))
    with pytest.raises(FileExistsError, match="force"):
        save_adapter(model, tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == before
    save_adapter(model, tmp_path / "a", force=True)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() != before
    assert [p.name for p in (tmp_path / "a").iterdir()] and not list((tmp_path / "a").glob("*.tmp"))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapter(Transformer(ModelConfig(**LLAMA)), tmp_path / "b")


def test_lora_merge_command_equals_peft_merge_and_unload(tmp_path, capsys):
    pm = peft_llama(tmp_path, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"],
                                              use_rslora=True))
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        reference = pm.merge_and_unload()(input_ids=ids).logits
    assert gator_main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "gator")]) == 0
    args = ["lora", "merge", "--model", str(tmp_path / "gator"), "--adapter", str(tmp_path / "adapter"),
            "--out", str(tmp_path / "merged")]
    assert gator_main(args) == 0
    merged = Transformer.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (merged(ids)[0] - reference).abs().max() < 1e-4
    # a plain model: `gator export hf` gives a transformers directory that needs no PEFT
    assert gator_main(["export", "hf", str(tmp_path / "merged"), str(tmp_path / "merged-hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged-hf")
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - reference).abs().max() < 1e-4
    capsys.readouterr()
    assert gator_main(args) == 1  # the output exists: refused, one line
    err = capsys.readouterr().err
    assert "already holds" in err and "--force" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "merged" / "tokenizer.json").write_text("{}")  # a file of an earlier model in the folder
    assert gator_main(args + ["--force"]) == 0
    assert not (tmp_path / "merged" / "tokenizer.json").exists()  # the folder is replaced as a whole
    assert Transformer.from_pretrained(tmp_path / "merged").config == merged.config
    (tmp_path / "merged" / "notes.txt").write_text("mine")  # a folder with other files is never replaced
    capsys.readouterr()
    assert gator_main(args + ["--force"]) == 1
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "merged" / "notes.txt").exists()
    assert gator_main(["lora", "merge", "--model", str(tmp_path / "gator"), "--adapter", str(tmp_path / "nope"),
                       "--out", str(tmp_path / "m2")]) == 1
    assert "adapter_config.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()  # no partial output
    (tmp_path / "taken").write_text("a file")
    assert gator_main([*args[:-1], str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err
    assert "taken is an existing file" in err and len(err.strip().splitlines()) == 1


def test_lora_merge_checks_that_the_output_is_writable_before_merging(tmp_path, read_only_dir, monkeypatch, capsys):
    """On a read-only filesystem (conftest.py's read_only_dir) the command stops before it loads the adapter."""
    import gator.interop.peft

    model = Transformer(ModelConfig(**LLAMA))
    model.save_pretrained(tmp_path / "base")
    save_adapter(apply_lora(model, LoRAConfig(r=2, targets=("q",))), tmp_path / "adapter")
    loaded = []
    monkeypatch.setattr(gator.interop.peft, "load_adapter", lambda *a, **k: loaded.append(a))
    capsys.readouterr()
    assert gator_main(["lora", "merge", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"),
                       "--out", str(read_only_dir / "merged")]) == 1
    err = capsys.readouterr().err
    assert "read-only file system" in err and len(err.strip().splitlines()) == 1
    assert loaded == [] and list(read_only_dir.iterdir()) == []
