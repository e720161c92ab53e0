"""CPU threads: how many this process may use, and a scope that holds torch and BLAS to them.

A fit left to torch's default starts one thread per core even when the cores are shared;
on a loaded machine the threads then wait on each other and an epoch takes about ten times
longer than with one thread (``benchmarks/results/threads.md``). Commands therefore take
``--threads N`` (as PLINK, regenie and GEMMA users expect) and default to the CPUs this
process may use, as a cluster scheduler granted them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from threadpoolctl import threadpool_limits

_interop_set: int | None = None
"""The inter-op pool size this process set (torch allows it once, before any parallel work)."""


def cpu_limit() -> tuple[int, str]:
    """``(cpus, where from)``: the CPUs this process may run on (``os.sched_getaffinity``:
    taskset, cgroups cpusets, a SLURM allocation), or ``SLURM_CPUS_PER_TASK`` when set and
    smaller (SLURM may bind a task to a whole node's cores but grant it fewer), or
    ``OMP_NUM_THREADS`` when set and smaller still (the limit torch itself would obey).
    ``where from`` is ``"CPU affinity"``, ``"CPU count"`` (no affinity call: macOS,
    Windows), ``"SLURM_CPUS_PER_TASK"`` or ``"OMP_NUM_THREADS"``.

    Example:
        >>> cpus, source = cpu_limit()
        >>> cpus >= 1, source in ("CPU affinity", "CPU count", "SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")
        (True, True)
    """
    try:
        cpus, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cpus, source = os.cpu_count() or 1, "CPU count"
    for variable in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):  # a grant, or the user's own OpenMP limit
        granted = os.environ.get(variable, "").strip()
        if granted.isdigit() and 0 < int(granted) < cpus:
            cpus, source = int(granted), variable
    return max(cpus, 1), source


def available_cpus() -> int:
    """The default thread count: see :func:`cpu_limit`."""
    return cpu_limit()[0]


def per_worker(threads: int | None, workers: int) -> int:
    """Threads for each of ``workers`` processes sharing ``threads`` (default: every CPU this
    process may use): ``threads // workers``, at least 1.

    Example:
        >>> per_worker(8, workers=3), per_worker(2, workers=4)
        (2, 1)
    """
    total = available_cpus() if threads is None else threads
    return max(total // max(workers, 1), 1)


def _set_interop(threads: int) -> None:
    """Size torch's inter-op pool once per process (a second call, or one after parallel work
    started, raises in torch): the first value stays for the life of the process."""
    global _interop_set
    if _interop_set is not None:
        return
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set or already used (e.g. inherited by a forked worker)
        pass
    _interop_set = torch.get_num_interop_threads()


@contextmanager
def thread_limits(threads: int | None = None) -> Iterator[int]:
    """Hold torch (intra-op threads) and the BLAS/OpenMP pools of numpy and scipy
    (``threadpoolctl.threadpool_limits``) to ``threads`` (default :func:`available_cpus`)
    inside the block; yields the number used.

    On exit torch's intra-op count and the BLAS/OpenMP limits are restored to what they
    were. Torch's inter-op pool (idle in flowpheno's eager CPU code) can be sized only once
    per process, before any parallel work: the first call sets it and it keeps that size.

    Raises:
        ValueError: ``threads`` below 1.
    """
    used = available_cpus() if threads is None else int(threads)
    if used < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    _set_interop(used)
    torch.set_num_threads(used)
    try:
        with threadpool_limits(limits=used):
            yield used
    finally:
        torch.set_num_threads(previous)


def thread_report(requested: int | None) -> dict[str, Any]:
    """What a run records (``fit.json`` ``threads``): the request, the count used and where
    the default came from, and torch's intra- and inter-op counts as seen inside the run."""
    limit, source = cpu_limit()
    return {
        "requested": requested,
        "used": torch.get_num_threads(),
        "default_from": None if requested is not None else source,
        "cpus_available": limit,
        "torch_interop": torch.get_num_interop_threads(),
    }
