"""How PyTorch's CPU threads wait: picked once, before torch is imported.

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


def choose_omp_wait_policy() -> str:
    """Set OMP_WAIT_POLICY from the current load unless it is already set; return the policy in effect."""
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"]
    if "torch" in sys.modules:  # too late: the OpenMP runtime has read the environment already
        return "default (torch was imported first)"
    cores = os.cpu_count() or 1
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE" if busy_cores() >= 0.5 * cores else "ACTIVE"
    return os.environ["OMP_WAIT_POLICY"]
