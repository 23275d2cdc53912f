"""`gator reward`, `gator dpo` and `gator grpo`: thin wrappers over gator/train/posttrain.py.

Each takes --model (the starting model folder, or a run folder: its best/), --data, --out, a recipe
(recipes/reward.yaml, dpo.yaml, grpo.yaml by default) and KEY=VALUE overrides of any training setting,
plus the flags `gator finetune` has (--max-time, --max-steps, --resume, --lora ...). Flags that belong to
the objective (--beta, --group-size, --reward, ...) are listed by `gator grpo --help`.
"""

from __future__ import annotations

import argparse

from gator.cli_args import duration, fraction, non_negative_float, positive_int

SHARED = ("init_from", "data", "out_dir", "seq_len", "tokenizer", "max_time", "max_steps", "resume", "dtype",
          "device", "progress", "val_fraction", "skip_bad_lines")
LORA = ("lora", "lora_rank", "lora_alpha", "lora_targets", "lora_rslora")


def _common(p: argparse.ArgumentParser, data_help: str, lora: bool) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any recipe key, e.g. lr=1e-5")
    p.add_argument("--model", dest="init_from", required=True,
                   help="starting model folder (e.g. the SFT model) or a run folder (its best/)")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", dest="out_dir", required=True, help="run folder")
    p.add_argument("--recipe", help="recipe name in recipes/ or a .yaml (default: the command's name)")
    p.add_argument("--seq-len", type=positive_int, help="longest prompt + response in tokens")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's own)")
    p.add_argument("--max-time", type=duration, help="wall-clock budget, e.g. 60s, 3m, 1h")
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--val-fraction", type=fraction, help="share of the data held out (without --val-data)")
    p.add_argument("--skip-bad-lines", action="store_true", default=None,
                   help="leave malformed lines out (counted and reported) instead of stopping")
    if lora:
        p.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters only")
        p.add_argument("--rank", dest="lora_rank", type=positive_int, help="LoRA rank r (default 16)")
        p.add_argument("--alpha", dest="lora_alpha", type=float, help="LoRA alpha; the update is scaled by alpha/r")
        p.add_argument("--targets", dest="lora_targets", help="comma-separated LoRA targets, e.g. q,k,v,o")
        p.add_argument("--rslora", dest="lora_rslora", action="store_true", default=None)


PAIRS = 'preference JSONL: {"prompt", "chosen", "rejected"} (text or messages)'


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reward", help="train a reward model on preference pairs (Bradley-Terry)")
    _common(p, PAIRS, lora=False)
    p.add_argument("--val-data", help="held-out preference pairs (default: a share of --data)")
    p.set_defaults(func=_reward)

    p = sub.add_parser("dpo", help="DPO/IPO on preference pairs (reference log-probs computed once)")
    _common(p, PAIRS, lora=True)
    p.add_argument("--val-data", help="held-out preference pairs (default: a share of --data)")
    p.add_argument("--beta", type=non_negative_float, default=0.1, help="DPO's beta (default 0.1)")
    p.add_argument("--ipo", action="store_true", help="the IPO loss instead of DPO's")
    p.set_defaults(func=_dpo)

    p = sub.add_parser("grpo", help="GRPO: sample groups of answers, reward them, clipped policy gradient")
    _common(p, 'prompt JSONL: {"prompt": text or messages, "answer": ...} (GSM8K rows work as they are)',
            lora=True)
    p.add_argument("--reward", action="append", default=None,
                   help="reward function (repeat for several): exact_answer, number_format, gsm8k_answer, "
                        "gsm8k_format, or rm:DIR (a trained reward model); default exact_answer")
    p.add_argument("--reward-weights", help="comma-separated weights of the rewards (default all 1)")
    p.add_argument("--group-size", type=positive_int, default=8, help="completions per prompt (default 8)")
    p.add_argument("--temperature", type=non_negative_float, default=1.0)
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--updates-per-rollout", type=positive_int, default=2,
                   help="optimizer steps on each batch of rollouts (default 2)")
    p.add_argument("--beta", type=non_negative_float, default=0.0, help="weight of the KL to the reference")
    p.add_argument("--clip", type=non_negative_float, default=0.2, help="PPO clip range eps (default 0.2)")
    p.add_argument("--clip-high", type=non_negative_float, help="upper clip range (DAPO's clip-higher)")
    p.add_argument("--aggregation", choices=["sequence_mean", "token_mean", "constant"], default="sequence_mean")
    p.add_argument("--no-scale-rewards", action="store_true", help="advantages r - mean, no /std (Dr. GRPO)")
    p.add_argument("--eval-data", help="held-out prompts for the greedy evaluation (default: a share of --data)")
    p.add_argument("--eval-prompts", type=positive_int, default=64, help="held-out prompts per evaluation")
    p.set_defaults(func=_grpo)


def _overrides(args: argparse.Namespace, keys: tuple[str, ...]) -> dict:
    from gator.train import parse_overrides

    overrides = parse_overrides(args.overrides)
    if getattr(args, "lora_targets", None) is not None:
        args.lora_targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    return overrides


def _done(summary: dict, what: str) -> int:
    print(f"{what}: {summary['model']}")
    return 130 if str(summary["stopped"]).startswith("interrupted") else 0


def _reward(args: argparse.Namespace) -> int:
    from gator.train.config import make_config
    from gator.train.posttrain import train_reward_model

    config = make_config(args.recipe or "reward", _overrides(args, SHARED))
    return _done(train_reward_model(config, val_data=args.val_data), "reward model (RewardModel.from_pretrained)")


def _dpo(args: argparse.Namespace) -> int:
    from gator.train.config import make_config
    from gator.train.posttrain import train_dpo

    config = make_config(args.recipe or "dpo", _overrides(args, SHARED + LORA))
    summary = train_dpo(config, beta=args.beta, loss_type="ipo" if args.ipo else "sigmoid", val_data=args.val_data)
    return _done(summary, "model (gator sample --checkpoint)")


def _grpo(args: argparse.Namespace) -> int:
    from gator.train.config import make_config
    from gator.train.posttrain import train_grpo

    weights = None
    if args.reward_weights:
        try:
            weights = [float(w) for w in args.reward_weights.split(",")]
        except ValueError:
            raise ValueError(f"--reward-weights: expected numbers separated by commas, got "
                             f"{args.reward_weights!r}") from None
    config = make_config(args.recipe or "grpo", _overrides(args, SHARED + LORA))
    grpo = dict(group_size=args.group_size, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                updates_per_rollout=args.updates_per_rollout, beta=args.beta, eps_low=args.clip,
                eps_high=args.clip_high, aggregation=args.aggregation, scale_rewards=not args.no_scale_rewards,
                eval_data=args.eval_data, eval_prompts=args.eval_prompts)
    summary = train_grpo(config, rewards=args.reward or ["exact_answer"], reward_weights=weights, grpo=grpo)
    return _done(summary, "model (gator sample --checkpoint)")
