"""The transformer: one class, driven by `ModelConfig`, for GPT-2, GatorGPT/Llama and their relatives.

    ids (B, T) -> token embedding (+ learned positions) -> n_layers x Block -> final norm -> LM head

Each Block is pre-norm (GPT-2 and Llama both normalise the input of each sublayer, not its output):

    x = x + attn(norm1(x))
    x = x + mlp(norm2(x))

Which attention, MLP, norm and position scheme a block uses comes from the config through the small
factories below (`make_attention`, `make_ffn`, `make_norm`): that is where the DeepSeek (MLA, MoE) and
Mixture-of-Depths chapters plug in, without a second copy of the block. DeepSeek-V3's multi-token
prediction adds `mtp` modules after the last block (model/mtp.py); their loss, the MoE balance loss and
the Mixture-of-Depths router loss join `loss` in training mode. A training loop calls
`model.after_optimizer_step()` after each optimiser step (it moves the MoE balancing biases; a no-op for
other models) and may log `model.moe_stats()` / `model.mod_stats()`.

A model directory is `config.json` + `model.safetensors` (+ tokenizer files when there is one), written
by `save_pretrained` and read by `from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gator.config import ModelConfig
from gator.model.attention import CausalSelfAttention, causal_mask
from gator.model.cache import KVCache
from gator.model.depth import MixtureOfDepths
from gator.model.head_loss import linear_cross_entropy
from gator.model.layers import make_mlp, make_norm, make_rope
from gator.model.mla import MultiHeadLatentAttention
from gator.model.moe import MoE
from gator.model.mtp import MTPModule, mtp_loss

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def make_attention(config: ModelConfig, layer_idx: int) -> nn.Module:
    if config.attention == "mla":
        return MultiHeadLatentAttention(config, layer_idx)
    return CausalSelfAttention(config, layer_idx)


def make_ffn(config: ModelConfig, layer_idx: int) -> nn.Module:
    """The feed-forward sublayer: DeepSeekMoE past the first moe_dense_layers layers, else the dense MLP."""
    return MoE(config) if config.is_moe_layer(layer_idx) else make_mlp(config)


def make_block(config: ModelConfig, layer_idx: int) -> nn.Module:
    block = Block(config, layer_idx)
    return MixtureOfDepths(config, block) if layer_idx in config.mod_layers else block


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = make_attention(config, layer_idx)
        self.mlp_norm = make_norm(config)
        self.mlp = make_ffn(config, layer_idx)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, cache, mask))
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context_length, config.d_model) if config.positions == "learned" else None
        self.rope = make_rope(config)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(make_block(config, i) for i in range(config.n_layers))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.mtp = (nn.ModuleList(MTPModule(config, Block(config, config.n_layers + k))
                                  for k in range(config.mtp_depth)) if config.mtp_depth else None)
        self.apply(self._init_weights)
        # Modules that leave an auxiliary loss behind in a training forward (MoE balance, MoD router).
        self._aux_modules = [m for m in self.modules() if isinstance(m, (MoE, MixtureOfDepths))]
        self.last_losses: dict[str, float | torch.Tensor] = {}  # the parts of the last training loss

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases; residual projections shrunk by 1/sqrt(2 n_layers)
        so the residual stream's variance does not grow with depth."""
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            scale = 1 / math.sqrt(2 * self.config.n_layers) if getattr(module, "is_residual_projection", False) else 1
            nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    # ------------------------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, *, cache: KVCache | None = None,
                last_only: bool = False, positions: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None,
                return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, V) for token ids (B, T); with targets (B, T), also the mean cross-entropy.

        Targets equal to -100 are ignored. With a KV cache the T tokens continue the cached sequence.
        `last_only` computes logits for the last position only (all that sampling needs).
        `return_logits=False` (with targets) returns (None, loss): the head and the loss then run a chunk
        of positions at a time and the full logits never exist (model/head_loss.py), which is what a
        training step wants: less memory and, on a CPU, a faster step.

        Packing (several samples in one row, no cache): `segment_ids` (B, T) numbers the samples of each
        row; a token attends only to earlier tokens of its own segment (a block-diagonal causal mask), and
        `positions` (B, T) restarts at 0 for each sample, so every sample computes what it would alone.
        """
        B, T = ids.shape
        if positions is not None or segment_ids is not None:
            self._check_packing(ids, cache, positions, segment_ids)
            if positions is None:
                positions = torch.arange(T, device=ids.device)
            end = int(positions.max()) + 1  # one past the last position
        else:
            end = cache.end_position(T) if cache is not None else T
            positions = cache.positions(T) if cache is not None else torch.arange(T, device=ids.device)
        if end > self.config.context_length and self.config.positions != "none":
            raise ValueError(f"sequence of {end} tokens exceeds the model's context_length "
                             f"{self.config.context_length}; truncate the input or use a longer-context model")
        x = self.tok_emb(ids)  # (B, T, d_model)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.dropout(x)
        rope = self.rope_at(positions) if self.rope is not None else None
        if cache is not None:
            mask = cache.attention_mask(T, self.config.sliding_window)
        elif segment_ids is not None:  # block-diagonal causal: same segment and not in the future
            same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # (B, 1, T, T)
            mask = same & causal_mask(T, self.config.sliding_window, ids.device)
        elif self.config.sliding_window is not None and T > self.config.sliding_window:
            mask = causal_mask(T, self.config.sliding_window, ids.device)
        else:
            mask = None  # plain causal attention: SDPA's is_causal fast path
        for m in self._aux_modules:
            m.aux_loss = None
        for block in self.blocks:
            x = block(x, rope, cache, mask)
        if cache is not None:
            cache.advance(T)
        x = self.norm(x)
        h = x
        if last_only:
            x = x[:, -1:]
        if targets is not None and not return_logits and not last_only and self.lm_head.bias is None:
            logits, loss = None, linear_cross_entropy(x, self.lm_head.weight, targets)
        else:
            logits = self.lm_head(x)
            loss = None if targets is None else F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        if loss is not None and self.training and (self._aux_modules or self.mtp is not None):
            loss = self._add_auxiliary_losses(loss, h, ids, targets)
        return logits, loss

    def _check_packing(self, ids: torch.Tensor, cache: KVCache | None, positions: torch.Tensor | None,
                       segment_ids: torch.Tensor | None) -> None:
        """Refuse packed inputs the model cannot keep apart (see `forward`)."""
        if cache is not None:
            raise ValueError("positions/segment_ids are for full (packed) forwards; a KV cache keeps its own positions")
        for name, t in (("positions", positions), ("segment_ids", segment_ids)):
            if t is not None and tuple(t.shape) != tuple(ids.shape):
                raise ValueError(f"{name} must have the shape of ids {tuple(ids.shape)}, got {tuple(t.shape)}")
        if segment_ids is not None and self.config.mod_layers:
            raise ValueError("packed sequences (segment_ids) are not supported with Mixture-of-Depths blocks, whose "
                             "training top-k and attention span the whole row; train without packing")
        if segment_ids is not None and self.mtp is not None:
            raise ValueError("packed sequences (segment_ids) are not supported with multi-token prediction, whose "
                             "look-ahead would cross sample boundaries; train without packing")

    def rope_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for positions (T,) -> (T, D) each, or (B, T) -> (B, 1, T, D) (broadcast over heads)."""
        cos, sin = self.rope(positions)
        return (cos, sin) if cos.dim() == 2 else (cos[:, None], sin[:, None])

    def _add_auxiliary_losses(self, lm: torch.Tensor, h: torch.Tensor, ids: torch.Tensor,
                              targets: torch.Tensor) -> torch.Tensor:
        """lm + lambda * MTP loss + MoE balance losses + MoD router losses; the parts go to `last_losses`."""
        parts: dict[str, torch.Tensor] = {"lm": lm}
        total = lm
        if self.mtp is not None and self.config.mtp_loss_weight > 0:
            parts["mtp"] = mtp_loss(self, h, ids, targets)
            total = total + self.config.mtp_loss_weight * parts["mtp"]
        for kind, cls in (("moe_balance", MoE), ("mod_router", MixtureOfDepths)):
            aux = [m.aux_loss for m in self._aux_modules if isinstance(m, cls) and m.aux_loss is not None]
            if aux:
                parts[kind] = torch.stack(aux).sum()
                total = total + parts[kind]
        for m in self._aux_modules:
            m.aux_loss = None
        self.last_losses = {k: v.detach() for k, v in parts.items()}
        return total

    # ------------------------------------------------------------------------------------------------
    def after_optimizer_step(self) -> None:
        """Call after each optimiser step: DeepSeek-V3's auxiliary-loss-free balancing moves each MoE
        layer's expert biases toward balanced load. A no-op for models without MoE."""
        for m in self._aux_modules:
            if isinstance(m, MoE):
                m.update_bias()

    def moe_stats(self, reset: bool = False) -> dict[str, Any]:
        """Expert load of each MoE layer over the training forwards since the last reset:
        {"layers": {name: {"load": [fraction per expert], "max_over_mean": float}}, "max_over_mean": mean}."""
        layers = {}
        for name, m in self.named_modules():
            if isinstance(m, MoE):
                load = m.load(reset=reset).float()
                total = float(load.sum())
                if total > 0:
                    layers[name] = {"load": (load / total).tolist(), "max_over_mean": float(load.max() / load.mean())}
        ratios = [v["max_over_mean"] for v in layers.values()]
        return {"layers": layers, "max_over_mean": sum(ratios) / len(ratios) if ratios else None}

    def mod_stats(self) -> dict[str, float]:
        """For each Mixture-of-Depths block, how often the causal decode rule agreed with the top-k choice
        in the last training forward."""
        return {name: float(m.agreement) for name, m in self.named_modules()
                if isinstance(m, MixtureOfDepths) and m.agreement is not None}

    @torch.no_grad()
    def resize_vocab(self, new_size: int) -> Transformer:
        """Grow the token embedding and the LM head to `new_size` rows, e.g. after a chat template added
        special tokens to the tokenizer. Each new row starts as the mean of the old rows (a token the model
        has no opinion about yet), old rows are unchanged, tied weights stay tied. Resize before building
        the optimizer. Returns the model."""
        old = self.config.vocab_size
        if not isinstance(new_size, int) or new_size < old:
            raise ValueError(f"resize_vocab only grows the vocabulary: new_size must be an int >= {old} (the "
                             f"current vocab_size), got {new_size!r}")
        if new_size == old:
            return self

        def grown(weight: torch.Tensor) -> nn.Parameter:
            rows = weight.new_empty(new_size, weight.shape[1])
            rows[:old] = weight
            rows[old:] = weight.float().mean(0).to(weight.dtype)
            return nn.Parameter(rows, requires_grad=weight.requires_grad)

        self.tok_emb = nn.Embedding.from_pretrained(grown(self.tok_emb.weight), freeze=False)
        head = nn.Linear(self.config.d_model, new_size, bias=False, device="meta")
        head.weight = self.tok_emb.weight if self.config.tie_embeddings else grown(self.lm_head.weight)
        self.lm_head = head
        self.config = dataclasses.replace(self.config, vocab_size=new_size)
        return self

    # ------------------------------------------------------------------------------------------------
    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (tied weights once). Without embeddings: no token/position tables."""
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if exclude_embeddings and (name.startswith(("tok_emb.", "pos_emb.")) or name == "lm_head.weight"):
                continue
            total += p.numel()
        return total

    def num_matmul_params(self) -> int:
        """Weights that are multiplied with every token (all Linear layers, the LM head included).

        An MoE layer counts its router and only the top-k routed experts a token uses; the MTP modules,
        which inference drops, are not counted.
        """
        n = 0
        for name, m in self.named_modules():
            if name.startswith("mtp"):
                continue
            if isinstance(m, nn.Linear):
                n += m.weight.numel()
            elif isinstance(m, MoE):
                per_expert = m.experts.gate_up[0].numel() + m.experts.down[0].numel()
                n += m.router.weight.numel() + m.router.top_k * per_expert
        return n

    def info(self) -> dict[str, Any]:
        c = self.config
        n_mm = self.num_matmul_params()
        return {
            "parameters": self.num_params(),
            "parameters_without_embeddings": self.num_params(exclude_embeddings=True),
            "flops_per_token_training": c.flops_per_token(n_mm, training=True),
            "flops_per_token_inference": c.flops_per_token(n_mm, training=False),
            "kv_cache_bytes_per_token_fp32": c.kv_cache_bytes_per_token(4),
            "kv_cache_bytes_per_token_bf16": c.kv_cache_bytes_per_token(2),
            **self._architecture_info(),
        }

    def _architecture_info(self) -> dict[str, Any]:
        """Attention kind, its KV cache against MHA's, and MoE's active parameters (printed by `gator info`)."""
        c = self.config
        if c.attention == "mla":
            kind = f"MLA (cache: latent {c.kv_lora_rank} + RoPE key {c.qk_rope_head_dim} per token per layer)"
        elif c.n_kv_heads == c.n_heads:
            kind = f"MHA ({c.n_heads} heads)"
        else:
            kind = f"{'MQA' if c.n_kv_heads == 1 else 'GQA'} ({c.n_heads} query heads, {c.n_kv_heads} KV heads)"
        info: dict[str, Any] = {"attention": kind,
                                "kv_cache_bytes_per_token_bf16_if_mha": c.kv_cache_bytes_per_token_mha(2)}
        if c.moe_routed_experts:
            per_expert = 3 * c.d_model * c.moe_ffn_dim
            inactive = (c.n_layers - c.moe_dense_layers) * (c.moe_routed_experts - c.moe_top_k) * per_expert
            mtp = sum(p.numel() for p in self.mtp.parameters()) if self.mtp is not None else 0
            info["moe"] = (f"{c.moe_routed_experts} routed experts (top-{c.moe_top_k}, {c.moe_scoring}) + "
                           f"{c.moe_shared_experts} shared, layers {c.moe_dense_layers}..{c.n_layers - 1}")
            info["active_parameters"] = self.num_params() - inactive - mtp
        return info

    # ------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer: Any = None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write config.json and model.safetensors (each atomically: temp file, then rename), and the
        tokenizer's files when one is given. `state_dict` replaces the module's own tensors, e.g. the full
        weights a sharded (FSDP) model gathers on one process."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or self.state_dict()).items()}
        if any(".lora_A." in k or ".lora_B." in k for k in state):
            raise ValueError("the model has LoRA adapters: save them with gator.interop.peft.save_adapter, or "
                             "merge them into the weights first (gator.model.lora.remove_lora)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)
        _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        _atomic_write(directory / CONFIG_NAME,
                      lambda p: Path(p).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n"))
        if tokenizer is not None:
            tokenizer.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> Transformer:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory {directory} does not exist")
        config = ModelConfig.load(directory / CONFIG_NAME)
        state = load_safetensors(directory / WEIGHTS_NAME)
        with torch.device("meta"):
            model = cls(config)
        model.load_checked_state_dict(state)
        model.init_buffers()
        model = model.to(device)
        return model.to(dtype) if dtype is not None else model

    def init_buffers(self) -> None:
        """(Re)build computed, non-saved buffers such as the RoPE tables, e.g. after building on 'meta'."""
        c = self.config
        if self.rope is not None:
            self.rope = make_rope(c)

    def load_checked_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """load_state_dict with errors that name the tensor and what was expected."""
        expected = self.state_dict()
        if self.config.tie_embeddings:
            expected.pop("lm_head.weight", None)
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{source} does not match the model config: missing tensors {missing[:8]}"
                             f"{' ...' if len(missing) > 8 else ''}, unexpected tensors {unexpected[:8]}"
                             f"{' ...' if len(unexpected) > 8 else ''}; was it saved from a different model?")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, but the config "
                                 f"expects {tuple(expected[name].shape)}; the weights and config.json disagree")
        self.load_state_dict(state, strict=False, assign=True)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be truncated or "
                         "corrupt: re-save or re-download it") from None


def _atomic_write(path: Path, write) -> None:
    """Write through `write(tmp_path)` into a temp file in the same directory, then rename over `path`,
    so a crash or a full disk leaves the previous file intact (gator.outputs.atomic_write: the file gets
    the umask's normal mode, not mkstemp's 0600)."""
    from gator.outputs import atomic_write

    atomic_write(path, write)
