"""Threads that keep their speed when the cores are shared.

Two causes of a 10-50× slowdown beside another busy process, both fixed here:

- **Spin-waiting.** OpenMP (torch's and MKL's runtime, libgomp) lets a thread that reaches a barrier spin for its
  peers; when a peer is not scheduled (another process holds its core) every parallel region waits out its time
  slice. :func:`wait_passively` sets ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at barriers) unless the user set a
  policy; the runtime reads it once, when it loads, so ``import recsys`` calls it before anything imports torch
  (``train.py``, the ``recsys`` CLI and ``import recsys`` alike). :func:`waiting` says which policy is in effect.
- **More threads than CPUs.** :func:`available_cpus` counts the CPUs this process may use: its affinity mask,
  bounded by a cgroup CPU quota (containers, SLURM); :func:`threads_for` divides them among the ranks sharing
  the node (``trainer=ddp_cpu``); ``trainer.threads`` overrides the count (``training.py`` applies it).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

POLICY = "OMP_WAIT_POLICY"
#: the policy recsys set (None: the user's own, or the runtime had already started)
_SET_BY_US: list[str] = []


def wait_passively() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` for this process and its children, unless the variable is set already or the
    OpenMP runtime has already started (torch imported first: the runtime read the environment then)."""
    if POLICY in os.environ or "torch" in sys.modules:
        return
    os.environ[POLICY] = "PASSIVE"
    _SET_BY_US.append("PASSIVE")


def waiting() -> dict:
    """The wait policy in effect and who chose it: ``recsys``, ``user`` (the environment had it), or
    ``runtime default`` (torch was imported before recsys, so the runtime spins: import recsys first)."""
    if _SET_BY_US:
        return {"policy": _SET_BY_US[0], "set_by": "recsys"}
    if POLICY in os.environ:
        return {"policy": os.environ[POLICY], "set_by": "user"}
    return {"policy": "runtime default (active spinning)", "set_by": "runtime default"}


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup's quota allows (quota / period), or None without a quota (cgroup v2, then v1)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, bounded by the cgroup's quota (rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def threads_for(ranks_on_node: int = 1, requested: int | None = None) -> int:
    """The torch threads of one process: ``requested`` (``trainer.threads``) if given, else its share of the
    available CPUs among ``ranks_on_node`` processes (at least 1)."""
    if requested is not None:
        return int(requested)
    return max(1, available_cpus() // max(1, ranks_on_node))


def apply(ranks_on_node: int = 1, requested: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`threads_for` (the user's ``OMP_NUM_THREADS`` wins where set and
    nothing was requested); returns the count in effect."""
    import torch

    if requested is None and "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    n = threads_for(ranks_on_node, requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
