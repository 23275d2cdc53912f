"""Setting a training run up, once: everything the loop needs, in one explicit `Run`.

    settings -> dtype -> model (fresh from a preset, or `init_from` a model folder) -> the objective
    prepares it (LoRA, heads, frozen parameters) -> batch geometry -> resume (weights) -> device and
    process wrapping -> optimizer over the trainable parameters -> resume (optimizer, counters, RNG)
    -> the objective checks its data -> run folder (settings, metrics log)

Batch geometry: every step reads `global batch = micro_batch x accumulation steps x processes` samples;
accumulation steps = batch_tokens / (seq_len x micro_batch x processes), rounded, at least 1.

Mixed precision: matmuls run in bf16 (or fp16 with a loss scaler where bf16 is missing) under
`torch.autocast` where `gator.runtime` says that dtype is fast, while the weights, gradients and
optimizer state stay fp32 (the "master weights").
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from gator.config import ModelConfig, get_preset
from gator.errors import TrainingError
from gator.model import Transformer
from gator.model.transformer import CONFIG_NAME, WEIGHTS_NAME, load_safetensors
from gator.outputs import output_dir
from gator.runtime import resolve_dtype
from gator.train import distributed as D
from gator.train.checkpoint import (
    check_same_shape,
    checkpoint_dir,
    load_training_state,
    resolve_model_dir,
    set_rng_state,
)
from gator.train.config import TrainConfig
from gator.train.metrics import MetricsLog, peak_flops, training_flops_per_token
from gator.train.objectives import Objective
from gator.train.optim import make_optimizer

COUNTERS = ("step", "samples", "tokens", "elapsed", "warmup_elapsed", "best_val")  # saved in every checkpoint
# what a run leaves in its folder: a new run there must --resume it or --force a fresh start
RUN_FILES = ("checkpoint", "best", ".checkpoint.old", ".best.old", "metrics.jsonl", "summary.json", "loss.png")


@dataclass
class Run:
    """One training run: what `setup` built, and the counters the loop advances (and checkpoints save)."""

    config: TrainConfig
    env: D.Env  # rank, world size, device
    objective: Objective
    raw_model: nn.Module  # the model itself: weights, save_pretrained, after_optimizer_step
    model: nn.Module  # what the step calls: raw_model, DDP/FSDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    dtype: torch.dtype  # the autocast dtype (fp32: no autocast)
    seq_len: int
    accum: int  # micro-batches per process per step
    global_batch: int  # samples per optimizer step, all processes together
    run_dir: Path
    log: MetricsLog
    flops_per_token: float
    peak_flops: float  # of one process's device in `dtype`, for MFU
    resumed: bool = False
    # counters (COUNTERS): where training stands
    step: int = 0
    samples: int = 0
    tokens: int = 0
    elapsed: float = 0.0  # seconds of training, rank 0's clock, over all sessions of the run
    warmup_elapsed: float | None = None  # `elapsed` when warmup ended (time-based schedules start there)
    best_val: float = math.inf

    @property
    def device(self) -> torch.device:
        return self.env.device

    def autocast(self):
        """The mixed-precision context of forward passes (a no-op in fp32)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def counters(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COUNTERS}

    def say(self, msg: str) -> None:
        """Print a line on rank 0, above the progress bar."""
        if self.env.is_main:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stdout)


