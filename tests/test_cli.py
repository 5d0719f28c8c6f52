"""The command line as users and scripts see it: help, exit codes, outputs, start-up cost.

Most tests run ``python -m biolm`` in a subprocess, so each sees a fresh process (the CLI keeps
per-process state such as the plugin registry and the --debug flag).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from biolm.core.config import dump_resolved, load_yaml, resolve
from biolm.core.exampledata import write_dataset
from biolm.core.plugins import get_registry

BIOLM = [sys.executable, "-m", "biolm"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("BIOLM_DEBUG", "BIOLM_LOAD_PLUGINS")}
    env.update(COLUMNS="200", PYTHONIOENCODING="utf-8")
    env.update(extra)
    return env


def biolm(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BIOLM, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=_env(**env), timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A few dozen short transcripts: id, split, halflife, stability, quality, sequence."""
    return write_dataset(tmp_path_factory.mktemp("data") / "rna.txt", 30, seed=3, min_len=30, max_len=80)


def write_config(path: Path, datafile: Path, outdir: Path, **sections) -> Path:
    cfg = {
        "outputpath": str(outdir),
        "tokenizing and pre-training data source": {"filepath": str(datafile), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6},
        "fine-tuning data source": {"filepath": str(datafile), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6, "labelpos": 3, "splitratio": "80,20"},
        "settings": {"training": {"batchsize": 8, "blocksize": 64, "nepochs": 1}},
    }
    cfg.update(sections)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def with_bad_row(src: Path, dst: Path, line: int, column: int, value: str) -> Path:
    """A copy of ``src`` with field ``column`` (1-based) of line ``line`` replaced by ``value``."""
    lines = src.read_text(encoding="utf-8").splitlines()
    fields = lines[line - 1].split("\t")
    fields[column - 1] = value
    lines[line - 1] = "\t".join(fields)
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def stderr_lines(p: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if ln.strip()]


# --------------------------------------------------------------------------- help, version, plugins


def test_help_imports_no_torch_and_lists_plugins():
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "biolm", "--help"], capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert "biolm.cli.app" in imported  # the -X importtime report was parsed
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "h5py", "shap", "matplotlib", "pandas"))
    assert not heavy, f"biolm --help imported {heavy[:5]}"
    assert "saluki" in p.stdout and "lcl" in p.stdout and "plugins" in p.stdout


def test_version_from_module_and_console_script():
    expected = f"biolm {version('biolm')}"
    p = biolm("--version")
    assert p.returncode == 0 and p.stdout.strip() == expected
    script = Path(sys.executable).parent / "biolm"
    if script.exists():  # the console script of the installed distribution
        q = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=_env(), timeout=120)
        assert q.returncode == 0 and q.stdout.strip() == expected


def test_plugins_command_lists_builtins():
    p = biolm("plugins")
    assert p.returncode == 0, p.stderr
    for name in ("saluki", "lcl"):
        assert name in p.stdout
    assert "fine-tune" in p.stdout and "BROKEN" not in p.stdout


def test_plugin_help_lists_its_modes():
    p = biolm("saluki", "--help")
    assert p.returncode == 0, p.stderr
    for mode in ("tokenize", "fine-tune", "predict", "interpret"):
        assert mode in p.stdout
    assert "pre-train" not in p.stdout  # saluki does not pre-train


