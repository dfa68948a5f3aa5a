"""The real verl 0.9.1 and OpenRLHF 0.11.2 sources, for checks against them: their wheels from the package
registry (`pip download --no-deps`), unpacked under .engines/ (gitignored), and a small virtualenv there
with what their config and logging code needs (hydra-core, orjson) but none of their training stack.
Each helper skips the calling test, saying why, when the registry cannot be reached."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".engines"
PACKAGES = {"verl": "0.9.1", "openrlhf": "0.11.2"}
CHECK_REQUIREMENTS = ("hydra-core==1.3.2", "orjson")


def _run(argv: list[str], what: str, timeout: float = 600) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{what} took over {timeout:g} s (is the package registry reachable?)")
    if proc.returncode != 0:
        pytest.skip(f"{what} failed (is the package registry reachable?): {proc.stderr.strip()[-300:]}")


def source(name: str) -> Path:
    """The folder holding the package `name` (verl or openrlhf) as its release's wheel ships it."""
    version = PACKAGES[name]
    folder = CACHE / f"{name}-{version}"
    if not (folder / ".unpacked").exists():
        CACHE.mkdir(exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(CACHE), f"{name}=={version}"],
             f"pip download {name}=={version}")
        wheel = next(CACHE.glob(f"{name}-{version}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(folder)
        (folder / ".unpacked").touch()
    purelib = folder / f"{name}-{version}.data" / "purelib"
    return purelib if purelib.exists() else folder


def _see_this_environment(python: Path) -> None:
    """--system-site-packages shows the base interpreter's packages, not those of a venv this runs in
    (as CI's and a user's do): a .pth file adds this environment's site-packages after the new venv's."""
    import sysconfig

    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(target, "parent-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def check_python() -> Path:
    """The python of .engines/venv-checks: this environment's packages plus CHECK_REQUIREMENTS."""
    venv = CACHE / "venv-checks"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        CACHE.mkdir(exist_ok=True)
        _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], "making .engines/venv-checks")
        _see_this_environment(python)
        _run([str(python), "-m", "pip", "install", "--quiet", *CHECK_REQUIREMENTS],
             "pip install " + " ".join(CHECK_REQUIREMENTS))
        (venv / ".ready").touch()
    return python