def setup(cfg: TrainConfig, env: D.Env, objective: Objective) -> Run:
    """Build everything a run needs (resuming from `out_dir/checkpoint` with cfg.resume); see the module doc."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = env.device
    dtype = resolve_dtype(cfg.dtype, device)
    run_dir = output_dir(cfg.out_dir, earlier_work=RUN_FILES, resume=cfg.resume, force=cfg.force, can_resume=True,
                         what="a training run")  # before any work: refuse to overwrite a run, check writability
    if cfg.force and not cfg.resume and env.is_main:
        start_over(run_dir)
    peak = cfg.peak_flops or peak_flops(device, dtype, seconds=0.2)  # before seeding the run's RNG

    # ---- the model: fresh or init_from, then made into what trains by the objective ----
    torch.manual_seed(cfg.seed)
    raw = objective.prepare_model(initial_model(cfg, objective.vocab_size), env)
    mcfg = raw.config
    seq_len = cfg.seq_len or mcfg.context_length
    if seq_len > mcfg.context_length:
        raise TrainingError(f"seq_len {seq_len} is longer than the model's context_length "
                            f"{mcfg.context_length}; lower seq_len or set model_config.context_length")

    # ---- batch geometry: global batch = micro_batch * accum * processes samples ----
    accum = max(1, round(cfg.batch_tokens / (seq_len * cfg.micro_batch * env.world)))
    global_batch = cfg.micro_batch * accum * env.world

    # ---- resume: the weights first (before wrapping), the rest once the optimizer exists ----
    saved = None
    if cfg.resume:
        resume_dir = checkpoint_dir(run_dir)
        if resume_dir is None:
            raise TrainingError(f"--resume: no checkpoint in {run_dir}; start without --resume")
        saved_config = json.loads((resume_dir / CONFIG_NAME).read_text())
        saved_config.pop("head", None)  # a reward model's marker (gator/model/heads.py)
        check_same_shape(ModelConfig.from_dict(saved_config), mcfg, resume_dir)
        raw.load_checked_state_dict(load_safetensors(resume_dir / WEIGHTS_NAME), source=str(resume_dir))
        saved = load_training_state(resume_dir)
    raw.to(device)
    model = D.wrap(raw, env, cfg.parallel)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(raw, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, device,
                               kind=cfg.optimizer, momentum=cfg.muon_momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    run = Run(config=cfg, env=env, objective=objective, raw_model=raw, model=model, optimizer=optimizer,
              scaler=scaler, dtype=dtype, seq_len=seq_len, accum=accum, global_batch=global_batch, run_dir=run_dir,
              log=MetricsLog(run_dir / "metrics.jsonl"),
              flops_per_token=training_flops_per_token(mcfg, raw.num_matmul_params(), seq_len), peak_flops=peak)
    if saved is not None:
        D.load_optimizer_state(raw, optimizer, saved["optimizer"], env, cfg.parallel)
        if "scaler" in saved and scaler.is_enabled():
            scaler.load_state_dict(saved["scaler"])
        for k in COUNTERS:
            setattr(run, k, saved[k])
        objective.load_state_dict(saved.get("objective", {}))
        run.resumed = True

    objective.start(run)
    if saved is not None:
        set_rng_state(saved["rng"])  # after `start`, which may have drawn random numbers in the first session too

    # ---- the run folder: settings, and a metrics log that continues where the checkpoint was ----
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if run.resumed:
            run.log.truncate_after(run.step)
        elif run.log.path.exists():
            run.log.path.unlink()
        (run_dir / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
    run.say(f"model {cfg.init_from or cfg.model}: {raw.num_params():,} parameters"
            + (f" ({trainable:,} trainable)" if trainable != raw.num_params() else "")
            + f", d_model {mcfg.d_model}, {mcfg.n_layers} layers, vocab {mcfg.vocab_size}; {_dtype_name(dtype)} "
            f"on {device} x {env.world}")
    run.say(f"{objective.name}: global batch {global_batch} x {seq_len} = {global_batch * seq_len:,} tokens "
            f"({accum} accumulation step{'s' if accum > 1 else ''})"
            + (f"; resuming at step {run.step}" if run.resumed else ""))
    return run


def start_over(run_dir: Path) -> None:
    """`force`: remove what an earlier run left in the folder, so that no old best/ or log mixes with this run."""
    for name in RUN_FILES:
        for path in run_dir.glob(name):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def initial_model(cfg: TrainConfig, vocab_size: int) -> Transformer:
    """A fresh model from the preset `cfg.model` + `cfg.model_config` (vocab_size from the data), or the
    model in `cfg.init_from` (a model folder or a run folder: its best/ weights)."""
    if cfg.init_from:
        where = resolve_model_dir(cfg.init_from)
        model = Transformer.from_pretrained(where, dtype=torch.float32)  # fp32 master weights, whatever was saved
        have = model.config.to_dict()
        for key, value in cfg.model_config.items():
            if have.get(key) != value:
                raise TrainingError(f"init_from={cfg.init_from}: model_config.{key}={value!r}, but the model in "
                                    f"{where} has {key}={have.get(key)!r}; a loaded model keeps its config, so drop "
                                    "that override (or set it to the model's value)")
        if model.config.vocab_size < vocab_size:
            raise TrainingError(f"the model in {where} has {model.config.vocab_size} token rows, fewer than the "
                                f"vocabulary of the data ({vocab_size}); prepare the data with the model's tokenizer")
        return model
    overrides = dict(cfg.model_config)
    overrides.setdefault("vocab_size", vocab_size)
    if overrides["vocab_size"] < vocab_size:
        raise TrainingError(f"model_config.vocab_size {overrides['vocab_size']} is smaller than the vocabulary of "
                            f"the data ({vocab_size}); leave vocab_size unset to take it from the data")
    return Transformer(get_preset(cfg.model, **overrides))


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + grad scaler"}.get(dtype, "fp32")