def _panel(text: str, title: str) -> str:
    """The body of the rich help panel named ``title``."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"╭─ {title} "))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("╰"))
    return "\n".join(lines[start + 1 : end])


def test_mode_help_groups_options_by_yaml_section():
    long = biolm("saluki", "fine-tune", "--help")
    short = biolm("saluki", "fine-tune", "-h")
    assert long.returncode == 0 and short.returncode == 0, long.stderr + short.stderr
    assert short.stdout == long.stdout
    out = long.stdout
    training = _panel(out, "settings / training")
    assert "--batchsize" in training and "--nepochs" in training and "--lr" in training
    assert "--filters" in _panel(out, "model")  # the plugin's model: section
    assert "--splitratio" in _panel(out, "fine-tuning data source")
    assert "--lefttailing" in out and "--no-lefttailing" in out
    assert "--task" in _panel(out, "run")
    # each mode reads only its own keys
    assert "--handletokens" not in out and "--inferenceonsplits" not in out and "--samplesize" not in out


def test_mode_help_shows_defaults_choices_and_brackets():
    out = " ".join(biolm("saluki", "fine-tune", "-h").stdout.split())  # panel wrapping undone
    assert "Random seed for splits, initialisation, shuffling and sampling. [default: 42]" in out
    assert "Maximum training epochs. [default: 50]" in out
    assert "[log|minmax|standard|none] [default: none]" in out
    assert "'70,20,10', [85, 15] or '70/20/10'. [default: 85,15]" in out  # brackets in the help text kept
    assert "[default: 12288]" in out  # saluki's own block size, not the core default


def test_unknown_mode_lists_the_plugins_modes_and_suggests_one():
    p = biolm("saluki", "pre-train", "-c", "x.yaml")
    assert p.returncode == 2
    assert "No such mode 'pre-train' for saluki; its modes: tokenize, fine-tune, predict, interpret." in p.stderr
    p = biolm("saluki", "finetune", "--task", "regression")
    assert p.returncode == 2 and "Did you mean 'fine-tune'?" in p.stderr
    p = biolm("salukii", "fine-tune")
    assert p.returncode == 2 and "No such plugin or command 'salukii'" in p.stderr and "Did you mean 'saluki'?" in p.stderr
    p = biolm("plugin")
    assert p.returncode == 2 and "Did you mean 'plugins'?" in p.stderr


def test_interpret_help_has_looscores_but_no_training_keys():
    p = biolm("saluki", "interpret", "-h")
    assert p.returncode == 0, p.stderr
    assert "--handletokens" in _panel(p.stdout, "looscores")
    assert "--pretrainedmodel" in _panel(p.stdout, "inference model")
    assert "--nepochs" not in p.stdout and "--filters" not in p.stdout


# --------------------------------------------------------------------------- exit codes


def test_unknown_config_key_is_one_line_exit_2(tmp_path, data):
    cfg = write_config(tmp_path / "bad key.yaml", data, tmp_path / "out", settings={"training": {"batchsiz": 8}})
    p = biolm("saluki", "tokenize", "--configfile", cfg)
    assert p.returncode == 2
    lines = stderr_lines(p)
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error:")
    assert str(cfg) in lines[0] and "batchsiz" in lines[0] and "batchsize" in lines[0]  # file, key, hint
    assert "Traceback" not in p.stderr and p.stdout == ""
    # nothing but the failed run's log, which names the key
    written = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    assert len(written) == 1 and written[0].parent == tmp_path / "out" / "tokenize" / "logs"
    assert "batchsiz" in written[0].read_text()


def test_bad_value_names_key_and_allowed_values(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "out", settings={"training": {"scaling": "lgo"}})
    p = biolm("saluki", "fine-tune", "--task", "regression", "--configfile", cfg)
    assert p.returncode == 2
    (line,) = stderr_lines(p)
    assert line.startswith("error:") and "settings.training.scaling" in line and "minmax" in line


def test_missing_config_file_exit_2(tmp_path):
    p = biolm("saluki", "tokenize", "--configfile", tmp_path / "nope.yaml")
    assert p.returncode == 2
    (line,) = stderr_lines(p)
    assert line.startswith("error:") and "nope.yaml" in line and "Traceback" not in p.stderr


def test_missing_task_is_a_usage_error(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "out")
    p = biolm("saluki", "fine-tune", "--configfile", cfg)
    assert p.returncode == 2 and "--task" in p.stderr


def test_bad_label_names_file_and_line_exit_2(tmp_path, data):
    bad = with_bad_row(data, tmp_path / "bad.txt", line=3, column=3, value="abc")
    cfg = write_config(tmp_path / "c.yaml", bad, tmp_path / "out")
    p = biolm("saluki", "fine-tune", "--task", "regression", "--configfile", cfg)
    assert p.returncode == 2, p.stderr
    last = stderr_lines(p)[-1]
    assert last.startswith("error:") and f"{bad}:3" in last and "abc" in last
    assert "Traceback" not in p.stderr


def test_debug_shows_traceback(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "out", settings={"training": {"batchsiz": 8}})
    p = biolm("--debug", "saluki", "tokenize", "--configfile", cfg)
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "ConfigError" in p.stderr and "batchsiz" in p.stderr


def test_debug_keeps_exit_code_2(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "out", settings={"training": {"batchsiz": 8}})
    assert biolm("--debug", "saluki", "tokenize", "--configfile", cfg).returncode == 2


def test_quiet_prints_only_the_output_directory(tmp_path, data):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", data, out)
    p = biolm("--quiet", "saluki", "tokenize", "--configfile", cfg)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [str(out / "tokenize")]
    assert p.stderr.strip() == ""


# --------------------------------------------------------------------------- tokenize end to end


def test_tokenize_end_to_end_and_rerun_from_resolved_config(tmp_path, data):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", data, out)
    p = biolm("saluki", "tokenize", "--configfile", cfg)
    assert p.returncode == 0, p.stderr
    assert "outputs:" in p.stdout
    tok = out / "tokenizer.json"
    assert tok.is_file()
    assert len(list((out / "tokenize" / "logs").glob("*.log"))) == 1
    resolved = out / "tokenize" / "config.yaml"
    assert resolved.is_file()
    first = tok.read_bytes()
    # the written config reproduces the run
    q = biolm("saluki", "tokenize", "--configfile", resolved)
    assert q.returncode == 0, q.stderr
    assert tok.read_bytes() == first
    assert len(list((out / "tokenize" / "logs").glob("*.log"))) == 2


def test_resolved_config_loads_back_to_an_equal_config(tmp_path, data):
    saluki = get_registry().plugin("saluki")
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", data, out, tokenization={"lefttailing": False, "samplesize": 20})
    own = yaml.safe_load(cfg.read_text())
    del own["fine-tuning data source"]  # tokenize writes its own data source only
    cfg.write_text(yaml.safe_dump(own, sort_keys=False))
    p = biolm("saluki", "tokenize", "--configfile", cfg, "--seed", "7")
    assert p.returncode == 0, p.stderr
    original = resolve("tokenize", saluki, load_yaml(cfg), {"seed": "7"})
    reloaded = resolve("tokenize", saluki, load_yaml(out / "tokenize" / "config.yaml"))
    assert reloaded == original


def test_resolved_fine_tune_config_round_trips(tmp_path):
    saluki = get_registry().plugin("saluki")
    data = {
        "outputpath": str(tmp_path / "x"),
        "fine-tuning data source": {"filepath": "d.txt", "seqpos": 6, "labelpos": 3, "weightpos": 5, "splitratio": "70/20/10", "crossvalidation": 3, "cvscheme": "kfold", "specifiersep": "None"},
        "settings": {"training": {"general": {"learning_rate": "1e-4"}, "qualityweights": {"STRONG": 1, "POOR": 0.1}}, "environment": {"ngpus": 0}},
        "model": {"filters": 16, "num_layers": 2},
    }
    cfg1 = resolve("fine-tune", saluki, data, {"settings.training.batchsize": "16", "tokenization.lefttailing": False})
    text = dump_resolved(cfg1, "fine-tune", saluki, "regression", {"biolm": "test"})
    cfg2 = resolve("fine-tune", saluki, yaml.safe_load(text))
    assert cfg2 == cfg1
    assert cfg2.settings.training.lr == 1e-4 and cfg2.finetuning_source.splitratio == (70, 20, 10)


def test_failing_run_leaves_earlier_outputs_intact(tmp_path, data):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", data, out)
    assert biolm("saluki", "tokenize", "--configfile", cfg).returncode == 0
    tok = out / "tokenizer.json"
    before = tok.read_bytes()
    lines = data.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4].split("\t")[0]  # line 5: only the id column
    bad = tmp_path / "short.txt"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    p = biolm("saluki", "tokenize", "--configfile", cfg, "--filepath", bad)
    assert p.returncode == 2, p.stderr
    assert f"{bad}:5" in stderr_lines(p)[-1]
    assert tok.read_bytes() == before
    assert not [f for f in out.rglob("*") if f.name.endswith(".tmp")]  # no half-written files left


# --------------------------------------------------------------------------- start-up time


def test_help_startup_time():
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        p = subprocess.run([*BIOLM, "--help"], capture_output=True, text=True, env=_env(), timeout=120)
        times.append(time.perf_counter() - t0)
        assert p.returncode == 0
    print(f"\nbiolm --help wall time: best {min(times):.3f} s, runs {', '.join(f'{t:.3f}' for t in times)}")
    assert min(times) < 5.0, "biolm --help is pathologically slow (heavy imports at start-up?)"


# --------------------------------------------------------------------------- generated config reference


def test_config_reference_check_and_write(tmp_path, capsys):
    from biolm.core import docs
    from biolm.core.schema import Config, iter_keys

    text = docs.generate()
    for k in iter_keys(Config):
        assert f"| `{k.key}` |" in text
    for section in ("`fine-tuning data source`", "`settings / training`", "`looscores`", "plugin `saluki`", "`model:` section of `saluki`"):
        assert section in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{docs.START}\nstale\n{docs.END}\n\nafter\n", encoding="utf-8")
    assert docs.main(["--check", str(readme)]) == 1
    assert docs.main(["--write", str(readme)]) == 0
    assert docs.main(["--check", str(readme)]) == 0
    written = readme.read_text(encoding="utf-8")
    assert written.startswith("# x\n\nintro\n\n") and written.endswith(f"{docs.END}\n\nafter\n") and "stale" not in written
    assert docs.main([]) == 0 and capsys.readouterr().out == text


def test_readme_config_reference_is_generated_from_the_schema():
    """The README's config reference must be what `python -m biolm.core.docs` generates."""
    import subprocess
    import sys
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    p = subprocess.run([sys.executable, "-m", "biolm.core.docs", "--check", str(readme)], capture_output=True, text=True)
    assert p.returncode == 0, "README config reference is stale: run python -m biolm.core.docs --write README.md\n" + p.stdout[-2000:] + p.stderr[-2000:]
