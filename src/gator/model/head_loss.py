"""The LM head and its cross-entropy in one pass, a chunk of rows at a time, without the full logits.

A language model's loss is  mean over scored positions t of  logsumexp(W h_t) - (W h_t)[y_t].
Computed the plain way, the head writes logits for every position (N x V: 2,048 tokens x 50,281 words
is 206 MB in bf16, 412 MB once upcast to fp32 for a stable softmax), log-softmax reads and writes them
again, and backward does the same in reverse. On a CPU those passes over memory cost more than the
head's matrix product itself.

The gradient of the loss with respect to a row of logits is known in closed form:

    d loss / d logits_t = (softmax(logits_t) - onehot(y_t)) / n        (n = number of scored positions)

so the forward pass can finish the job for a chunk of rows at once: logits of the chunk, their
logsumexp (the loss), softmax minus one-hot (the gradient of the logits), then the gradients of the
hidden states, grad_h = g W, and of the head weight, grad_W += g^T h, when they are needed. Only one
chunk of logits exists at any time; backward multiplies the stored gradients by the incoming scalar.
(The same idea as the "fused linear cross-entropy" of Liger-Kernel and Apple's Cut Cross-Entropy,
written here in plain PyTorch.)

Positions whose target is -100 are not scored, as in `F.cross_entropy(..., ignore_index=-100)`; the
result is that function's mean (NaN when nothing is scored, as there). Under autocast the products run
in the autocast dtype and the softmax in fp32, as autocast runs `F.linear` followed by a float upcast.
Under `torch.no_grad()` (evaluation) only the loss is computed. The loss can be differentiated once (a
training step), not twice.
"""

from __future__ import annotations

import torch

IGNORE = -100
CHUNK_ELEMENTS = 1 << 23  # rows per chunk = this / vocabulary size: 32 MiB of fp32 logits


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int,
                grad_enabled: bool) -> torch.Tensor:
        need_h, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        scored = targets != IGNORE
        n = scored.sum()
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        # the gradient of the logits, one chunk at a time; all of it only when the head's weight trains
        # (grad_W = G^T h is then one product, as plain autograd computes it)
        G = torch.empty(h.shape[0], weight.shape[0], dtype=h.dtype, device=h.device) if need_w else None
        grad_h = torch.empty_like(h) if need_h and not need_w else None
        # one chunk's buffers, reused by every chunk (a fresh allocation of this size per chunk would be
        # mapped and zeroed by the operating system each time)
        z_all = torch.empty(rows, weight.shape[0], dtype=torch.float32, device=h.device)
        low = h.dtype != torch.float32  # products in bf16/fp16 (autocast), softmax in fp32
        zc_all = torch.empty_like(z_all, dtype=h.dtype) if low else z_all
        for start in range(0, h.shape[0], rows):
            end = min(start + rows, h.shape[0])
            z, zc = z_all[:end - start], zc_all[:end - start]
            keep = scored[start:end, None]
            y = torch.where(keep, targets[start:end, None], 0)
            torch.mm(h[start:end], weight.t(), out=zc)  # logits of the chunk (rows, V)
            if low:
                z.copy_(zc)  # the softmax runs in fp32 (plain ops: mixed-dtype ones are slower)
            z.sub_(z.amax(dim=-1, keepdim=True))  # shifted to a largest logit of 0: exp cannot overflow
            z_y = z.gather(1, y)
            p = z.exp_()
            s = p.sum(dim=-1, keepdim=True)  # logsumexp = max + log s
            total += ((s.log() - z_y) * keep).sum()
            if need_h or need_w:
                # (softmax - onehot) / n = (p - s onehot) * w / s, with w = 1/n on scored rows, else 0
                w = keep / n
                p.scatter_add_(1, y, -s).mul_(w / s)
                if need_w:
                    G[start:end] = p
                else:
                    if low:
                        zc.copy_(p)
                    torch.mm(zc if low else p, weight, out=grad_h[start:end])
        grad_w = None
        if need_w:
            grad_w = G.t() @ h
            grad_h = G @ weight if need_h else None
        ctx.save_for_backward(grad_h, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_out.to(grad_h.dtype),
                None if grad_w is None else grad_w * grad_out.to(grad_w.dtype), None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean cross-entropy of logits h @ weight.T against targets (-100 = not scored), never holding more
    than one chunk of the logits. h (..., d), weight (V, d), targets (...). Equals
    `F.cross_entropy(F.linear(h, weight).float().flatten(0, -2), targets.flatten(), ignore_index=-100)`."""
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    device = h.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        h, weight = h.to(dtype), weight.to(dtype)
    elif h.dtype != weight.dtype:
        raise ValueError(f"hidden states ({h.dtype}) and head weight ({weight.dtype}) differ; use autocast")
    rows = max(1, min(CHUNK_ELEMENTS // weight.shape[0], h.shape[0]))  # no buffer bigger than the input
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(h.contiguous(), weight, targets, rows, torch.is_grad_enabled())
