"""`gator lora merge`: fold a LoRA adapter (PEFT layout) into its base model, giving a plain model directory
(which `gator export hf` turns into a transformers directory that needs no PEFT)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from gator.cli_args import add_force, add_model, add_out, pick

# Files of a model directory besides the weights and config that belong with the merged model.
TOKENIZER_FILES = ("tokenizer.gator.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="LoRA adapters (PEFT layout)")
    lora = p.add_subparsers(dest="lora_command", required=True)
    m = lora.add_parser("merge", help="merge an adapter into its base model and write a plain model directory")
    add_model(m, "the Gator model the adapter was trained on: a model folder, or a run folder (its best/)")
    m.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json + "
                                                     "adapter_model.safetensors)")
    add_out(m, "output model folder")
    add_force(m, "an earlier model in --out (the folder is replaced as a whole)")
    m.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from gator.interop.peft import load_adapter
    from gator.model import Transformer
    from gator.model.lora import remove_lora, trainable_summary
    from gator.outputs import MODEL_FOLDER_FILES, output_dir, replace_dir
    from gator.train.checkpoint import resolve_model_dir

    source, out = resolve_model_dir(pick(args, "model")), Path(pick(args, "out"))
    if out.resolve() == source.resolve():
        raise ValueError("--out is the --model folder; write the merged model somewhere else")
    # checked before the merge: a folder, writable, and no earlier model in it unless --force
    output_dir(out, earlier_work=MODEL_FOLDER_FILES, force=args.force, what="a model", create=False)
    model = Transformer.from_pretrained(source)
    load_adapter(model, args.adapter)
    print(f"{args.adapter}: r={model.lora_config.r}, alpha={model.lora_config.alpha:g}, "
          f"targets {','.join(model.lora_config.targets)}; {trainable_summary(model)}")
    remove_lora(model, merge=True)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)

    # the whole folder is replaced: no file of an earlier model (a tokenizer of another vocabulary) stays
    replace_dir(out, write, replaceable=MODEL_FOLDER_FILES)
    print(f"wrote the merged model to {out}")
    return 0
