"""The wheel of this repository installs into a fresh virtual environment and runs from there.

Checks the package-dir mapping (core/, cli/, plugins/ -> biolm.core, biolm.cli, biolm.plugins),
the console script and the plugin entry points of a real (non-editable) install. Only the light
runtime dependencies the CLI needs to start are installed: ``--help``, ``plugins`` and a mode's
``-h`` must work without torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "pkg", "core", "cli", "plugins")


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BIOLM_LOAD_PLUGINS", "BIOLM_DEBUG", "VIRTUAL_ENV")}
    env.update(COLUMNS="200", PYTHONIOENCODING="utf-8")
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info into the source tree
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        s = REPO / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif s.exists():
            shutil.copy2(s, src / name)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src])
    (wheel,) = dist.glob("biolm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for member in ("biolm/__init__.py", "biolm/__main__.py", "biolm/core/schema.py", "biolm/core/hookspecs.py", "biolm/cli/app.py", "biolm/plugins/saluki/__init__.py", "biolm/plugins/lcl/__init__.py"):
        assert member in names, member
    assert not any(n.startswith(("tests/", "core/", "plugins/")) for n in names)
    ep = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(ep).decode()
    assert "saluki = biolm.plugins.saluki" in entry_points and "biolm = biolm.cli.app:main" in entry_points

    # a fresh venv (from the base interpreter); this environment's pip installs into it
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", py, "install", "-q"]
    run([*pip, "--no-deps", wheel])
    run([*pip, "typer", "rich", "pluggy", "pyyaml"])

    biolm = venv / "bin" / "biolm"
    from importlib.metadata import version

    assert run([biolm, "--version"]).stdout.strip() == f"biolm {version('biolm')}"
    plugins = run([biolm, "plugins"]).stdout
    for name in ("saluki", "lcl"):
        row = next(ln for ln in plugins.splitlines() if f" {name} " in ln)
        assert "BROKEN" not in row and "fine-tune" in row
    assert "--batchsize" in run([biolm, "saluki", "fine-tune", "-h"]).stdout  # no torch needed for help
    assert "saluki" in run([py, "-m", "biolm", "--help"]).stdout

    where = run([py, "-c", "import biolm, biolm.core.schema as s, biolm.cli.app as a, biolm.plugins.saluki as p, sys; print(biolm.__file__); print(s.__file__); print(a.__file__); print(p.__file__); print('torch' in sys.modules)"]).stdout.split()
    site = str(venv.resolve())
    for f in where[:4]:
        assert str(Path(f).resolve()).startswith(site) and "site-packages" in f, f
        assert not str(Path(f).resolve()).startswith(str(REPO) + os.sep), f
    assert where[4] == "False"
