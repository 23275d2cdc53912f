"""Training settings: one flat dataclass, filled from a YAML recipe and then from command-line overrides.

A recipe is a YAML file of `key: value` lines whose keys are the fields of `TrainConfig` below; the
model is a preset name plus field overrides (`model_config:`). `gator pretrain --recipe demo` finds
`recipes/demo.yaml`; a path to a `.yaml` file works too. Overrides are `key=value` strings (values in
YAML syntax, dotted keys reach into `model_config`), so the command line can change anything a recipe
sets. An unknown key is an error that names the key, where it came from, and the closest known key.

Where the best settings differ by machine, a recipe says so in a `per_dtype:` section: settings for
each dtype a run can compute in (bf16, fp16, fp32), merged over the recipe's other settings for the
dtype this run resolves to (`dtype: auto` is the device's fast dtype, decided by gator.runtime: fp32 on
a CPU without native bf16). Command-line overrides still come last. E.g. in recipes/demo.yaml:

    per_dtype:
      bf16: {optimizer: muon}     # Muon's Newton-Schulz iteration runs in fast bf16
      fp32: {optimizer: adamw}    # ... which an AVX2-only CPU would run in fp32
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_RECIPES = Path(__file__).resolve().parents[3] / "recipes"  # <repo>/recipes (src layout)
PER_DTYPE = "per_dtype"  # recipe section: settings per compute dtype (see above)
DTYPE_NAMES = ("bf16", "fp16", "fp32")


def recipe_dirs() -> list[Path]:
    """Where `--recipe NAME` looks: ./recipes, then the recipes folder of this checkout."""
    return [Path.cwd() / "recipes", REPO_RECIPES]


@dataclass
class TrainConfig:
    # --- data and output ---
    data: str = ""  # a shard folder made by `gator prepare` (finetune: a JSONL file of samples)
    tokenizer: str | None = None  # tokenizer folder; None = the one recorded in the shard manifest
    out_dir: str = "runs/pretrain"  # run folder: checkpoint/, best/, metrics.jsonl, loss.png
    # --- model: a preset from gator.config.PRESETS plus field overrides (vocab_size comes from the data),
    # or the weights and config of an existing model (init_from; model_config may only restate its values) ---
    model: str = "gatorgpt"
    model_config: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # a model folder (or run folder) to start from instead of a fresh model
    # --- batch: global batch in tokens = seq_len * micro_batch * accumulation steps * processes ---
    seq_len: int | None = None  # None = the model's context_length
    micro_batch: int = 8  # sequences per forward/backward in each process
    batch_tokens: int = 65536  # global batch in tokens; accumulation steps are derived from it
    # --- how long: whichever limit comes first ---
    max_steps: int | None = None
    max_time: str | float | None = None  # "60s", "3m", "1.5h" or seconds
    # --- optimizer and schedule ---
    optimizer: str = "adamw"  # "adamw" | "muon" (Muon for the blocks' matrices, AdamW for the rest)
    muon_momentum: float = 0.95
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" | "wsd" (warmup-stable-decay) | "constant"
    decay_fraction: float = 0.2  # wsd: the last fraction of training decays linearly to min_lr
    weight_decay: float = 0.1  # applied to matrices (linear weights, embeddings) only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off
    # --- precision and speed ---
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" | "bf16" | "fp16" | "fp32" (autocast; master weights stay fp32)
    compile: bool = False  # torch.compile the model
    parallel: str = "ddp"  # under torchrun: "ddp" (replicate) or "fsdp" (shard with fully_shard)
    threads: int | None = None  # CPU threads per process; None = leave torch's default
    # --- evaluation, logging, checkpoints ---
    eval_every: int = 200  # steps (and always at the end)
    eval_tokens: int = 65536  # validation tokens per evaluation (the same windows every time)
    log_every: int = 10
    ckpt_every: int = 500
    peak_flops: float | None = None  # for the MFU estimate; None = known GPU table or a measured matmul
    seed: int = 0
    resume: bool = False  # continue from out_dir/checkpoint
    force: bool = False  # start over in an out_dir that holds a run (else that is refused: resume or force)
    progress: bool = True
    # --- fine-tuning (`gator finetune`, gator/train/objectives/sft.py): data is then a JSONL file ---
    val_fraction: float = 0.05  # share of the samples held out for the validation loss
    packing: bool = False  # several short samples per row, each attending only to itself
    skip_bad_lines: bool = False  # leave malformed JSONL lines out (counted and reported) instead of stopping
    lora: bool = False  # train LoRA adapters only (Hu et al., 2021); see gator/train/lora.py
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # e.g. [q, k, v, o, gate, up, down]; None = every projection
    lora_rslora: bool = False  # scale by alpha / sqrt(rank) instead of alpha / rank

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name}: {msg}")

        for name in ("micro_batch", "batch_tokens", "eval_every", "eval_tokens", "log_every", "ckpt_every"):
            need(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        need(self.seq_len is None or self.seq_len > 0, "seq_len", f"must be positive, got {self.seq_len}")
        need(self.max_steps is None or self.max_steps > 0, "max_steps", f"must be positive, got {self.max_steps}")
        need(self.optimizer in ("adamw", "muon"), "optimizer", f"expected adamw or muon, got {self.optimizer!r}")
        need(not (self.optimizer == "muon" and self.parallel == "fsdp"), "optimizer",
             "muon orthogonalizes whole matrices, which FSDP shards across processes; use parallel=ddp "
             "or optimizer=adamw")
        need(0 <= self.muon_momentum < 1, "muon_momentum", f"expected a value in [0, 1), got {self.muon_momentum}")
        need(self.schedule in ("cosine", "wsd", "constant"), "schedule",
             f"expected cosine, wsd or constant, got {self.schedule!r}")
        need(self.dtype in ("auto", "bf16", "fp16", "fp32"), "dtype",
             f"expected auto, bf16, fp16 or fp32, got {self.dtype!r}")
        need(self.parallel in ("ddp", "fsdp"), "parallel", f"expected ddp or fsdp, got {self.parallel!r}")
        need(0 < self.decay_fraction <= 1, "decay_fraction", f"must be in (0, 1], got {self.decay_fraction}")
        need(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        need(isinstance(self.model_config, dict), "model_config", "must be a mapping of ModelConfig fields")
        need(0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        need(self.lora_targets is None or isinstance(self.lora_targets, list), "lora_targets",
             f"must be a list such as [q, k, v, o], got {self.lora_targets!r}")
        if self.max_time is not None:
            parse_duration(self.max_time)

    @property
    def max_seconds(self) -> float | None:
        return None if self.max_time is None else parse_duration(self.max_time)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_duration(value: str | float) -> float:
    """Seconds from 90, "90", "90s", "3m", "1.5h"."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(value))
        if not m:
            raise ValueError(f"max_time: cannot read {value!r} as a duration; write e.g. 60s, 3m or 1.5h")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"max_time must be positive, got {value!r}")
    return seconds


