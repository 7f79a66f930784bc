"""Slim the virtual environment copied into the production image (run by the Dockerfile).

- pip and setuptools: nothing installs packages at run time.
- llama-cpp-python's wheel carries its shared libraries twice (site-packages/lib, with CMake
  and pkg-config files for C developers, and llama_cpp/lib, the copy it loads) and each library
  three times (libx.so, libx.so.0, libx.so.0.1.2 as separate files): keep one file per library
  and link the other names to it.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def main() -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools", "pip"],
        check=True,
    )
    site = Path(sysconfig.get_paths()["purelib"])
    (site / "distutils-precedence.pth").unlink(missing_ok=True)
    loaded = site / "llama_cpp" / "lib"
    extra = site / "lib"
    if loaded.is_dir() and (extra / "cmake").is_dir():
        for path in extra.iterdir():
            if path.name.startswith(("libllama", "libggml", "libmtmd")) or path.name in (
                "cmake",
                "pkgconfig",
            ):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if not any(extra.iterdir()):
            extra.rmdir()
    if loaded.is_dir():
        files = sorted(p for p in loaded.iterdir() if p.is_file() and not p.is_symlink())
        for short in files:
            longer = [p for p in files if p.name.startswith(short.name + ".") and p.exists()]
            target = max(longer, key=lambda p: len(p.name), default=None)
            if target and not target.is_symlink() and filecmp.cmp(short, target, shallow=False):
                short.unlink()
                short.symlink_to(target.name)
    saved = sum(1 for p in loaded.iterdir() if p.is_symlink()) if loaded.is_dir() else 0
    print(f"pruned venv: pip, setuptools, duplicate libraries ({saved} links)")


if __name__ == "__main__":
    main()
