"""The llama.cpp build is portable: GGML_NATIVE=OFF, AVX2 on, no AVX-512 and no AMX.

pip compiles llama-cpp-python with -march=native by default; on a host whose CPU advertises AMX
but whose hypervisor faults on it, the first real prompt segfaults, and a wheel (or image) built
on one host is tied to its CPU. scripts/llama-cpp-wheel.sh builds it once per flag set instead;
`make install`, the Dockerfiles and bench/ all go through it. Nothing here compiles anything.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "llama-cpp-wheel.sh"
X86 = platform.machine().lower() in ("x86_64", "amd64")


def script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "PYTHON")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


@pytest.mark.skipif(not X86, reason="the instruction-set flags are x86-64 ones")
def test_installed_llama_cpp_is_portable() -> None:
    """The venv's llama.cpp (from the script's wheel) uses AVX2, and no AVX-512 or AMX kernels."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AVX2 = 1" in info, info
    assert not re.search(r"AVX512\w* = 1", info), info
    assert not re.search(r"AMX\w* = 1", info), info


def test_default_flags_are_portable() -> None:
    flags = shlex.split(script("--flags").stdout)
    assert "-DGGML_NATIVE=OFF" in flags
    assert not any(f.startswith("-DGGML_NATIVE=") and f != "-DGGML_NATIVE=OFF" for f in flags)
    if X86:
        for on in ("AVX", "AVX2", "FMA", "F16C", "BMI2"):
            assert f"-DGGML_{on}=ON" in flags
        for off in ("AVX512", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
            assert f"-DGGML_{off}=OFF" in flags


def test_cmake_args_replace_the_flags() -> None:
    assert script("--flags", CMAKE_ARGS="-DGGML_NATIVE=ON").stdout.strip() == "-DGGML_NATIVE=ON"


def fake_python(tmp: Path) -> tuple[Path, Path]:
    """A PYTHON whose `-m pip wheel` only records its arguments and drops an empty wheel."""
    log = tmp / "pip.log"
    fake = tmp / "python"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
        f'    echo "$CMAKE_ARGS | $*" >> "{log}"\n'
        '    while [ "$#" -gt 0 ]; do\n'
        '        if [ "$1" = "--wheel-dir" ]; then dir="$2"; fi; shift\n'
        "    done\n"
        '    touch "$dir/llama_cpp_python-0.0-py3-none-linux_x86_64.whl"\n'
        "    exit 0\n"
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake, log


def test_wheel_cache_is_keyed_by_the_flags(tmp_path: Path) -> None:
    """Other flags, another cache folder: a native wheel is never handed to a portable install."""
    python, log = fake_python(tmp_path)
    root = tmp_path / "wheels"

    def wheel(cmake_args: str | None) -> Path:
        env = {"PYTHON": str(python)} | ({"CMAKE_ARGS": cmake_args} if cmake_args else {})
        return Path(script(str(root), **env).stdout.strip())

    portable = wheel(None)
    native = wheel("-DGGML_NATIVE=ON")
    assert portable.is_file() and native.is_file()
    assert portable.parent != native.parent
    assert (native.parent / "CMAKE_ARGS").read_text().strip() == "-DGGML_NATIVE=ON"
    assert (portable.parent / "CMAKE_ARGS").read_text().strip() == script("--flags").stdout.strip()
    # Built once per flag set: asking again reuses the folder, pip does not run.
    assert wheel(None) == portable
    assert wheel("-DGGML_NATIVE=ON") == native
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    # pip's own wheel cache (which ignores CMAKE_ARGS) is neither read nor written.
    assert all("--no-cache-dir" in c and "--no-binary llama-cpp-python" in c for c in calls)
    assert not list(root.glob("*.tmp.*"))


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_build_llama_cpp_through_the_script(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert "scripts/llama-cpp-wheel.sh" in text
    assert "LLAMA_CMAKE_ARGS" in text
    # No direct `pip install --no-binary llama-cpp-python` (native flags) left anywhere.
    assert "--no-binary llama-cpp-python" not in text
    assert "GGML_NATIVE=ON" not in text.replace("LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON", "")
