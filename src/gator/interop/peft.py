"""PEFT's LoRA adapter layout, both ways: Gator adapters that `peft.PeftModel.from_pretrained` loads on
Gator's transformers export, and adapters made with PEFT that load into Gator (after `gator import hf`).

An adapter directory holds two files:
- adapter_config.json: peft_type "LORA", r, lora_alpha, lora_dropout, use_rslora, target_modules (names
  of transformers modules, matched as PEFT matches them: the full name or its ending after a dot), bias
  "none", task_type "CAUSAL_LM", base_model_name_or_path.
- adapter_model.safetensors: lora_A (r, in) and lora_B (out, r) of every adapted module, named after the
  transformers module: base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight (Llama, Mistral),
  base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight (GPT-2; the same (r, in) / (out, r)
  shapes although GPT-2's Conv1D stores its own weight transposed).

PEFT quietly leaves an adapter at its initial value when the file lacks its tensors; `load_adapter`
refuses any missing, unexpected or misshapen tensor instead, naming it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gator.config import ModelConfig
from gator.interop.hf import hf_family
from gator.model.lora import LoRAConfig, apply_lora, lora_layers, remove_lora
from gator.model.transformer import _atomic_write, load_safetensors

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# Gator target -> the transformers module it adapts, inside one decoder layer.
MODULES = {
    "llama": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
    "gpt2": {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
}
LAYER = {"llama": "model.layers.{i}.", "gpt2": "transformer.h.{i}."}  # transformers' name of decoder layer i
PREFIX = "base_model.model."  # PeftModel wraps the transformers model, which wraps the decoder


def _family(config: ModelConfig) -> str:
    family = hf_family(config)
    family = "llama" if family == "mistral" else family
    if family not in MODULES:
        raise ValueError(f"PEFT adapters are supported for GPT-2 and Llama/Mistral models, not {family}")
    return family


def _module_name(family: str, layer: int, target: str) -> str:
    """The transformers module (without PEFT's prefix) that Gator's `target` in block `layer` maps to."""
    if target not in MODULES[family]:
        hint = ("GPT-2 keeps Q, K and V in one c_attn matrix, which PEFT adapts as one module: use the "
                "target 'qkv'" if family == "gpt2" else "Llama keeps q_proj, k_proj and v_proj separate: use "
                "the targets 'q', 'k', 'v'")
        raise ValueError(f"LoRA target {target!r} has no PEFT equivalent for {family} models; {hint}")
    return LAYER[family].format(i=layer) + MODULES[family][target]


def _block_index(name: str) -> int:
    """blocks.{i}.attn.qkv -> i."""
    parts = name.split(".")
    if parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"LoRA layer {name!r} is not inside a transformer block")
    return int(parts[1])


def peft_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's adapter parameters under PEFT's key names."""
    family = _family(model.config)
    out: dict[str, nn.Parameter] = {}
    for name, layer in lora_layers(model).items():
        for target in layer.lora_A:
            key = PREFIX + _module_name(family, _block_index(name), target)
            out[key + ".lora_A.weight"] = layer.lora_A[target]
            out[key + ".lora_B.weight"] = layer.lora_B[target]
    return out


def target_modules(family: str, targets: list[str] | tuple[str, ...]) -> list[str]:
    """PEFT's target_modules for Gator targets: the shortest module names that select exactly them
    (GPT-2 calls both its attention output and its MLP output c_proj: "attn.c_proj" picks one)."""
    names = [_module_name(family, 0, t).removeprefix(LAYER[family].format(i=0)) for t in targets]
    out: list[str] = []
    for full in names:
        short = full.rpartition(".")[2]
        namesakes = [m for m in MODULES[family].values() if m.rpartition(".")[2] == short]
        name = short if all(m in names for m in namesakes) else full
        if name not in out:
            out.append(name)
    return out


def save_adapter(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str | None = None,
                 force: bool = False) -> Path:
    """Write adapter_config.json and adapter_model.safetensors (each atomically) for a model with LoRA
    adapters; an existing adapter in `out_dir` is only replaced with force=True."""
    from safetensors.torch import save_file

    config: LoRAConfig | None = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("the model has no LoRA adapters to save; apply_lora (or load_adapter) first")
    family = _family(model.config)
    state = {key: p.detach().cpu().contiguous() for key, p in peft_parameters(model).items()}
    out = Path(out_dir)
    existing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if (out / n).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; choose another directory or pass "
                              "force=True (--force) to replace it")
    out.mkdir(parents=True, exist_ok=True)
    alpha = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": config.r, "lora_alpha": alpha, "lora_dropout": config.dropout, "use_rslora": config.rslora,
        "target_modules": target_modules(family, config.targets), "bias": "none",
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D stores (in, out); PEFT needs to know to merge
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
        "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False,
    }
    _atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(peft_config, indent=2) + "\n"))
    return out


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------

