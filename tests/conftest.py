import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for modules of tiny models: OpenMP barriers only cost time there, and on a
    loaded shared machine thread spinning turns seconds into minutes."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def rna_file(tmp_path_factory) -> Path:
    """A small example file in the reference format (id, split, halflife, stability, quality, seq)."""
    from biolm.core.exampledata import write_dataset

    d = tmp_path_factory.mktemp("rna")
    return write_dataset(d / "rna.txt", 90, seed=3, min_len=40, max_len=120)


def write_config(path: Path, data_file: Path, outdir: Path, **sections) -> Path:
    """A YAML config for the example format; ``sections`` override/extend top-level sections."""
    src = {"filepath": str(data_file), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6}
    cfg = {
        "outputpath": str(outdir),
        "seed": 1,
        "tokenizing and pre-training data source": dict(src),
        "fine-tuning data source": dict(src, labelpos=3, splitratio="70,15,15"),
        "inference data source": dict(src, labelpos=3),
        "settings": {"training": {"batchsize": 16, "blocksize": 64, "nepochs": 2, "patience": 5, "lr": 0.003}},
        "model": {"kernel_width": 8, "cutoff": 128, "head_hidden": 16, "rb_do": 0.0},
    }
    for k, v in sections.items():
        key = {"fine_tuning_data_source": "fine-tuning data source", "tokenizing_and_pre_training_data_source": "tokenizing and pre-training data source"}.get(k, k.replace("_", " "))
        if isinstance(v, dict) and isinstance(cfg.get(key), dict) and key != "model":
            cfg[key] = {**cfg[key], **v}
        else:
            cfg[key] = v
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class CliResult:
    """Exit code, stdout and stderr of one ``biolm`` command run in-process."""

    def __init__(self, result):
        self.code = result.exit_code
        self.out = result.stdout
        self.err = result.stderr
        self.exception = result.exception

    @property
    def lines(self) -> list[str]:
        """The non-empty lines of stderr."""
        return [ln for ln in self.err.splitlines() if ln.strip()]

    def one_error(self, *parts: str) -> str:
        """Assert exit code 2 with one ``error:`` line containing ``parts`` and no traceback."""
        assert self.code == 2, (self.code, self.err[-3000:], self.exception)
        assert len(self.lines) == 1 and self.lines[0].startswith("error: "), self.err
        assert "Traceback" not in self.err + self.out and "weights_only" not in self.err
        for part in parts:
            assert str(part) in self.lines[0], (part, self.lines[0])
        return self.lines[0]


def cli(*args) -> CliResult:
    """``biolm ARGS`` through Typer's test runner (one process for many runs: fast)."""
    from typer.testing import CliRunner

    from biolm.cli.app import app

    return CliResult(CliRunner().invoke(app, [str(a) for a in args]))
