"""LoRA in the training loop: what a LoRA run trains, checkpoints and writes (Hu et al., 2021; the layers
themselves are gator/model/lora.py).

An objective's `prepare_model` calls `prepare_lora(model, config, env)`: the frozen model gets adapters on
the targeted projections (only they have `requires_grad`, so the loop's optimizer holds only them) and is
wrapped in `LoRAModel`, which the loop treats like any `Transformer`. What it saves, in checkpoint/ and
best/, is what users need:

    config.json + model.safetensors          the merged model (W + s B A): a plain Gator model folder that
                                             `gator sample`, `gator export hf|gguf` and `gator serve` read
    adapter_config.json +                    the adapter alone in PEFT's layout, for the base model (the
    adapter_model.safetensors                one the run started from): transformers + PEFT and vLLM load it

Exact resume cannot come from the merged weights (W + s B A - s B A is W only up to rounding), so the
adapters travel, bit for bit, in the objective's part of training_state.pt (`lora_state`), while the
frozen base is rebuilt from `init_from` as in the first session (a checksum catches a changed base).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gator.errors import TrainingError
from gator.model.lora import LoRAConfig, apply_lora, default_targets, lora_layers, lora_state_dict, trainable_summary
from gator.train.config import TrainConfig


def lora_config(cfg: TrainConfig, model_config: Any) -> LoRAConfig:
    """The LoRAConfig of a run's settings (targets default to every projection PEFT can express)."""
    targets = cfg.lora_targets or default_targets(model_config)
    return LoRAConfig(r=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=targets,
                      rslora=cfg.lora_rslora)


def prepare_lora(model: nn.Module, cfg: TrainConfig, env: Any, base_dir: str | Path | None) -> LoRAModel:
    """Freeze `model`, add adapters as `cfg` says, and wrap it for the loop."""
    if env.distributed and cfg.parallel == "fsdp":
        raise TrainingError("LoRA runs replicate the (frozen) model: use parallel=ddp, not fsdp")
    try:
        apply_lora(model, lora_config(cfg, model.config))
    except ValueError as err:
        raise TrainingError(f"LoRA: {err}") from None
    return LoRAModel(model, base_dir)


class LoRAModel(nn.Module):
    """A Transformer with LoRA adapters, as the training loop uses it: calls and attributes go to the
    model; `save_pretrained` writes the merged model and the PEFT adapter (see the module docstring)."""

    def __init__(self, model: nn.Module, base_dir: str | Path | None):
        super().__init__()
        self.model = model
        self.base_dir = str(Path(base_dir).resolve()) if base_dir is not None else None
        self.base_checksum = base_checksum(model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # config, num_params, after_optimizer_step, last_losses, ...
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def summary(self) -> str:
        c = self.model.lora_config
        return (f"LoRA r={c.r}, alpha={c.alpha:g}{' (rsLoRA)' if c.rslora else ''}, dropout={c.dropout:g}, targets "
                f"{','.join(c.targets)}; {trainable_summary(self.model)}")

    def merged_state(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The plain model's state dict with every adapter folded in: W + s B A (computed in fp32)."""
        state = {k.removeprefix("model."): v for k, v in (state or self.state_dict()).items()}
        out = {k: v for k, v in state.items() if ".lora_A." not in k and ".lora_B." not in k}
        for name, layer in lora_layers(self.model).items():
            w = out[f"{name}.weight"].float().clone()
            start = 0
            for target, rows in layer.slices:
                if target in layer.lora_A:
                    A, B = state[f"{name}.lora_A.{target}"].float(), state[f"{name}.lora_B.{target}"].float()
                    w[start:start + rows] += layer.scaling * (B @ A)
                start += rows
            out[f"{name}.weight"] = w.to(state[f"{name}.weight"].dtype)
        return out

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """The merged model (config.json, model.safetensors, tokenizer) plus the adapter in PEFT layout
        (adapter_config.json, adapter_model.safetensors) when the architecture has a PEFT equivalent."""
        from gator.interop.peft import save_adapter

        directory = Path(directory)
        self.model.save_pretrained(directory, tokenizer, state_dict=self.merged_state(state_dict))
        if peft_supported(self.model):
            save_adapter(self.model, directory, base_model_name_or_path=self.base_dir, force=True)
        return directory

    def load_checked_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """On resume: check that the saved (merged) weights fit this model. The frozen base stays as
        `init_from` built it and the adapters come from the training state (`load_lora_state`)."""
        expected = self.merged_state()
        if self.model.config.tie_embeddings:
            expected.pop("lm_head.weight", None)
        bad = sorted(set(expected) ^ set(state)) or [k for k in state if state[k].shape != expected[k].shape]
        if bad:
            raise TrainingError(f"{source} does not hold this model's weights (first mismatch: {bad[0]!r}); was it "
                                "written by another model? Use a new --out folder")


def base_checksum(model: nn.Module) -> float:
    """A fingerprint of the frozen weights (float64 sum of |w|): resuming on another base is refused."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for n, p in model.named_parameters()
                         if ".lora_A." not in n and ".lora_B." not in n))


def lora_state(model: LoRAModel) -> dict[str, Any]:
    """The adapters, bit for bit, and the base's checksum: the objective's part of training_state.pt."""
    return {"base_checksum": model.base_checksum,
            **{f"lora.{k}": v.detach().cpu().clone() for k, v in lora_state_dict(model.model).items()}}


def load_lora_state(model: LoRAModel, state: dict[str, Any]) -> None:
    from gator.model.lora import load_lora_state_dict

    adapters = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
    if not adapters:
        raise TrainingError("the checkpoint is not from a LoRA run (it holds no adapters); resume without lora=true "
                            "or use a new --out folder")
    if abs(state["base_checksum"] - model.base_checksum) > 1e-9 * max(1.0, abs(model.base_checksum)):
        raise TrainingError(f"the base model ({model.base_dir}) is not the one this LoRA run started from; "
                            "resume with the original init_from model, or start a new run")
    try:
        load_lora_state_dict(model.model, adapters)
    except ValueError as err:
        raise TrainingError(f"cannot resume the LoRA run: {err}; resume with the run's own lora settings") from None


def peft_supported(model: nn.Module) -> bool:
    """Whether PEFT has names for this architecture's adapters (GPT-2 and Llama/Mistral families)."""
    from gator.interop.hf import hf_family
    from gator.interop.peft import MODULES

    try:
        family = hf_family(model.config)
    except ValueError:
        return False
    return family in MODULES or family == "mistral"
