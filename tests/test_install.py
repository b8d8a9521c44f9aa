"""mtlbench as an installed package: a wheel installed into a fresh virtual environment runs a shipped spec from
outside the checkout (the specs are package data, not files of the source tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


@pytest.mark.slow
def test_installed_wheel_runs_a_shipped_spec_from_elsewhere(tmp_path, cache_dir):
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout others work in.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "mtlbench", src / "mtlbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp_path / "wheels", src, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("mtlbench-*.whl")
    shipped = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("mtlbench/specs/")}
    assert {"demo.toml", "smoke.toml", "paper.toml", "steel-cpu.toml"} <= shipped, shipped

    # A venv made from this venv's python sees the *base* interpreter's site-packages, not this venv's, even with
    # --system-site-packages. So: install the wheel into an empty venv (pip run for it through --python), then
    # point a .pth at this venv's site-packages for torch & co. Path lines of a .pth are not site dirs, so the
    # editable install's finder there never loads: `mtlbench` can only come from the wheel.
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel,
         cwd=tmp_path)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp_path).stdout.strip())
    (site / "_mtlbench_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(MTLBENCH_CACHE=str(cache_dir), COLUMNS="200")
    where = _run(python, "-c", "import mtlbench, mtlbench.sweep.spec as s; print(mtlbench.__file__); "
                 "print(s.SPEC_DIR)", cwd=elsewhere, env=env).stdout.split()
    for path in map(Path, where):
        assert path.is_relative_to(site) and not path.is_relative_to(REPO), where

    proc = _run(venv / "bin" / "mtlbench", "sweep", "demo", "--dry-run", "--out", "X", cwd=elsewhere, env=env)
    assert "sweep demo: 205 cells, 0 finished" in proc.stdout, proc.stdout[:2000]
    assert not (elsewhere / "X").exists()   # a dry run writes nothing
