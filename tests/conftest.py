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
        key = {"fine_tuning_data_source": "fine-tuning data source"}.get(k, k.replace("_", " "))
        if isinstance(v, dict) and isinstance(cfg.get(key), dict) and key != "model":
            cfg[key] = {**cfg[key], **v}
        else:
            cfg[key] = v
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
