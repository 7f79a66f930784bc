"""Default thread counts follow the affinity mask and the cgroup CPU quota (fake cgroup trees);
threads carry their names into the OS."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from genai_service.engines.threads import cgroup_cpu_limit, default_threads, name_os_thread


def _tree(tmp_path: Path, files: dict[str, str], cgroup: str) -> tuple[Path, Path]:
    root = tmp_path / "sys-fs-cgroup"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(cgroup)
    return root, proc


def test_v2_quota_rounds_up(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, {"cpu.max": "150000 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert default_threads(root, proc) == min(2, len(os.sched_getaffinity(0)))


def test_v2_no_limit(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) is None
    assert default_threads(root, proc) == len(os.sched_getaffinity(0))


def test_v2_tightest_of_own_cgroup_and_parents(tmp_path: Path) -> None:
    files = {
        "cpu.max": "max 100000",
        "kubepods/cpu.max": "400000 100000",
        "kubepods/pod1/cpu.max": "50000 100000",  # half a CPU: still one thread
        "kubepods/pod1/app/cpu.max": "max 100000",
    }
    root, proc = _tree(tmp_path, files, "0::/kubepods/pod1/app\n")
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert default_threads(root, proc) == 1


def test_v1_cfs_quota(tmp_path: Path) -> None:
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path, files, "12:cpu,cpuacct:/\n11:memory:/\n")
    assert cgroup_cpu_limit(root, proc) == 1.0
    assert default_threads(root, proc) == 1


def test_v1_unlimited(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path, files, "4:cpu:/docker/abc\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_affinity_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, proc = _tree(tmp_path, {"cpu.max": "max 100000"}, "0::/\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert default_threads(root, proc) == 1


def test_this_machine() -> None:
    # The real /sys/fs/cgroup and /proc/self/cgroup: never more than the affinity mask allows.
    assert 1 <= default_threads() <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_NAME is Linux's")
def test_a_thread_gets_its_name_in_the_os_too() -> None:
    names: list[str] = []

    def run() -> None:
        name_os_thread("direct-sender")
        names.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert names == ["direct-sender\n"]  # what top -H and the profile read
