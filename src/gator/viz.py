"""Seeing inside the model: attention maps of every layer and head, drawn as labelled heatmaps.

The fast path never materialises attention probabilities (SDPA fuses softmax into the kernel). To look
at them, `attention_maps` runs the model once with hooks: each attention module's input is captured and
its probabilities are recomputed explicitly, softmax(q k^T / sqrt(d) + mask), by the module's own
`attention_probs` method. The test suite checks those maps against the module's real output.

    maps = attention_maps(model, ids)        # (n_layers, n_heads, T, T) for one sequence
    plot_attention(maps, tokens, "attn.png")  # a grid of heatmaps, tokens on both axes
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gator.cli_args import add_device, add_force, add_model, add_out, non_negative_int, pick, positive_int

if TYPE_CHECKING:
    import torch


def attention_maps(model: torch.nn.Module, ids: torch.Tensor | list[int]) -> torch.Tensor:
    """Attention probabilities (n_layers, n_heads, T, T) of one sequence (ids: (T,) or (1, T))."""
    import torch

    with torch.no_grad():
        return _attention_maps(model, ids)


def _attention_maps(model: torch.nn.Module, ids: torch.Tensor | list[int]) -> torch.Tensor:
    import torch

    ids = torch.as_tensor(ids, device=next(model.parameters()).device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[0] != 1:
        raise ValueError(f"attention_maps takes one sequence, got a batch of {ids.shape[0]}")
    maps: list[torch.Tensor] = []
    handles = []
    for block in model.blocks:
        attn = block.attn
        if not hasattr(attn, "attention_probs"):
            raise ValueError(f"{type(attn).__name__} cannot report attention probabilities")

        def hook(module, args, kwargs):
            x, rope, cache, mask = (list(args) + [None] * 4)[:4]
            maps.append(module.attention_probs(x, rope, mask)[0].float().cpu())

        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        was_training = model.training
        model.eval()
        model(ids)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(maps)


def plot_attention(maps: torch.Tensor, tokens: list[str], path: str | Path, layers: list[int] | None = None,
                   max_heads: int = 8) -> Path:
    """A grid of heatmaps (rows: layers, columns: heads), axes labelled with the tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(maps.shape[0])) if layers is None else layers
    heads = list(range(min(max_heads, maps.shape[1])))
    T = maps.shape[-1]
    cell = max(2.0, 0.25 * T)
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(cell * len(heads), cell * len(layers)), squeeze=False)
    labels = [t.replace("\n", "\\n") for t in tokens]
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(maps[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_expert_load(history: list[dict], path: str | Path) -> Path:
    """MoE routing statistics over training: one heatmap per MoE layer (share of routed tokens per expert,
    per logged step) and the max/mean load of every layer. `history` holds one entry per logged step:
    {"step": int, "moe": model.moe_stats(reset=True)} (reset: each entry covers the steps since the last)."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [h for h in history if h.get("moe") and h["moe"].get("layers")]
    if not entries:
        raise ValueError("no expert-load statistics to plot; log model.moe_stats() during training of an MoE model")
    layers = list(entries[0]["moe"]["layers"])
    steps = [h["step"] for h in entries]
    fig, axes = plt.subplots(len(layers) + 1, 1, figsize=(8, 2.2 * (len(layers) + 1)), squeeze=False)
    for ax, name in zip(axes[:-1, 0], layers):
        load = torch.tensor([h["moe"]["layers"][name]["load"] for h in entries]).T  # (experts, logged steps)
        im = ax.imshow(load.numpy(), aspect="auto", cmap="viridis", interpolation="nearest",
                       extent=(steps[0], steps[-1], load.shape[0] - 0.5, -0.5))
        ax.set_title(f"{name}: share of routed tokens per expert", fontsize=9)
        ax.set_ylabel("expert")
        fig.colorbar(im, ax=ax)
    ax = axes[-1, 0]
    for name in layers:
        ax.plot(steps, [h["moe"]["layers"][name]["max_over_mean"] for h in entries], label=name)
    ax.axhline(1.0, color="gray", linestyle=":")
    ax.set_xlabel("step")
    ax.set_ylabel("max / mean load")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------
# CLI: gator viz attention --model DIR --text "..."
# ---------------------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    viz = sub.add_parser("viz", help="visualisations").add_subparsers(dest="what", required=True)
    a = viz.add_parser("attention", help="heatmaps of every layer's and head's attention on a text")
    add_model(a)
    a.add_argument("--text", required=True)
    add_out(a, "the picture to write (default attention.png)", required=False, default="attention.png")
    add_force(a, "an existing picture")
    a.add_argument("--layers", type=non_negative_int, nargs="*", help="which layers to draw (default all)")
    a.add_argument("--max-heads", type=positive_int, default=8, help="draw at most this many heads per layer")
    add_device(a)
    a.set_defaults(func=cmd_attention)


def cmd_attention(args: argparse.Namespace) -> int:
    from gator.outputs import output_file
    from gator.train.sampling import load_model_for_sampling

    model, tok, _ = load_model_for_sampling(pick(args, "model"), device=args.device)
    ids = tok.encode(args.text)
    if not ids:
        raise ValueError("the text is empty")
    if len(ids) > model.config.context_length:
        raise ValueError(f"the text has {len(ids)} tokens, more than the context ({model.config.context_length})")
    n = model.config.n_layers
    for layer in args.layers or []:
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} does not exist; the model has layers 0..{n - 1}")
    out = output_file(args.out, force=args.force)
    maps = attention_maps(model, ids)
    tokens = [tok.decode([i]) for i in ids]
    out = plot_attention(maps, tokens, out, args.layers, args.max_heads)
    print(f"wrote {out} ({n} layers x {maps.shape[1]} heads, {len(ids)} tokens)")
    return 0
