"""How many CPU threads an engine should use by default: the CPUs this process may really run on.

`os.cpu_count()` counts the host's cores. In a container limited to 2 CPUs on a 32-core node
that is 32 compute threads time-sliced onto 2 CPUs, and llama.cpp's threads meet at a barrier
after every operation: one descheduled thread stalls the others, so decoding slows by an order
of magnitude. The default follows the CPU affinity mask (taskset, cpuset, Kubernetes static CPU
manager) and the cgroup CPU quota (`docker --cpus`, Kubernetes CPU limits), v2 and v1.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def default_threads(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """min(CPUs in the affinity mask, the cgroup CPU quota rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup or Path("/proc/self/cgroup"))
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def name_os_thread(name: str) -> None:
    """Give the calling thread its name in the OS too (`top -H`, /proc/<pid>/task/*/comm, what
    the profile reads): Python before 3.14 names only its own thread object. Linux only, 15
    bytes."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def cgroup_cpu_limit(cgroup_root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its parents; None: none."""
    limits: list[float] = []
    for directory in _cgroup_dirs(cgroup_root, proc_cgroup):
        # v2: "max 100000" (no limit) or "<quota> <period>", in microseconds.
        fields = _read(directory / "cpu.max").split()
        if len(fields) == 2 and fields[0] != "max":
            limits.append(_ratio(fields[0], fields[1]))
        # v1: cpu.cfs_quota_us is -1 when there is no limit.
        quota, period = (
            _read(directory / "cpu.cfs_quota_us"),
            _read(directory / "cpu.cfs_period_us"),
        )
        if quota and period and not quota.startswith("-"):
            limits.append(_ratio(quota, period))
    limits = [x for x in limits if x > 0]
    return min(limits) if limits else None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup directories (v2 and v1 cpu controller), each with its parents."""
    relative: list[tuple[Path, str]] = []
    for line in _read(proc_cgroup).splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            relative.append((root, path))  # v2 unified hierarchy
        elif "cpu" in controllers.split(","):
            for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                if (root / name).is_dir():
                    relative.append((root / name, path))
                    break
    if not relative:
        relative = [(root, "/"), (root / "cpu", "/"), (root / "cpu,cpuacct", "/")]
    dirs: list[Path] = []
    for base, path in relative:
        # Inside a container the own cgroup is mounted as the root: the path may not exist.
        current = base / path.strip("/")
        while True:
            if current.is_dir() and current not in dirs:
                dirs.append(current)
            if current == base or base not in current.parents:
                break
            current = current.parent
    return dirs


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _ratio(quota: str, period: str) -> float:
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return 0.0
