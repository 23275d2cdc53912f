"""`gator lora merge`: fold a LoRA adapter (PEFT layout) into its base model, giving a plain model directory
(which `gator export hf` turns into a transformers directory that needs no PEFT)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# Files of a model directory besides the weights and config that belong with the merged model.
TOKENIZER_FILES = ("tokenizer.gator.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="LoRA adapters (PEFT layout)")
    lora = p.add_subparsers(dest="lora_command", required=True)
    m = lora.add_parser("merge", help="merge an adapter into its base model and write a plain model directory")
    m.add_argument("--model", required=True, help="Gator model directory the adapter was trained on")
    m.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json + "
                                                     "adapter_model.safetensors)")
    m.add_argument("--out", required=True, help="output model directory")
    m.add_argument("--force", action="store_true", help="replace the model files in an existing --out directory")
    m.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from gator.interop.peft import load_adapter
    from gator.model import Transformer
    from gator.model.lora import remove_lora, trainable_summary
    from gator.model.transformer import CONFIG_NAME, WEIGHTS_NAME

    out = Path(args.out)
    existing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if (out / n).exists()]
    if existing and not args.force:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; choose another --out or pass --force")
    if out.resolve() == Path(args.model).resolve():
        raise ValueError("--out is the --model directory; write the merged model somewhere else")
    model = Transformer.from_pretrained(args.model)
    load_adapter(model, args.adapter)
    print(f"{args.adapter}: r={model.lora_config.r}, alpha={model.lora_config.alpha:g}, "
          f"targets {','.join(model.lora_config.targets)}; {trainable_summary(model)}")
    remove_lora(model, merge=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(args.model) / name).is_file():
            shutil.copy2(Path(args.model) / name, out / name)
    print(f"wrote the merged model to {out}")
    return 0
