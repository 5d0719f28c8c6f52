"""Parity of biolm's LCL model with eir-dl 0.25.0 ``LCLModel`` goldens, plus head training.

Goldens: ``tests/fixtures/lcl/<config>.npz`` / ``.json``, packed from the shared LCL fixtures by
``tests/fixtures/lcl/pack_fixtures.py`` (weights bfloat16-exact, stored as their upper 16 bits).
float64 comparisons use the fixture's tolerance (rtol = atol = 1e-9), float32 ones 1e-5.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from biolm.plugins.lcl.eir_weights import load_eir_weights
from biolm.plugins.lcl.layers import LCL, LCLAttentionBlock, LCLResidualBlock
from biolm.plugins.lcl.network import LCL_MODEL_DEFAULTS, LCLModel, LCLPredictor, flatten_channels_last

FIXTURES = Path(__file__).parent / "fixtures" / "lcl"
CONFIGS = ["default", "config2_layers21_kw8_ceb3", "config3_auto_attention_kw8_ceb3"]
TOL64 = {"rtol": 1e-9, "atol": 1e-9}
TOL32 = {"rtol": 1e-5, "atol": 1e-5}


class Fixture:
    """One packed golden: config, EIR weights, channels-last / flat inputs and float64 outputs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.config = json.loads((FIXTURES / f"{name}.json").read_text())
        packed = np.load(FIXTURES / f"{name}.npz")
        self.weights = {
            k[2:]: (packed[k].astype(np.uint32) << 16).view(np.float32) for k in packed.files if k.startswith("w/")
        }
        self.outputs = {k[4:]: packed[k] for k in packed.files if k.startswith("out/")}
        self.n_channels, self.seq_len = self.config["onehot_shape"]
        codes = packed["in/codes"].astype(np.int64)
        # (B, L, C): the layout the biolm engine hands the model.
        self.onehot_lc = torch.from_numpy(np.eye(self.n_channels)[codes])
        # EIR's genome-local-net flattening of its (B, C, L) one-hot: x[b, C*j + c] = onehot[b, c, j].
        self.x_eir = self.onehot_lc.reshape(len(codes), -1)
        self.x_row_major = self.onehot_lc.transpose(1, 2).reshape(len(codes), -1)
        self.x_random = torch.from_numpy(packed["in/x_random"]).double()

    def model(self, **overrides) -> LCLModel:
        cfg = {**self.config["model_config_resolved"], **overrides}
        model = LCLModel.from_config(cfg, seq_len=self.seq_len, n_channels=self.n_channels)
        load_eir_weights(model, self.weights)
        return model.eval()


@pytest.fixture(scope="module", params=CONFIGS)
def fx(request) -> Fixture:
    return Fixture(request.param)


def _capture(model: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    acts: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_module, _inputs, output):
            acts[name] = output[0] if isinstance(output, tuple) else output

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    return acts, handles


