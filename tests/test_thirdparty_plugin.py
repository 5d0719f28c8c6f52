"""A third-party plugin installed with pip works through the CLI; a broken one is reported.

The plugin packages are pip-installed with ``--target`` into a temporary folder that the biolm
subprocesses see through ``PYTHONPATH``: the entry points are discovered exactly as for a package
installed into the environment, without changing the shared virtual environment (other tests, or
other people, running at the same time never see the toy plugins, and nothing needs uninstalling).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from biolm.core.exampledata import write_dataset

TOYPLUG = Path(__file__).parent / "thirdparty" / "biolm_toyplug"


def pip_install_target(package_dir: Path, target: Path, workdir: Path) -> Path:
    """``pip install --no-deps`` a copy of ``package_dir`` (the build writes into its source tree)."""
    src = workdir / package_dir.name
    shutil.copytree(package_dir, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "--target", str(target), str(src)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:  # e.g. no setuptools in this environment: let pip fetch it
        cmd.remove("--no-build-isolation")
        cmd.remove("--no-index")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return target


def biolm(*args: str, pythonpath: Path, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("BIOLM_DEBUG", "BIOLM_LOAD_PLUGINS", "TOYPLUG_EPOCH_LOG", "TOYPLUG_FAIL_BUILD")}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    e.update(COLUMNS="200", PYTHONIOENCODING="utf-8", **env)
    return subprocess.run([sys.executable, "-m", "biolm", *map(str, args)], capture_output=True, text=True, env=e, timeout=300)


@pytest.fixture(scope="module")
def toyplug(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("toyplug")
    return pip_install_target(TOYPLUG, work / "site", work)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("toyrun")
    data = write_dataset(d / "rna.txt", 40, seed=5, min_len=30, max_len=80)
    src = {"filepath": str(data), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6}
    cfg = {
        "outputpath": str(d / "out"),
        "tokenizing and pre-training data source": src,
        "fine-tuning data source": {**src, "labelpos": 3, "splitratio": "70,15,15"},
        "inference data source": {**src, "labelpos": 3},
        "inference model": {"pretrainedmodel": str(d / "out" / "fine-tune" / "0")},
        "settings": {"training": {"batchsize": 8, "scaling": "log"}},
        "model": {"init_scale": 0.5},
    }
    path = d / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path, d / "out"


def test_thirdparty_plugin_through_the_cli(toyplug, experiment, tmp_path):
    config, out = experiment
    p = biolm("plugins", pythonpath=toyplug)
    assert p.returncode == 0, p.stderr
    row = next(ln for ln in p.stdout.splitlines() if "toyplug" in ln)
    assert "0.0.1" in row and "fine-tune" in row
    assert "saluki" in p.stdout and "BROKEN" not in p.stdout
    assert "toyplug" in biolm("--help", pythonpath=toyplug).stdout
    assert "toyplug" not in biolm("plugins", pythonpath=toyplug, BIOLM_LOAD_PLUGINS="saluki").stdout

    h = biolm("toyplug", "--help", pythonpath=toyplug)
    assert h.returncode == 0 and "fine-tune" in h.stdout and "interpret" in h.stdout
    h = biolm("toyplug", "fine-tune", "-h", pythonpath=toyplug)
    assert h.returncode == 0 and "--init-scale" in h.stdout and "--no-bias" in h.stdout

    epochs = tmp_path / "epochs.txt"
    f = biolm("toyplug", "fine-tune", "--task", "regression", "--configfile", config, "--nepochs", "2", pythonpath=toyplug, TOYPLUG_EPOCH_LOG=str(epochs))
    assert f.returncode == 0, f.stderr
    assert epochs.read_text().split() == ["0", "1"]  # on_epoch_end reached the third-party hookimpl
    fold = out / "fine-tune" / "0"
    for name in ("pytorch_model.bin", "config.json", "scaler.json", "tokenizer.json", "test_predictions.csv", "all_results.json", "trainer_state.json"):
        assert (fold / name).is_file(), name
    assert (out / "tokenizer.json").is_file() and (out / "fine-tune" / "cv_results.json").is_file()
    resolved = yaml.safe_load((out / "fine-tune" / "config.yaml").read_text())
    assert resolved["model"] == {"bias": True, "init_scale": 0.5}
    assert resolved["settings"]["training"]["lr"] == 0.01  # the plugin's training default

    r = biolm("toyplug", "predict", "--task", "regression", "--configfile", config, pythonpath=toyplug)
    assert r.returncode == 0, r.stderr
    with open(out / "predict" / "test_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and all(float(x["prediction"]) > 0 for x in rows)  # log scaling inverted


def test_unexpected_failure_in_plugin_exits_1(toyplug, experiment):
    config, _ = experiment
    p = biolm("toyplug", "fine-tune", "--task", "regression", "--configfile", config, "--outputpath", Path(config).parent / "fail", pythonpath=toyplug, TOYPLUG_FAIL_BUILD="1")
    assert p.returncode == 1
    last = [ln for ln in p.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("unexpected error:") and "RuntimeError" in last and "--debug" in last


def test_unexpected_failure_prints_no_traceback_without_debug(toyplug, experiment):
    config, _ = experiment
    p = biolm("toyplug", "fine-tune", "--task", "regression", "--configfile", config, "--outputpath", Path(config).parent / "fail2", pythonpath=toyplug, TOYPLUG_FAIL_BUILD="1")
    assert p.returncode == 1 and "Traceback" not in p.stderr


def test_broken_plugin_is_listed_and_others_still_work(tmp_path):
    pkg = tmp_path / "biolm_brokenplug"
    (pkg / "biolm_brokenplug").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "biolm-brokenplug"
            version = "0.0.1"

            [project.entry-points.biolm]
            brokenplug = "biolm_brokenplug"

            [tool.setuptools]
            packages = ["biolm_brokenplug"]
            """
        )
    )
    (pkg / "biolm_brokenplug" / "__init__.py").write_text('raise ImportError("brokenplug needs the missing package zzz_not_installed")\n')
    site = pip_install_target(pkg, tmp_path / "site", tmp_path / "work")

    p = biolm("plugins", pythonpath=site)
    assert p.returncode == 0, p.stderr
    row = next(ln for ln in p.stdout.splitlines() if "brokenplug" in ln)
    assert "BROKEN" in row and "ImportError" in row and "zzz_not_installed" in p.stdout
    assert "saluki" in p.stdout and "lcl" in p.stdout
    h = biolm("--help", pythonpath=site)
    assert h.returncode == 0 and "saluki" in h.stdout
    s = biolm("saluki", "--help", pythonpath=site)
    assert s.returncode == 0 and "fine-tune" in s.stdout
    b = biolm("brokenplug", "tokenize", pythonpath=site)
    assert b.returncode == 2 and "Traceback" not in b.stderr


