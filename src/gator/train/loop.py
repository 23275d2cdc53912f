"""The training loop: one function, `train_loop`, read top to bottom (the shape of nanoGPT's train.py).

    train(config, objective):  processes -> setup (gator/train/setup.py: model, optimizer, resume) -> loop:
        stop on a limit -> lr for this step
        -> for each micro-batch of this process's slice of the global batch: loss under autocast, backward
        -> share the loss, stop signals and the clock across processes; stop on a non-finite loss
        -> clip the gradients, optimizer step, the model's after-step hook
        -> log, evaluate, checkpoint, stop on a signal
    -> final evaluation and checkpoint -> summary

What is learned comes from the objective (gator/train/objectives/): its batches, its loss, its
validation metrics. `pretrain` is `train` with the next-token objective on token shards; fine-tuning
and post-training objectives run through the same loop. Every step reads `global batch = micro_batch x
accumulation steps x processes` samples, and which ones is a pure function of (seed, sample number).
That is what makes `--resume` exact (the resumed run reads what the uninterrupted run would have read)
and lets N processes reproduce one process with accumulation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gator.errors import TrainingError
from gator.train import distributed as D
from gator.train.checkpoint import checkpoint_dir, load_training_state, rng_state, save_checkpoint
from gator.train.config import TrainConfig, make_config
from gator.train.metrics import format_count, format_seconds, plot_losses
from gator.train.objectives import Objective
from gator.train.objectives.lm import LanguageModeling
from gator.train.optim import lr_at
from gator.train.setup import Run, setup


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
    return train(config, LanguageModeling(config), on_step=on_step)


def train(config: TrainConfig, objective: Objective,
          on_step: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Train for `objective` (see gator/train/objectives/) with the settings of `config`; return a summary
    dict. Works in one process and under torchrun."""
    env = D.setup(config.device)
    try:
        summary = train_loop(setup(config, env, objective), on_step)
    except BaseException:
        D.teardown(env, together=False)
        raise
    D.teardown(env)
    return summary