def _run_all(model: LCLModel, fx: Fixture, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model outputs for every golden key (intermediates from forward hooks)."""
    model = model.to(dtype)
    acts, handles = _capture(model)
    with torch.no_grad():
        got = {"final": model(fx.onehot_lc.to(dtype))}
        for h in handles:
            h.remove()
        got["random/final"] = model.forward_flat(fx.x_random.to(dtype))
        got["row_major/final"] = model.forward_flat(fx.x_row_major.to(dtype))
    for key in fx.outputs:
        if key.startswith("internal/"):
            got[key] = acts[key[len("internal/"):]]
        elif key not in got:
            got[key] = acts[key]
    return got


def _max_rel(got: torch.Tensor, ref: np.ndarray) -> float:
    ref_t = torch.from_numpy(ref)
    return float(((got.double()[: len(ref_t)] - ref_t).abs() / ref_t.abs().clamp_min(1.0)).max())


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


def _lcl_summary(layer: LCL) -> dict:
    return {
        "in_features": layer.in_features,
        "out_feature_sets": layer.out_feature_sets,
        "kernel_size": layer.kernel_size,
        "num_chunks": layer.num_chunks,
        "padding": layer.padding,
        "out_features": layer.out_features,
        "weight_shape": list(layer.weight.shape),
        "bias": layer.bias is not None,
    }


def test_automatic_layer_setup_matches_eir_structure(fx: Fixture) -> None:
    model = fx.model()
    derived = fx.config["derived"]
    assert model.kernel_width == derived["kernel_width"]
    assert _lcl_summary(model.fc_0) == derived["fc_0"]
    assert model.norm_0.normalized_shape == (derived["norm_0_dim"],)
    assert len(model.lcl_blocks) == derived["num_blocks"]
    for block, ref in zip(model.lcl_blocks, derived["blocks"], strict=True):
        assert block.in_features == ref["in_features"] and block.out_features == ref["out_features"]
        if ref["type"] == "LCLResidualBlock":
            assert isinstance(block, LCLResidualBlock)
            assert block.kernel_size == ref["kernel_size"]
            assert block.out_feature_sets == ref["out_feature_sets"]
            assert block.full_preactivation == ref["full_preactivation"]
            assert block._identity_from_normed == ref["identity_uses_normed_input"]
            assert block.do.p == ref["dropout_p"] and block.stochastic_depth.p == ref["stochastic_depth_p"]
            assert _lcl_summary(block.fc_1) == ref["fc_1"]
            assert _lcl_summary(block.fc_2) == ref["fc_2"]
            if ref["has_downsample_identity"]:
                assert _lcl_summary(block.downsample_identity) == ref["downsample_identity"]
            else:
                assert isinstance(block.downsample_identity, nn.Identity)
            assert block.ls.gamma.shape == (ref["layerscale_dim"],)
        else:
            assert isinstance(block, LCLAttentionBlock)
            assert (block.embedding_dim, block.num_heads, block.seq_len) == (
                ref["embedding_dim"],
                ref["num_heads"],
                ref["seq_len"],
            )
            assert block.pos_emb.embedding.shape == (1, ref["pos_emb_max_length"], ref["embedding_dim"])
            assert block.ls.gamma.shape == (ref["layerscale_dim"],)
    assert model.num_out_features == derived["final_out_features"]
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == fx.config["state_dict_shapes"]
    assert sum(p.numel() for p in model.parameters()) == fx.config["n_parameters"]
    # Every LCL line of EIR's printed model appears, in order, in ours.
    assert _lcl_repr_lines(repr(model)) == _lcl_repr_lines(fx.config["model_repr"])


def _lcl_repr_lines(text: str) -> list[tuple[str, str]]:
    return re.findall(r"\((\w+)\): LCL\((.*?)\)\n", text)


def test_fresh_init_follows_eir() -> None:
    model = LCLModel(100, 4, kernel_width=8, channel_exp_base=3, attention_inclusion_cutoff=128, cutoff=64)
    attention = [b for b in model.lcl_blocks if isinstance(b, LCLAttentionBlock)]
    assert attention, "this setup should include an attention block"
    for block in model.lcl_blocks:
        assert torch.all(block.ls.gamma == 1e-5)
    assert torch.all(attention[0].pos_emb.embedding == 0)
    assert torch.all(model.fc_0.bias == 0) and torch.all(model.norm_0.weight == 1)
    bound = 1 / np.sqrt(model.fc_0.num_chunks * model.fc_0.kernel_size)
    assert float(model.fc_0.weight.detach().abs().max()) <= bound


# --------------------------------------------------------------------------------------------
# Numerical parity
# --------------------------------------------------------------------------------------------


def test_parity_float64_every_stored_tensor(fx: Fixture) -> None:
    got = _run_all(fx.model(), fx, torch.float64)
    assert set(got) >= set(fx.outputs)
    for key, ref in fx.outputs.items():
        value = got[key][: len(ref)]
        assert value.dtype == torch.float64
        torch.testing.assert_close(value, torch.from_numpy(ref), **TOL64, msg=lambda m, k=key: f"{k}: {m}")


def test_parity_float32(fx: Fixture) -> None:
    got = _run_all(fx.model(), fx, torch.float32)
    for key, ref in fx.outputs.items():
        torch.testing.assert_close(
            got[key][: len(ref)].double(), torch.from_numpy(ref), **TOL32, msg=lambda m, k=key: f"{k}: {m}"
        )


def test_channel_major_flatten_order_reproduces_eir_row_major(fx: Fixture) -> None:
    model = fx.model(flatten_order="channel_major").double()
    with torch.no_grad():
        out = model(fx.onehot_lc)
    ref = fx.outputs["row_major/final"]
    torch.testing.assert_close(out[: len(ref)], torch.from_numpy(ref), **TOL64)


def test_flatten_orders() -> None:
    x = torch.arange(2 * 3 * 4).reshape(2, 3, 4)  # (B, L, C)
    assert flatten_channels_last(x)[0].tolist() == list(range(12))
    # channel_major = torch.flatten of (B, C, L): all positions of channel 0 first.
    assert flatten_channels_last(x, "channel_major")[0, :3].tolist() == [0, 4, 8]


# --------------------------------------------------------------------------------------------
# API behaviour
# --------------------------------------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown LCL model key"):
        LCLModel.from_config({"kernel_widht": 8}, seq_len=100, n_channels=4)
    with pytest.raises(ValueError, match="patch_size"):
        LCLModel(100, 4, patch_size=(1, 4, 4))
    with pytest.raises(ValueError, match="cutoff"):
        LCLModel(100, 4, cutoff="auto")
    with pytest.raises(ValueError, match="cannot reach cutoff"):
        LCLModel(100, 4, kernel_width=8, channel_exp_base=3, cutoff=4)
    with pytest.raises(ValueError, match="kernel"):
        LCLModel(100, 4, kernel_width=1)
    model = LCLModel.from_config(None, seq_len=100, n_channels=4)
    with pytest.raises(ValueError, match=r"\(B, 100, 4\)"):
        model(torch.zeros(2, 4, 100))
    assert set(LCL_MODEL_DEFAULTS) >= {"layers", "kernel_width", "cutoff", "attention_inclusion_cutoff"}


def test_num_lcl_chunks() -> None:
    model = LCLModel(250, 4, kernel_width=None, num_lcl_chunks=100)
    assert (model.fc_0.num_chunks, model.fc_0.kernel_size, model.kernel_width) == (100, 10, 10)
    with pytest.warns(UserWarning, match="ignored"):
        ignored = LCLModel(250, 4, kernel_width=12, num_lcl_chunks=100)
    assert ignored.fc_0.kernel_size == 6


def test_stochastic_depth_drops_branch_in_training_only() -> None:
    torch.manual_seed(0)
    block = LCLResidualBlock(64, 4, 8, stochastic_depth_p=1.0)
    nn.init.normal_(block.ls.gamma)
    x = torch.randn(3, 64)
    block.train()
    torch.testing.assert_close(block(x), block.downsample_identity(block.norm_1(x)))
    block.eval()
    assert not torch.allclose(block(x), block.downsample_identity(block.norm_1(x)))


def test_l1_penalty() -> None:
    model = LCLPredictor(50, 4, num_outputs=1, l1=1e-3)
    penalty = model.l1_penalty()
    torch.testing.assert_close(penalty, 1e-3 * model.body.fc_0.weight.abs().sum())
    penalty.backward()
    assert model.body.fc_0.weight.grad is not None
    assert float(LCLPredictor(50, 4, num_outputs=1).l1_penalty()) == 0.0


def test_load_eir_weights_into_predictor_and_rejects_bad_shapes() -> None:
    fx = Fixture("default")
    predictor = LCLPredictor.from_config(
        fx.config["model_config_resolved"], seq_len=fx.seq_len, n_channels=fx.n_channels, num_outputs=2
    )
    load_eir_weights(predictor, {f"feature_extractor.{k}": v for k, v in fx.weights.items()})
    predictor.eval().double()
    with torch.no_grad():
        torch.testing.assert_close(
            predictor.body(fx.onehot_lc)[:2], torch.from_numpy(fx.outputs["final"]), **TOL64
        )
        assert predictor(fx.onehot_lc).shape == (len(fx.onehot_lc), 2)
    bad = dict(fx.weights)
    bad["fc_0.bias"] = bad["fc_0.bias"][:-1]
    with pytest.raises(ValueError, match="fc_0.bias"):
        load_eir_weights(predictor, bad)
    missing = dict(fx.weights)
    del missing["norm_0.weight"]
    with pytest.raises(RuntimeError, match="norm_0.weight"):
        load_eir_weights(predictor, missing)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def test_predictor_learns_planted_signal() -> None:
    torch.manual_seed(0)
    n, length, channels = 128, 48, 4
    codes = torch.randint(0, channels, (n, length))
    x = torch.nn.functional.one_hot(codes, channels).float()  # (B, L, C)
    y = (2.0 * x[:, 7, 0] - 1.5 * x[:, 30, 3]).unsqueeze(1)
    y = (y - y.mean()) / y.std()
    model = LCLPredictor(length, channels, num_outputs=1, kernel_width=8, head_hidden=32, l1=1e-4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()

    def loss_fn() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    with torch.no_grad():
        model.eval()
        initial = float(loss_fn())
        model.train()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn() + model.l1_penalty()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = float(loss_fn())
    assert final < 0.5 * initial, (initial, final)