def test_a_second_plugin_with_a_taken_name_is_refused(tmp_path, monkeypatch):
    """A package registering ``saluki`` again is listed as broken with the reason; the built-in stays."""
    import sys
    from importlib.metadata import EntryPoint

    import biolm.core.plugins as plugins

    (tmp_path / "dupe_saluki.py").write_text(
        textwrap.dedent(
            """
            from biolm.core.hookspecs import ModelSpec, PluginConfig, hookimpl

            @hookimpl
            def register_config(register):
                register(PluginConfig(name="saluki", description="an impostor"))

            @hookimpl
            def register_model(register):
                register("saluki", ModelSpec(build=lambda cfg, info: None))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real(group=group), EntryPoint("dupe", "dupe_saluki", "biolm")])
    monkeypatch.setattr(plugins, "_registry", None)
    try:
        reg = plugins.get_registry()
        assert reg.plugin("saluki").description != "an impostor"
        assert reg.model("saluki").build is not None and reg.model("saluki").fast_loo is not None
        errors = [b.error for b in reg.broken if b.name == "dupe"]
        assert "RegistrationError: plugin 'saluki' is already registered by 'saluki'" in errors[0]
        assert any("model 'saluki' is already registered" in e for e in errors)
    finally:
        plugins._registry = None
        sys.modules.pop("dupe_saluki", None)