def find_recipe(name: str | Path) -> Path:
    """A recipe path: the argument itself if it is a file, else NAME.yaml in recipes/."""
    path = Path(name)
    if path.is_file():
        return path
    for d in recipe_dirs():
        candidate = d / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise FileNotFoundError(f"no recipe {name!r}: not a file, and not one of {known}")


def load_recipe(name: str | Path) -> dict[str, Any]:
    path = find_recipe(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ValueError(f"recipe {path} is not valid YAML{at} ({getattr(err, 'problem', None) or err}); "
                         "write one `key: value` per line") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a mapping of key: value lines")
    section = data.get(PER_DTYPE)
    if section is not None:
        if not (isinstance(section, dict) and set(section) <= set(DTYPE_NAMES)
                and all(isinstance(v, dict) for v in section.values())):
            raise ValueError(f"recipe {path}: {PER_DTYPE} must map bf16, fp16 or fp32 to settings, e.g. "
                             f"`{PER_DTYPE}: {{fp32: {{optimizer: adamw}}}}`")
        for name, settings in section.items():
            _check_keys(settings, f"recipe {path}, {PER_DTYPE}.{name}")
    _check_keys({k: v for k, v in data.items() if k != PER_DTYPE}, f"recipe {path}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["lr=3e-4", "model_config.n_layers=4"] -> {"lr": 0.0003, "model_config": {"n_layers": 4}}."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ValueError(f"override {item!r}: cannot read {value!r} as a value; quote text, e.g. "
                             f"{key}='{value}'") from None
        target = out
        *parents, last = key.strip().split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = parsed
    return out


def make_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a recipe (optional) with overrides on top; model_config overrides are merged."""
    values: dict[str, Any] = load_recipe(recipe) if recipe else {}
    overrides = dict(overrides or {})
    _check_keys(overrides, "override")
    section = values.pop(PER_DTYPE, None)
    if section:
        chosen = section.get(compute_dtype_name({**values, **overrides}), {})
        values.update({k: v for k, v in chosen.items() if k != "model_config"})
        values["model_config"] = {**(values.get("model_config") or {}), **(chosen.get("model_config") or {})}
    model_over = overrides.pop("model_config", None) or {}
    values.update(overrides)
    values["model_config"] = {**(values.get("model_config") or {}), **model_over}
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def compute_dtype_name(values: dict[str, Any]) -> str:
    """"bf16", "fp16" or "fp32": the dtype a run with these settings computes in (its `dtype`, where "auto"
    is the fast dtype of its `device` by gator.runtime's policy)."""
    import torch

    from gator.runtime import resolve_dtype
    from gator.train.distributed import pick_device

    device = pick_device(values.get("device", TrainConfig.device))
    dtype = resolve_dtype(values.get("dtype", TrainConfig.dtype), device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def _check_keys(values: dict[str, Any], where: str) -> None:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise ValueError(f"{where}: unknown key {key!r}{hint}")
    model_config = values.get("model_config") or {}
    if model_config:
        from gator.config import ModelConfig

        fields = [f.name for f in dataclasses.fields(ModelConfig)]
        for key in model_config:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{where}: unknown model_config key {key!r}{hint}")


def _coerce(key: str, value: Any) -> Any:
    """YAML reads 1e-3 as a string; turn numbers written that way into floats for float fields."""
    kind = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[key]
    if isinstance(value, str) and kind in ("float", "float | None"):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if kind in ("int", "int | None") and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
