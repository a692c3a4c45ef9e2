"""How many pipeline processes a replica runs: ``processing.processes``, where ``"auto"`` is the CPUs
this process may use, a container's CPU quota included."""

from __future__ import annotations

import math
import os

# Each pipeline process is a whole consumer-group member and uses about one core under a backlog.
# Measured on 1 and 2 cores (docs/benchmarks.md); beyond 8, more replicas spread better than more
# processes in one pod (each process holds its own connections and ~30 MB of its own).
MAX_AUTO_PROCESSES = 8


def resolve_processes(setting: int | str, cgroup_root: str = "/sys/fs/cgroup") -> int:
    """``"auto"``: one process per usable CPU, at most ``MAX_AUTO_PROCESSES``. Docker's ``--cpus``
    and Kubernetes CPU limits leave every host CPU in the affinity mask, so the quota counts too."""
    if setting != "auto":
        return int(setting)
    return min(usable_cpus(cgroup_root), MAX_AUTO_PROCESSES)


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: str) -> float | None:
    """CPUs' worth of the cgroup's CFS quota (v2 ``cpu.max``, v1 ``cfs_quota_us``), None if unlimited."""
    try:
        with open(f"{root}/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(f"{root}/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open(f"{root}/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
