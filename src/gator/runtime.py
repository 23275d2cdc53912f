"""The device and dtype policy: what is fast on this CPU or GPU, decided in one place.

Two decisions live here, and every other module asks this one instead of deciding for itself:

1. Which dtype matmuls are fast in on a device (`fast_dtype`). Every component that picks a compute
   dtype asks it: training autocast (`resolve_dtype("auto", ...)`), Muon's Newton-Schulz iteration,
   attention's CPU precision rule (`cpu_attention_in_fp32`), the benchmarks.
2. How the OpenMP threads of PyTorch's CPU kernels wait (`choose_omp_wait_policy`), picked before torch
   is imported.

## Fast dtypes

bf16 halves the bytes a matmul moves and, where the hardware has bf16 instructions, doubles or more the
FLOPs it does: GPUs since Ampere, and CPUs with AVX512-BF16 or AMX, which oneDNN reports as
`torch.ops.mkldnn._is_mkldnn_bf16_supported()` (`cpu_has_fast_bf16`). Elsewhere, e.g. on AVX2-only CPUs,
PyTorch emulates bf16 by converting to fp32 and back: a
bf16 matmul is then slower than an fp32 one. On a 2-core AVX2-only AMD EPYC, Muon with its Newton-Schulz
iteration in emulated bf16 trained at 2,431 tokens/s against AdamW's 7,670 (issue 17, measured with
bench/train_shakespeare.py and `--set optimizer=adamw`, before this policy existed).
So where bf16 is not fast, nothing casts to bf16 for speed: autocast `auto` is fp32, Muon iterates in
fp32, attention on low-precision inputs runs in fp32, and decoding never packs bf16 weights for oneDNN.
Older GPUs without bf16 get fp16 (with a loss scaler in training).

The environment variable `GATOR_FAST_BF16` overrides the CPU answer: `GATOR_FAST_BF16=0` makes a CPU
with native bf16 behave like an AVX2-only one (fp32 everywhere), `GATOR_FAST_BF16=1` the other way round
(then bf16 is emulated where the hardware lacks it: slow, but it shows what the other policy does).
The benchmarks print the policy and whether it was forced (`describe_dtype_policy`).

Attention on CPU (`cpu_attention_in_fp32`): even where bf16 is native, PyTorch's bf16 flash-attention
kernel is slower than its fp32 one for short keys (measured on the 2-core dev machine, batch x heads x
T x D = 32x4x64x32: 14.8 ms vs 4.3 ms forward + backward; about equal at 512 keys; bf16 ahead from
1024). So attention over at most `CPU_FP32_ATTENTION_MAX_KEYS` keys runs in fp32 and is cast back (fp32
is also the more accurate of the two). Single-token decoding steps keep their dtype: there the cast of
the whole cache would cost more than the kernel.

## OpenMP wait policy

PyTorch's CPU kernels split each operation across OpenMP threads that meet at a barrier when it ends.
What an idle thread does at that barrier is `OMP_WAIT_POLICY`, read once when the OpenMP runtime starts
(so it has to be in the environment before `import torch`):

- ACTIVE: spin. On a quiet machine this is the fast choice for small models, whose steps are thousands
  of short operations: the byte-level tinyshakespeare model of bench/train_shakespeare.py trained at
  about 31k tokens/s with ACTIVE and 21k with the runtime's default (2-core dev machine, one 60 s run
  each, same settings).
- PASSIVE: sleep. When other programs keep the cores busy, a spinning thread burns the time slice its
  descheduled partner needs: `torch.rms_norm` on a 16 x 256 x 256 tensor took ~45 ms with spinning
  threads under load against ~2.5 ms with PASSIVE (measured in an earlier session).

`choose_omp_wait_policy()` leaves a value the user set alone; otherwise it picks ACTIVE when the machine
is quiet and PASSIVE when other programs use at least half of the cores. "Busy" is measured over a
tenth of a second from /proc/stat (Linux) rather than from the load average, which still counts a run
that ended a minute ago. The `gator` command, `make demo` and the benchmarks call it first thing; a
program that imports torch itself should set `OMP_WAIT_POLICY` before doing so.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported inside the functions: `choose_omp_wait_policy` must run before it
    import torch

CPU_FP32_ATTENTION_MAX_KEYS = 512  # up to this many keys, CPU attention is faster in fp32 (see above)
FAST_BF16_ENV = "GATOR_FAST_BF16"  # "0" or "1": force the CPU answer of `cpu_has_fast_bf16` (see above)


def onednn_has_bf16() -> bool:
    """oneDNN's own answer: bf16 matmuls run natively on this CPU (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def forced_fast_bf16() -> bool | None:
    """The value forced by GATOR_FAST_BF16 (0 or 1), or None when it is not set."""
    value = os.environ.get(FAST_BF16_ENV, "").strip()
    if value == "":
        return None
    if value not in ("0", "1"):
        from gator.errors import GatorError

        raise GatorError(f"{FAST_BF16_ENV}={value!r}: expected 0 (bf16 is not fast here) or 1 (it is); "
                         "unset it to let oneDNN decide")
    return value == "1"


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls run natively on this CPU (AVX512-BF16 or AMX), as oneDNN reports it, unless
    GATOR_FAST_BF16 forces the answer."""
    forced = forced_fast_bf16()
    return onednn_has_bf16() if forced is None else forced


def describe_dtype_policy() -> str:
    """One line for benchmark output: the CPU's fast matmul dtype and where that answer came from."""
    fast, native, forced = cpu_has_fast_bf16(), onednn_has_bf16(), forced_fast_bf16()
    dtype = "bf16" if fast else "fp32"
    if forced is None:
        why = "oneDNN reports native bf16" if native else "oneDNN reports no native bf16"
    else:
        why = (f"FORCED by {FAST_BF16_ENV}={int(forced)}; oneDNN reports "
               + ("native bf16" if native else "no native bf16"))
    return f"CPU fast matmul dtype {dtype} ({why})"


