"""Find or build `msf-run-native` (docs/NATIVE.md): the repository's CMakeLists.txt against the libtorch
inside the installed torch wheel (`torch.utils.cmake_prefix_path`).

    python -m runtime.native.build              # -> build/msf-run-native (configures once, then incremental)
    python -m runtime.native.build --cuda       # with the CUDA graph runner (needs a CUDA torch + toolkit)

Tests, benchmarks and benchmarks/gpu_native.sh use `ensure_binary`, so a checkout with the system
packages (cmake, a C++ compiler, libpng, OpenSSL, nlohmann-json) needs no manual step.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / "build"
BINARY = "msf-run-native"


class BuildError(RuntimeError):
    """The native runner cannot be built here; the message says why in one line."""


def torch_prefix() -> str:
    import torch

    return torch.utils.cmake_prefix_path


def missing_tools() -> str | None:
    """Why a build cannot even start here (no cmake, no C++ compiler, no CMakeLists.txt), or None."""
    if not (ROOT / "CMakeLists.txt").is_file():
        return f"{ROOT / 'CMakeLists.txt'} is missing (an installed package, not a checkout)"
    if shutil.which("cmake") is None:
        return "cmake is not installed (apt-get install cmake)"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (apt-get install g++)"
    return None


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
        errors = [l for l in lines if "error" in l.lower() or "could not find" in l.lower()] or lines[-1:]
        raise BuildError(f"{what} failed: {errors[0].strip() if errors else 'no output'}")


def ensure_binary(build_dir: Path = BUILD_DIR, cuda: bool = False, jobs: int = 2) -> Path:
    """-> path of msf-run-native in ``build_dir``, configuring (first time) and building (incremental,
    about a second when nothing changed). BuildError with one line when that is impossible."""
    why = missing_tools()
    if why:
        raise BuildError(why)
    build_dir = Path(build_dir)
    if not (build_dir / "CMakeCache.txt").is_file():
        _run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
              f"-DCMAKE_PREFIX_PATH={torch_prefix()}", f"-DMSF_WITH_CUDA={'ON' if cuda else 'OFF'}"],
             "cmake configure (needs libpng-dev libssl-dev nlohmann-json3-dev)")
    _run(["cmake", "--build", str(build_dir), "-j", str(jobs)], "cmake build")
    return build_dir / BINARY


def binary_or_reason() -> tuple[Path | None, str | None]:
    """(path, None) when the binary is there or could be built, else (None, why): what tests skip on."""
    try:
        return ensure_binary(), None
    except BuildError as e:
        return None, f"msf-run-native cannot be built here: {e}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", type=Path, default=BUILD_DIR)
    ap.add_argument("--cuda", action="store_true", help="-DMSF_WITH_CUDA=ON (a CUDA torch and toolkit)")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    try:
        print(ensure_binary(a.build_dir, a.cuda, a.jobs))
    except BuildError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