def train_loop(run: Run, on_step: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    cfg, env, device, objective = run.config, run.env, run.device, run.objective
    model, raw, optimizer, scaler = run.model, run.raw_model, run.optimizer, run.scaler
    after_step = getattr(raw, "after_optimizer_step", None)  # e.g. the MoE load-balancing bias update
    max_seconds = cfg.max_seconds
    records: list[dict] = run.log.read() if env.is_main else []
    last_eval: dict[str, float] = {}
    stop_reason = None
    step0, tokens0, elapsed0 = run.step, run.tokens, run.elapsed
    t_start = time.perf_counter() - run.elapsed  # run.elapsed: rank 0's clock, shared so all ranks agree
    t_log, tokens_log, tok_per_s, mfu = time.perf_counter(), run.tokens, 0.0, 0.0
    bar = _progress_bar(run)
    with _StopOnSignal() as signals:
        while True:
            if cfg.max_steps is not None and run.step >= cfg.max_steps:
                stop_reason = "max_steps"
                break
            if max_seconds is not None and run.elapsed >= max_seconds:
                stop_reason = "max_time"
                break
            if run.step == cfg.warmup_steps and run.warmup_elapsed is None:
                run.warmup_elapsed = run.elapsed
            lr = lr_at(run.step, _progress(cfg, run), lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                       schedule=cfg.schedule, decay_fraction=cfg.decay_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # forward and backward over the micro-batches of this process's slice of the global batch
            loss_sum, tokens, metric_sums = torch.zeros((), device=device), 0, {}
            first = run.samples + env.rank * run.accum * cfg.micro_batch
            for micro in range(run.accum):
                batch = objective.train_batch(run, first + micro * cfg.micro_batch, cfg.micro_batch)
                with D.grad_sync(model, micro == run.accum - 1), run.autocast():
                    out = objective.loss(model, batch)
                scaler.scale(out.loss / run.accum).backward()
                loss_sum += out.loss.detach().float()
                tokens += out.tokens
                for k, v in (out.metrics or {}).items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + torch.as_tensor(v, device=device).detach().float()

            # one all-reduce shares the loss, the metrics, the tokens, any stop signal and rank 0's clock
            means = torch.stack([loss_sum, *metric_sums.values()]) / run.accum
            clock = time.perf_counter() - t_start if env.is_main else 0.0
            shared = torch.cat([means.double(), torch.tensor([tokens, float(signals.reason is not None), clock],
                                                              dtype=torch.float64, device=device)])
            D.all_sum(shared, env)
            values = (shared / env.world).tolist()
            train_loss, metrics = values[0], dict(zip(metric_sums, values[1:len(means)]))
            step_tokens, stop_signal, elapsed = round(shared[-3].item()), shared[-2].item() > 0, shared[-1].item()
            if not math.isfinite(train_loss):
                optimizer.zero_grad(set_to_none=True)
                kept = checkpoint_dir(run.run_dir)
                raise TrainingError(
                    f"the loss became {train_loss} at step {run.step}; training stopped without writing a checkpoint"
                    + (f" (the last good one, step {_saved_step(kept)}, is kept in {kept})" if kept else "")
                    + ". Lower lr, raise warmup_steps, or check the data")

            # the optimizer step (fp16: unscale first, so clipping sees the true gradients)
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

            run.step += 1
            run.samples += run.global_batch
            run.tokens += step_tokens
            run.elapsed = elapsed
            record = {"step": run.step, "tokens": run.tokens, "loss": train_loss, "lr": lr, **metrics}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm

            # logging: tokens/s and MFU over the last interval
            if run.step % cfg.log_every == 0 or run.step == 1:
                now = time.perf_counter()
                tok_per_s = (run.tokens - tokens_log) / max(now - t_log, 1e-9)
                mfu = run.flops_per_token * tok_per_s / (run.peak_flops * env.world)
                t_log, tokens_log = now, run.tokens
                record.update(tokens_per_s=tok_per_s, mfu=mfu, elapsed=run.elapsed, **_model_stats(raw))
                if env.is_main:
                    run.log.write(record)
                    records.append(record)
            if bar is not None:
                bar.update(1 if bar.unit == "step" else min(run.elapsed, bar.total) - bar.n)
                eta = _eta(cfg, run, step0, elapsed0)
                bar.set_postfix_str(f"step {run.step} | loss {train_loss:.3f} | lr {lr:.1e} | "
                                    f"{format_count(tok_per_s)} tok/s | MFU {mfu:.0%} | ETA {eta}", refresh=False)
            if on_step is not None:
                on_step(run.step, record)

            if run.step % cfg.eval_every == 0:
                last_eval = evaluate(run, records)
            if stop_signal or (not env.distributed and signals.reason is not None):
                stop_reason = f"interrupted ({signals.reason or 'signal on another rank'})"
                break
            if run.step % cfg.ckpt_every == 0:
                save(run, "checkpoint", with_state=True)

    # ---- the end: evaluate, checkpoint, summary ----
    if bar is not None:
        bar.close()
    if last_eval.get("step") != run.step:
        last_eval = evaluate(run, records)
    save(run, "checkpoint", with_state=True)
    val = {k: v for k, v in last_eval.items() if k not in ("step", "tokens")}
    summary = {
        "run_dir": str(run.run_dir), "stopped": stop_reason, "steps": run.step, "tokens": run.tokens,
        "parameters": raw.num_params(), "seconds": run.elapsed,
        "tokens_per_s": (run.tokens - tokens0) / max(run.elapsed - elapsed0, 1e-9),
        "train_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),  # the last logged step
        **val, "best_val_loss": run.best_val, "mfu": mfu, "dtype": str(run.dtype).replace("torch.", ""),
        "world": env.world,
    }
    if env.is_main:
        write_summary(run.run_dir, summary)
    run.say(f"stopped: {stop_reason} at step {run.step} after {format_seconds(run.elapsed)}; {_describe(val)}; "
            f"checkpoint in {run.run_dir / 'checkpoint'}"
            + (" (resume with --resume)" if "interrupt" in str(stop_reason) else ""))
    return summary


# --------------------------------------------------------------------------------------------------
# evaluation and checkpoints
# --------------------------------------------------------------------------------------------------

def evaluate(run: Run, records: list[dict]) -> dict[str, float]:
    """The objective's validation metrics, logged and plotted; a new best `val_loss` is saved to best/."""
    run.model.eval()
    with torch.no_grad(), run.autocast():
        metrics = run.objective.evaluate(run)
    run.model.train()
    record = {"step": run.step, "tokens": run.tokens, **metrics}
    improved = metrics["val_loss"] < run.best_val
    if improved:
        run.best_val = metrics["val_loss"]
        save(run, "best", with_state=False)
    if run.env.is_main:
        run.log.write(record)
        records.append(record)
        plot_losses(records, run.run_dir / "loss.png", title=run.run_dir.name)
    run.say(f"step {run.step}: {_describe(metrics)}" + (" (best)" if improved else ""))
    return record


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """run_dir/summary.json: what the run did and reached (steps, tokens, losses, speed), atomically."""
    from gator.outputs import atomic_write

    text = json.dumps(summary, indent=2, default=str) + "\n"
    atomic_write(run_dir / "summary.json", lambda tmp: Path(tmp).write_text(text))


def save(run: Run, name: str, with_state: bool) -> None:
    """Write run_dir/name atomically on rank 0 (with the training state: resumable); every rank learns
    whether it worked, and a failure stops training with the reason."""
    env = run.env
    msd, osd = D.full_state_dicts(run.raw_model, run.optimizer if with_state else None, env, run.config.parallel)
    failed, error = torch.zeros(1, device=run.device), None
    if env.is_main:
        training_state = None
        if with_state:
            training_state = {**run.counters(), "optimizer": osd, "rng": rng_state(), "world": env.world,
                              "train_config": run.config.to_dict()}
            if run.scaler.is_enabled():
                training_state["scaler"] = run.scaler.state_dict()
            objective_state = run.objective.state_dict()
            if objective_state:
                training_state["objective"] = objective_state
        try:
            save_checkpoint(run.run_dir, name, run.raw_model, msd, run.objective.tokenizer, training_state)
        except OSError as err:
            failed[0], error = 1, err
    if D.all_sum(failed, env).item():
        reason = (getattr(error, "strerror", None) or str(error)) if error else "rank 0 could not write the checkpoint"
        raise TrainingError(reason) from error


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _progress(cfg: TrainConfig, run: Run) -> float:
    """Fraction of the post-warmup part of training done, by steps or by the clock, whichever is further."""
    p = 0.0
    if cfg.max_steps is not None:
        p = (run.step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_seconds is not None:
        w = run.warmup_elapsed or 0.0
        p = max(p, (run.elapsed - w) / max(1e-9, cfg.max_seconds - w))
    return p


def _describe(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in metrics.items())


def _eta(cfg: TrainConfig, run: Run, step0: int, elapsed0: float) -> str:
    options = []
    if cfg.max_seconds is not None:
        options.append(cfg.max_seconds - run.elapsed)
    if cfg.max_steps is not None and run.step > step0:
        options.append((cfg.max_steps - run.step) * (run.elapsed - elapsed0) / (run.step - step0))
    return format_seconds(min(options)) if options else "?"


def _model_stats(raw: torch.nn.Module) -> dict[str, float]:
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


def _progress_bar(run: Run):
    """A bar over steps, or over seconds when only a time budget is set."""
    cfg = run.config
    if not (cfg.progress and run.env.is_main):
        return None
    from tqdm.auto import tqdm

    desc = f"train {run.objective.name}"
    if cfg.max_steps is None and cfg.max_seconds is not None:
        return tqdm(total=round(cfg.max_seconds), initial=round(run.elapsed), desc=desc, unit="s",
                    dynamic_ncols=True, bar_format="{desc} |{bar}| {n:.0f}/{total} s{postfix}")
    return tqdm(total=cfg.max_steps, initial=run.step, desc=desc, unit="step", dynamic_ncols=True,
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