def describe_cpu() -> str:
    """The CPU model and the flags that decide the fast path (as lscpu shows them), cores, torch, threads."""
    import platform

    import torch

    name, flags = "", set()
    try:  # Linux: what lscpu shows as "Model name" and "Flags"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86 / ARM
                    flags = set(value.split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "bf16") if f in flags]
    return (f"{name}; flags: {' '.join(shown) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}; "
            f"{os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads")


def fast_dtype(device: torch.device | str) -> torch.dtype:
    """The lowest-precision dtype that matmuls on `device` run natively in: bf16 on GPUs that have it
    (else fp16) and on CPUs with native bf16 (`cpu_has_fast_bf16`); fp32 everywhere else."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """A compute dtype from a setting: "auto" is `fast_dtype(device)`; "bf16", "fp16", "fp32" are taken
    as asked (bf16 on a GPU without it is an error that says what to use instead)."""
    import torch

    from gator.errors import GatorError

    if name == "auto":
        return fast_dtype(device)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in dtypes:
        raise GatorError(f"unknown dtype {name!r}; expected auto, bf16, fp16 or fp32")
    if dtypes[name] == torch.bfloat16 and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GatorError("this GPU has no bf16; use dtype=fp16 (with a loss scaler) or fp32")
    return dtypes[name]


def cpu_attention_in_fp32(n_queries: int, n_keys: int) -> bool:
    """Whether CPU attention on bf16/fp16 inputs (or under CPU autocast) should run in fp32: for short
    keys always, for any length where bf16 is not native; never for a single query (a decoding step)."""
    if n_queries <= 1:
        return False
    return n_keys <= CPU_FP32_ATTENTION_MAX_KEYS or not cpu_has_fast_bf16()


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies over all cores from /proc/stat, or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])  # user nice system idle iowait irq softirq steal


def busy_cores(seconds: float = 0.1) -> float:
    """How many cores other programs keep busy right now (sampled for `seconds`)."""
    cores = os.cpu_count() or 1
    first = _cpu_times()
    if first is None:
        try:
            return min(os.getloadavg()[0], cores)
        except OSError:
            return 0.0
    time.sleep(seconds)
    second = _cpu_times()
    total = second[1] - first[1]
    if total <= 0:
        return 0.0
    return cores * (1.0 - (second[0] - first[0]) / total)


def choose_omp_wait_policy(serving: bool = False) -> str:
    """Set OMP_WAIT_POLICY from the current load unless it is already set; return the policy in effect.

    `serving=True` (`gator serve`) always sleeps: the server's engine thread shares the cores with its HTTP
    thread, and spinning OpenMP workers starve it (bench/serve_load.py, 2-core Xeon: 1 client 33.7 vs 47.1
    tokens/s, 16 clients 182.9 vs 289.5 with ACTIVE vs PASSIVE)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"]
    if "torch" in sys.modules:  # too late: the OpenMP runtime has read the environment already
        return "default (torch was imported first)"
    cores = os.cpu_count() or 1
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE" if serving or busy_cores() >= 0.5 * cores else "ACTIVE"
    return os.environ["OMP_WAIT_POLICY"]
