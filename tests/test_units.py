"""Registries, decoders, metrics and configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlbench.config import FastCARSettings, TrainingProtocol, RunConfig
from mtlbench.errors import ConfigError
from mtlbench.methods.architectures import ARCHITECTURES
from mtlbench.methods.weightings import WEIGHTINGS
from mtlbench.metrics import confusion_matrix, task_metrics
from mtlbench.models.decoders import DECODERS, build_decoder
from mtlbench.models.encoder import ResNet18Trunk, load_imagenet_state


def test_registries_hold_the_papers_grid_first():
    assert ARCHITECTURES.names("paper") == ARCHITECTURES.names()[:6] == ["HPS", "Cross_stitch", "MMoE", "MTAN", "CGC",
                                                                         "LTB"]
    assert WEIGHTINGS.names("paper") == WEIGHTINGS.names()[:17] == ["EW", "GradNorm", "MGDA-loss", "MGDA-loss+", "MGDA-l2", "UW", "DWA", "GLS",
                                  "GradDrop", "PCGrad", "GradVac", "IMTL", "CAGrad", "Nash-MTL", "RLW", "MoCo",
                                  "Aligned-MTL"]
    assert DECODERS.names() == ["decoder1", "decoder2"]
    assert len(ARCHITECTURES.names("paper")) * len(WEIGHTINGS.names("paper")) * len(DECODERS) == 204
    for reg in (ARCHITECTURES, WEIGHTINGS, DECODERS):
        for e in reg:
            assert e.reference, f"{e.name} cites no paper"


def test_registry_lookup_is_case_insensitive_and_names_choices():
    assert WEIGHTINGS.canonical("imtl") == "IMTL"
    with pytest.raises(ConfigError, match="unknown weighting 'nope'.*EW"):
        WEIGHTINGS.get("nope")


@pytest.mark.parametrize("side,maps", [(224, [(7, 7), (4, 4), (2, 2)]), (64, [(2, 2), (1, 1), (1, 1)])])
def test_decoder2_feature_maps_halve_and_channels_double(side, maps):
    trunk = ResNet18Trunk().eval()
    dec = build_decoder("decoder2", 6).eval()
    x = trunk(torch.zeros(2, 3, side, side))
    assert tuple(x.shape[2:]) == maps[0] and x.shape[1] == 512
    h1 = dec[:3](x)
    h2 = dec[3:6](h1)
    assert (tuple(h1.shape[1:]), tuple(h2.shape[1:])) == ((1024, *maps[1]), (2048, *maps[2]))
    assert dec(x).shape == (2, 6)


def test_decoder1_is_pool_fc512_bn_relu_dropout_fc():
    dec = build_decoder("decoder1", 1)
    kinds = [type(m).__name__ for m in dec]
    assert kinds == ["AdaptiveAvgPool2d", "Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert dec[2].out_features == 512 and dec[5].p == 0.5


def test_pretrained_weights_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))   # an empty torch cache, and no network in tests
    with pytest.raises(ConfigError, match="pretrained ResNet-18 weights .*--pretrained"):
        load_imagenet_state(allow_download=False)


def test_metrics_in_original_units():
    m = task_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), np.array([100.0, 200.0, 400.0]),
                     np.array([110.0, 200.0, 300.0]), 2)
    assert m["accuracy"] == pytest.approx(200 / 3)
    assert m["mse"] == pytest.approx((100 + 0 + 10000) / 3)
    assert m["mae"] == pytest.approx(110 / 3)
    assert m["mape"] == pytest.approx((10 + 0 + 25) / 3)
    assert m["within8"] == pytest.approx(100 / 3)
    assert m["confusion"] == [[1, 0], [1, 1]]
    assert confusion_matrix(np.array([1]), np.array([1]), 3).sum() == 1


def test_run_id_is_stable_and_depends_on_config_and_data():
    a = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1")
    b = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1")
    assert a.run_id("d1") == b.run_id("d1") != a.run_id("d2")
    c = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1", seed=1)
    assert c.run_id("d1") != a.run_id("d1")
    fast = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1",
                     protocol=TrainingProtocol(device="cuda", latency_repeats=3))
    assert fast.run_id("d1") == a.run_id("d1")   # where it runs does not change what it computes
    assert RunConfig.from_json(a.to_json()) == a


@pytest.mark.parametrize("kwargs,match", [({"epochs": 0}, "epochs"), ({"img_size": 16}, "img_size"),
                                          ({"batch_size": -1}, "batch_size")])
def test_protocol_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainingProtocol(**kwargs)


def test_fastcar_settings_and_scaling_validation():
    with pytest.raises(ConfigError, match="gap"):
        FastCARSettings(gap=0)
    with pytest.raises(ConfigError, match="target_scaling"):
        RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1", target_scaling="minmax")


def test_result_table_tells_apart_cells_of_the_scaling_and_seed_axes():
    from rich.console import Console

    from mtlbench.ui import result_table

    base = {"kind": "mtl", "architecture": "HPS", "weighting": "EW", "decoder": "decoder1", "status": "ok",
            "best_accuracy": 82.716, "best_mape": 9.705, "best_mse": 6095.5, "best_mae": 53.1, "best_within8": 60.2,
            "best_epoch": 3, "total_s": 216.8}
    rows = [{**base, "target_scaling": "none", "seed": 0}, {**base, "target_scaling": "standard", "seed": 0},
            {**base, "target_scaling": "standard", "seed": 1}]
    console = Console(width=140, record=True)
    console.print(result_table(rows, "t"))
    text = console.export_text()
    lines = [l for l in text.splitlines() if "HPS+EW/decoder1" in l]
    assert len(lines) == 3
    assert "standard" not in lines[0] and "standard" in lines[1] and "seed 1" in lines[2]
    assert "82.72" in lines[0] and "216.8" in lines[0]   # numbers whole at a log's width