UNSUPPORTED = {  # adapter_config.json settings Gator's LoRA does not implement, and the value it needs
    "use_dora": False, "lora_bias": False, "modules_to_save": None, "layers_to_transform": None,
    "layer_replication": None, "rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": None,
    "target_parameters": None, "use_qalora": False, "trainable_token_indices": None,
}


def read_adapter_config(adapter_dir: str | Path, model_config: ModelConfig) -> LoRAConfig:
    """The LoRAConfig of a PEFT adapter directory, for a model of this config (whose family decides how
    target_modules name Gator's targets)."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {cfg.get('peft_type')!r}; only LoRA adapters (LORA) load into Gator")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias {cfg['bias']!r} (trained biases) is not supported; only bias 'none'")
    for key, default in UNSUPPORTED.items():
        if cfg.get(key, default) not in (default, None, {}, [], False):
            raise ValueError(f"{path}: {key}={cfg[key]!r} is not supported by Gator's LoRA (it needs {default!r})")
    family = _family(model_config)
    targets = _targets_from_peft(cfg.get("target_modules"), family, model_config.n_layers, path)
    return LoRAConfig(r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout", 0.0)),
                      targets=targets, rslora=bool(cfg.get("use_rslora", False)))


def _targets_from_peft(target_modules: Any, family: str, n_layers: int, path: Path) -> tuple[str, ...]:
    """Gator targets selected by PEFT's target_modules, which must select a target in every layer or none."""
    if target_modules == "all-linear":
        return tuple(MODULES[family])
    if not target_modules:
        raise ValueError(f"{path}: target_modules is empty")

    def matches(key: str) -> bool:  # PEFT's rule (tuners_utils.check_target_module_exists)
        if isinstance(target_modules, str):
            return re.fullmatch(target_modules, key) is not None
        return any(key == t or key.endswith("." + t) for t in target_modules)

    targets = []
    for target, module in MODULES[family].items():
        hits = [matches(LAYER[family].format(i=i) + module) for i in range(n_layers)]
        if any(hits) and not all(hits):
            raise ValueError(f"{path}: target_modules adapts {module} in some layers only; Gator adapts a "
                             "target in every layer")
        if all(hits):
            targets.append(target)
    if isinstance(target_modules, list):
        for t in target_modules:
            if not any(m == t or m.endswith("." + t) for m in MODULES[family].values()):
                raise ValueError(f"{path}: target module {t!r} is not one Gator's LoRA adapts for {family} "
                                 f"(it adapts {', '.join(MODULES[family].values())})")
    if not targets:
        raise ValueError(f"{path}: target_modules {target_modules!r} selects no module Gator's LoRA adapts")
    return tuple(targets)


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Apply the adapter in `adapter_dir` (PEFT layout) to `model` in place and return it. Every tensor
    the config implies must be in the file with the right shape, and nothing else may be."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir, model.config)
    state = load_safetensors(adapter_dir / WEIGHTS_NAME)
    trainable = [(p, p.requires_grad) for p in model.parameters()]  # apply_lora freezes them all
    apply_lora(model, config)
    try:
        _fill(model, state, adapter_dir / WEIGHTS_NAME, config.r)
    except BaseException:
        remove_lora(model, merge=False)  # leave the model as it was, frozen parameters included
        for p, flag in trainable:
            p.requires_grad_(flag)
        raise
    return model


def _fill(model: nn.Module, state: dict[str, torch.Tensor], where: Path, r: int) -> None:
    expected = peft_parameters(model)
    for key in expected:
        if key not in state:
            raise ValueError(f"{where} has no tensor {key!r}, which its target_modules require; the adapter is "
                             "incomplete or was made for another model")
    for key in state:
        if key not in expected:
            raise ValueError(f"{where} holds tensor {key!r}, which matches no adapted module of this model; "
                             "was it made for another model or with other target_modules?")
    for key, param in expected.items():
        if tuple(state[key].shape) != tuple(param.shape):
            raise ValueError(f"{where}: tensor {key!r} has shape {tuple(state[key].shape)}, this model with r="
                             f"{r} expects {tuple(param.shape)}")
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(state[key])
