"""The pretraining loop: one function, `pretrain`, read top to bottom (the shape of nanoGPT's train.py).

    settings -> processes and device -> data -> model -> optimizer -> (resume) -> loop:
        lr for this step -> accumulate gradients over micro-batches -> clip -> step
        -> log, evaluate, checkpoint, stop on a signal or a limit
    -> final evaluation and checkpoint -> summary

Every step reads `global batch = micro_batch x accumulation steps x processes` sequences of
`seq_len + 1` tokens; which windows they are is a pure function of (seed, sample number), see
`gator.data.shards.WindowOrder`. That is what makes `--resume` exact (the resumed run reads what the
uninterrupted run would have read) and lets N processes reproduce one process with accumulation.

Mixed precision: matmuls run in bf16 (or fp16 with a loss scaler where bf16 is missing) under
`torch.autocast`, while the weights, gradients and optimizer state stay fp32 (the "master weights").
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml

from gator.cli import GatorError
from gator.config import ModelConfig, get_preset
from gator.data.shards import TokenData, WindowOrder, load_manifest, load_tokenizer, tokenizer_info
from gator.model import Transformer
from gator.model.transformer import load_safetensors
from gator.train import distributed as D
from gator.train.checkpoint import (
    check_same_shape,
    checkpoint_dir,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gator.train.config import TrainConfig, make_config
from gator.train.metrics import (
    MetricsLog,
    bits_per_byte,
    format_count,
    format_seconds,
    peak_flops,
    plot_losses,
    training_flops_per_token,
)
from gator.train.optim import lr_at, make_optimizer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class TrainingError(GatorError):
    """Training stopped because of bad input or a fault; the message says what to do."""


def pretrain(config: TrainConfig | None = None, *, recipe: str | None = None,
             on_step: Callable[[int, dict], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """Train a language model on prepared shards; return a summary dict. See `TrainConfig` for settings.

    Call with a TrainConfig, or with a recipe name and/or keyword overrides:
    `pretrain(recipe="demo", data="runs/x/data", out_dir="runs/x", max_time="60s")`.
    `on_step(step, record)` is called after every optimizer step (tests use it).
    """
    if config is None:
        config = make_config(recipe, overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    env = D.setup(config.device)
    try:
        summary = _train(config, env, on_step)
    except BaseException:
        D.teardown(env, together=False)
        raise
    D.teardown(env)
    return summary


def _train(cfg: TrainConfig, env: D.Env, on_step: Callable | None) -> dict[str, Any]:
    say = _printer(env)
    run_dir = Path(cfg.out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = env.device
    amp_dtype = resolve_dtype(cfg.dtype, device)

    # ---- data: shards, tokenizer, and a check that they belong together ----
    if not cfg.data:
        raise TrainingError("no training data: set data=DIR (a folder made by `gator prepare`)")
    manifest = load_manifest(cfg.data)
    train_data = TokenData(cfg.data, "train", manifest)
    val_data = TokenData(cfg.data, "val", manifest)
    tokenizer = _load_matching_tokenizer(cfg, manifest)

    # ---- model config: a preset, the recipe's overrides, the vocabulary of the data ----
    mcfg = _model_config(cfg, manifest)
    seq_len = cfg.seq_len or mcfg.context_length
    if seq_len > mcfg.context_length:
        raise TrainingError(f"seq_len {seq_len} is longer than the model's context_length "
                            f"{mcfg.context_length}; lower seq_len or set model_config.context_length")

    # ---- batch geometry: global batch = micro_batch * accum * processes sequences ----
    accum = max(1, round(cfg.batch_tokens / (seq_len * cfg.micro_batch * env.world)))
    global_seqs = cfg.micro_batch * accum * env.world
    n_windows = train_data.num_windows(seq_len)
    if n_windows < global_seqs:
        raise TrainingError(
            f"the training split has {train_data.n_tokens:,} tokens, fewer than one batch "
            f"({global_seqs} sequences x {seq_len} tokens = {global_seqs * seq_len:,}); use a bigger corpus "
            "or lower batch_tokens, micro_batch or seq_len")
    n_val_windows = val_data.num_windows(seq_len)
    if n_val_windows == 0:
        raise TrainingError(f"the validation split has {val_data.n_tokens} tokens, fewer than one sequence of "
                            f"{seq_len + 1}; prepare with a larger --val-fraction or lower seq_len")

    # ---- model, resumed weights, parallel wrapping, optimizer ----
    peak = cfg.peak_flops or peak_flops(device, amp_dtype, seconds=0.2)  # before seeding the run's RNG
    torch.manual_seed(cfg.seed)
    raw = Transformer(mcfg)
    state: dict[str, Any] = {"step": 0, "samples": 0, "tokens": 0, "elapsed": 0.0, "warmup_elapsed": None,
                             "best_val": math.inf}
    resume_dir = checkpoint_dir(run_dir) if cfg.resume else None
    if cfg.resume and resume_dir is None:
        raise TrainingError(f"--resume: no checkpoint in {run_dir}; start without --resume")
    saved = None
    if resume_dir is not None:
        check_same_shape(ModelConfig.load(resume_dir / "config.json"), mcfg, resume_dir)
        raw.load_checked_state_dict(load_safetensors(resume_dir / "model.safetensors"), source=str(resume_dir))
        saved = load_training_state(resume_dir)
        state.update({k: saved[k] for k in state})
    raw.to(device)
    model = D.wrap(raw, env, cfg.parallel)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(raw, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, device,
                               kind=cfg.optimizer, momentum=cfg.muon_momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if saved is not None:
        D.load_optimizer_state(raw, optimizer, saved["optimizer"], env, cfg.parallel)
        if "scaler" in saved and scaler.is_enabled():
            scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype != torch.float32 else nullcontext())
    after_step = getattr(raw, "after_optimizer_step", None)  # e.g. the MoE load-balancing bias update

    # ---- bookkeeping: metrics log, run settings, progress bar ----
    log = MetricsLog(run_dir / "metrics.jsonl")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if saved is not None:
            log.truncate_after(state["step"])
        elif log.path.exists():
            log.path.unlink()
        (run_dir / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    flops_per_token = training_flops_per_token(mcfg, raw.num_matmul_params(), seq_len)
    order = WindowOrder(n_windows, cfg.seed)
    val_indices = _eval_indices(n_val_windows, cfg.eval_tokens // seq_len, env)
    step0, samples0, tokens0 = state["step"], state["samples"], state["tokens"]
    say(f"model {cfg.model}: {raw.num_params():,} parameters, d_model {mcfg.d_model}, {mcfg.n_layers} layers, "
        f"vocab {mcfg.vocab_size}; {_dtype_name(amp_dtype)} on {device} x {env.world}")
    say(f"data: {train_data.n_tokens:,} train / {val_data.n_tokens:,} val tokens; global batch {global_seqs} x "
        f"{seq_len} = {global_seqs * seq_len:,} tokens ({accum} accumulation step{'s' if accum > 1 else ''})"
        + (f"; resuming at step {step0}" if saved else ""))
    bar = _progress_bar(cfg, env, step0, state["elapsed"])

    eval_batch = max(cfg.micro_batch, 16)  # no activations are kept for backward, so bigger batches fit

    def evaluate() -> dict[str, float]:
        model.eval()
        total = torch.zeros(2, device=device)
        with torch.no_grad(), autocast:
            for i in range(0, len(val_indices), eval_batch):
                x, y = val_data.windows(val_indices[i:i + eval_batch], seq_len)
                _, loss = model(x.to(device), y.to(device))
                total += torch.stack([loss.float() * len(x), torch.tensor(float(len(x)), device=device)])
        model.train()
        D.all_sum(total, env)
        val = (total[0] / total[1]).item()
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50)),
                "val_bpb": bits_per_byte(val, val_data.tokens_per_byte())}

    def save(name: str, with_state: bool) -> None:
        msd, osd = D.full_state_dicts(raw, optimizer if with_state else None, env, cfg.parallel)
        failed, error = torch.zeros(1, device=device), None
        if env.is_main:
            training_state = None
            if with_state:
                training_state = {**state, "optimizer": osd, "rng": rng_state(), "world": env.world,
                                  "train_config": cfg.to_dict()}
                if scaler.is_enabled():
                    training_state["scaler"] = scaler.state_dict()
            try:
                save_checkpoint(run_dir, name, mcfg, msd, tokenizer, training_state)
            except OSError as err:
                failed[0], error = 1, err
        if D.all_sum(failed, env).item():
            raise TrainingError(str(error) if error else "rank 0 could not write the checkpoint") from error

    # ---- the loop ----
    records: list[dict] = log.read() if env.is_main else []
    last_eval: dict[str, float] = {}
    stop_reason = None
    t_start = time.perf_counter() - state["elapsed"]
    t_log, tokens_log, tok_per_s, mfu = time.perf_counter(), state["tokens"], 0.0, 0.0
    max_seconds = cfg.max_seconds
    elapsed = elapsed0 = state["elapsed"]  # rank 0's clock, shared with all ranks so they agree on lr and stopping
    signals = _StopOnSignal()
    with signals:
        while True:
            step = state["step"]
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stop_reason = "max_steps"
                break
            if max_seconds is not None and elapsed >= max_seconds:
                stop_reason = "max_time"
                break
            if step == cfg.warmup_steps and state["warmup_elapsed"] is None:
                state["warmup_elapsed"] = elapsed
            lr = lr_at(step, _progress(cfg, step, elapsed, state["warmup_elapsed"], max_seconds), lr=cfg.lr,
                       min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule,
                       decay_fraction=cfg.decay_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # forward and backward over the micro-batches of this process's slice of the global batch
            loss_sum = torch.zeros((), device=device)
            first = samples0 + (step - step0) * global_seqs + env.rank * accum * cfg.micro_batch
            for micro in range(accum):
                x, y = train_data.windows(order.indices(first + micro * cfg.micro_batch, cfg.micro_batch), seq_len)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with D.grad_sync(model, micro == accum - 1), autocast:
                    _, loss = model(x, y)
                scaler.scale(loss / accum).backward()
                loss_sum += loss.detach().float()

            # one all-reduce shares the loss, any stop signal and rank 0's clock with every process
            shared = torch.stack([loss_sum / accum,
                                  torch.tensor(float(signals.reason is not None), device=device),
                                  torch.tensor(time.perf_counter() - t_start if env.is_main else 0.0,
                                               device=device)])
            D.all_sum(shared, env)
            train_loss, stop_signal, elapsed = shared[0].item() / env.world, shared[1].item() > 0, shared[2].item()
            if not math.isfinite(train_loss):
                optimizer.zero_grad(set_to_none=True)
                kept = checkpoint_dir(run_dir)
                raise TrainingError(
                    f"the loss became {train_loss} at step {step}; training stopped without writing a checkpoint"
                    + (f" (the last good one, step {_saved_step(kept)}, is kept in {kept})" if kept else "")
                    + ". Lower lr, raise warmup_steps, or check the data")

            scaler.unscale_(optimizer)
            grad_norm = None
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step()

            state["step"] = step = step + 1
            state["samples"] += global_seqs
            state["tokens"] += global_seqs * seq_len
            state["elapsed"] = elapsed
            record = {"step": step, "tokens": state["tokens"], "loss": train_loss, "lr": lr}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm

            # logging: tokens/s and MFU over the last interval
            if step % cfg.log_every == 0 or step == 1:
                now = time.perf_counter()
                tok_per_s = (state["tokens"] - tokens_log) / max(now - t_log, 1e-9)
                mfu = flops_per_token * tok_per_s / (peak * env.world)
                t_log, tokens_log = now, state["tokens"]
                record.update(tokens_per_s=tok_per_s, mfu=mfu, elapsed=elapsed, **_model_stats(raw))
                if env.is_main:
                    log.write(record)
                    records.append(record)
            if bar is not None:
                bar.update(1 if bar.unit == "step" else min(elapsed, bar.total) - bar.n)
                eta = _eta(cfg, step, step0, elapsed, elapsed0, max_seconds)
                bar.set_postfix_str(f"step {step} | loss {train_loss:.3f} | lr {lr:.1e} | "
                                    f"{format_count(tok_per_s)} tok/s | MFU {mfu:.0%} | ETA {eta}", refresh=False)
            if on_step is not None:
                on_step(step, record)

            if step % cfg.eval_every == 0:
                last_eval = _after_eval(evaluate(), state, step, log, records, env, run_dir, say, save)
            if stop_signal or (not env.distributed and signals.reason is not None):
                stop_reason = f"interrupted ({signals.reason or 'signal on another rank'})"
                break
            if step % cfg.ckpt_every == 0:
                save("checkpoint", with_state=True)

    # ---- the end: evaluate, checkpoint, plot, summary ----
    if bar is not None:
        bar.close()
    if last_eval.get("step") != state["step"]:
        last_eval = _after_eval(evaluate(), state, state["step"], log, records, env, run_dir, say, save)
    save("checkpoint", with_state=True)
    summary = {
        "run_dir": str(run_dir), "stopped": stop_reason, "steps": state["step"], "tokens": state["tokens"],
        "parameters": raw.num_params(), "seconds": state["elapsed"],
        "tokens_per_s": (state["tokens"] - tokens0) / max(state["elapsed"] - elapsed0, 1e-9),
        "train_loss": records[-1]["loss"] if records and "loss" in records[-1] else None,
        "val_loss": last_eval["val_loss"], "val_ppl": last_eval["val_ppl"], "val_bpb": last_eval["val_bpb"],
        "best_val_loss": state["best_val"], "mfu": mfu, "dtype": str(amp_dtype).replace("torch.", ""),
        "world": env.world,
    }
    say(f"stopped: {stop_reason} at step {state['step']} after {format_seconds(state['elapsed'])}; val loss "
        f"{summary['val_loss']:.4f}, ppl {summary['val_ppl']:.2f}, {summary['val_bpb']:.4f} bits/byte; "
        f"checkpoint in {run_dir / 'checkpoint'}" + (" (resume with --resume)" if "interrupt" in str(stop_reason)
                                                     else ""))
    return summary


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16 matmuls, else fp32."""
    if name != "auto":
        dtype = DTYPES[name]
        if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError("this GPU has no bf16; use dtype=fp16 (with a loss scaler) or fp32")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + grad scaler"}.get(dtype, "fp32")


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls run natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _model_config(cfg: TrainConfig, manifest: dict) -> ModelConfig:
    data_vocab = manifest["tokenizer"]["vocab_size"]
    overrides = dict(cfg.model_config)
    overrides.setdefault("vocab_size", data_vocab)
    if overrides["vocab_size"] < data_vocab:
        raise TrainingError(f"model_config.vocab_size {overrides['vocab_size']} is smaller than the vocabulary of "
                            f"the data ({data_vocab}); leave vocab_size unset to take it from the data")
    return get_preset(cfg.model, **overrides)


