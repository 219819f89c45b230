"""bench_segmentation's learning-curve figure: mean over seeds, NaN epochs tolerated, independent of the global
plotting style nnU-Net's progress plot leaves behind."""
from __future__ import annotations

import math

import matplotlib

from tests.conftest import load_script


def _bench():
    return load_script("bench_segmentation", "bench_segmentation_curves")


def _curve(n, tumour):
    return [{"cpu_seconds": 10.0 * (i + 1), "pseudo_dice": [0.5 + 0.01 * i, tumour(i)]} for i in range(n)]


def test_curves_average_seeds_and_survive_nan_epochs_under_a_foreign_style(tmp_path):
    bench = _bench()
    runs = {"3D U-Net": [{"curve": _curve(40, lambda i: math.nan if i % 3 == 0 else 0.2)},
                         {"curve": _curve(30, lambda i: 0.4)}],  # seeds share the first 30 epochs
            "DualStream": [{"curve": _curve(20, lambda i: 0.1)}],
            "not trained": [{"curve": []}]}
    old = matplotlib.rcParams["font.size"]
    matplotlib.rcParams["font.size"] = 30.0  # what seaborn's font_scale=2.5 does to this process
    try:
        series = bench.plot_curves(runs, tmp_path / "curves.png")
    finally:
        matplotlib.rcParams["font.size"] = old
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert set(series) == {"3D U-Net", "DualStream"}
    unet = series["3D U-Net"]
    assert len(unet["cpu_seconds"]) == 30 and unet["liver"][0] == 0.5
    assert abs(unet["tumour"][1] - 0.3) < 1e-12
    assert math.isnan(unet["tumour"][0])  # a NaN epoch of one seed stays NaN in the mean, not a crash