def _load_matching_tokenizer(cfg: TrainConfig, manifest: dict) -> Any:
    """The tokenizer to store with checkpoints; it must be the one the shards were made with."""
    path = cfg.tokenizer or manifest["tokenizer"].get("path")
    if not path:
        return None  # shards written without a saved tokenizer (e.g. raw bytes); checkpoints hold no tokenizer
    if not Path(path).is_dir():
        raise TrainingError(f"tokenizer folder {path} does not exist; pass tokenizer=DIR")
    tok = load_tokenizer(path)
    info = tokenizer_info(tok)
    want = manifest["tokenizer"]
    if info["fingerprint"] != want["fingerprint"] or info["vocab_size"] != want["vocab_size"]:
        raise TrainingError(
            f"the tokenizer in {path} (vocab {info['vocab_size']}, fingerprint {info['fingerprint']}) is not the "
            f"one the shards in {cfg.data} were made with (vocab {want['vocab_size']}, fingerprint "
            f"{want['fingerprint']}); re-run `gator prepare` with this tokenizer, or pass the original one")
    return tok


def _eval_indices(n_windows: int, want: int, env: D.Env) -> list[int]:
    """The same validation windows every evaluation; every rank gets as many (FSDP needs equal work)."""
    per_rank = max(1, min(n_windows, max(1, want)) // env.world)
    return [(env.rank * per_rank + i) % n_windows for i in range(per_rank)]


def _progress(cfg: TrainConfig, step: int, elapsed: float, warmup_elapsed: float | None,
              max_seconds: float | None) -> float:
    """Fraction of the post-warmup part of training done, by steps or by the clock, whichever is further."""
    p = 0.0
    if cfg.max_steps is not None:
        p = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if max_seconds is not None:
        w = warmup_elapsed or 0.0
        p = max(p, (elapsed - w) / max(1e-9, max_seconds - w))
    return p


def _after_eval(result: dict, state: dict, step: int, log: MetricsLog, records: list, env: D.Env,
                run_dir: Path, say: Callable, save: Callable) -> dict:
    record = {"step": step, "tokens": state["tokens"], **result}
    improved = result["val_loss"] < state["best_val"]
    if improved:
        state["best_val"] = result["val_loss"]
        save("best", with_state=False)
    if env.is_main:
        log.write(record)
        records.append(record)
        plot_losses(records, run_dir / "loss.png", title=run_dir.name)
    say(f"step {step}: val loss {result['val_loss']:.4f}, ppl {result['val_ppl']:.2f}, "
        f"{result['val_bpb']:.4f} bits/byte" + (" (best)" if improved else ""))
    return record


def _eta(cfg: TrainConfig, step: int, step0: int, elapsed: float, elapsed0: float,
         max_seconds: float | None) -> str:
    options = []
    if max_seconds is not None:
        options.append(max_seconds - elapsed)
    if cfg.max_steps is not None and step > step0:
        options.append((cfg.max_steps - step) * (elapsed - elapsed0) / (step - step0))
    return format_seconds(min(options)) if options else "?"


def _model_stats(raw: Transformer) -> dict[str, float]:
    """Extras some models report: auxiliary losses (MoE balance, MTP) and expert load (max/mean)."""
    out = {f"loss_{k}": float(v) for k, v in (getattr(raw, "last_losses", None) or {}).items()}
    if hasattr(raw, "moe_stats"):
        ratio = raw.moe_stats(reset=True)["max_over_mean"]
        if ratio is not None:
            out["moe_max_over_mean"] = ratio
    return out


def _saved_step(directory: Path) -> str:
    try:
        return str(load_training_state(directory)["step"])
    except (OSError, KeyError, RuntimeError):
        return "?"


def _printer(env: D.Env) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if env.is_main:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stdout)
    return say


def _progress_bar(cfg: TrainConfig, env: D.Env, step0: int, elapsed: float):
    """A bar over steps, or over seconds when only a time budget is set."""
    if not (cfg.progress and env.is_main):
        return None
    from tqdm.auto import tqdm

    if cfg.max_steps is None and cfg.max_seconds is not None:
        return tqdm(total=round(cfg.max_seconds), initial=round(elapsed), desc="pretrain", unit="s",
                    dynamic_ncols=True, bar_format="{desc} |{bar}| {n:.0f}/{total} s{postfix}")
    return tqdm(total=cfg.max_steps, initial=step0, desc="pretrain", unit="step", dynamic_ncols=True,
                bar_format="{desc} {n_fmt}/{total_fmt} steps |{bar}| [{elapsed}{postfix}]")


class _StopOnSignal:
    """Within the block, SIGINT/SIGTERM set `reason` (the loop then checkpoints and stops); a second one
    stops at once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
