"""scripts/bench_classification.py runs end to end on a tiny setting (two models, half-second budgets)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import load_script

pytestmark = pytest.mark.slow


def test_bench_script_tiny(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, str(tmp_path / "unused"))  # the script sets them; restored after the test
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    bench = load_script("bench_classification")
    out = tmp_path / "out"
    assert bench.main(["--out", str(out), "--num-cases", "8", "--size", "48", "--folds", "2", "--budget-s", "0.3",
                       "--models", "hybrid3d", "hybrid3d_noatt"]) == 0
    result = json.loads((out / "bench_classification.json").read_text(encoding="utf-8"))
    assert set(result["models"]) == {"hybrid3d", "hybrid3d_noatt"}
    assert len(result["runs"]) == 3 * 2 * 2 and result["extraction"]["lesions"] == result["data"]["lesions"] > 0
    assert result["models"]["hybrid3d"]["parameters"] > result["models"]["hybrid3d_noatt"]["parameters"]
    assert len(result["comparisons_vs_hybrid3d"]["hybrid3d_noatt"]["delong_per_seed"]) <= 3
    assert "| hybrid3d |" in (out / "bench_classification.md").read_text(encoding="utf-8")
    # nnunet-liver bench reads this file: its ratio rows come from the figures just written
    from nnunet_liver.cli.bench import RATIOS

    rows = {r["figure"]: r for r in RATIOS["classification"](result)}
    noatt = rows["parameters, hybrid3d_noatt"]
    assert noatt["value"] == result["models"]["hybrid3d_noatt"]["parameters"]
    assert rows["crop extraction, lesions/s"]["value"] == result["extraction"]["lesions_per_s"]
    ref = result["feature_reference"]
    assert ref["lesions"] == result["data"]["lesions"] and 0 <= ref["auc_pooled"] <= 1
    assert len(ref["auc_per_fold"]) == 2
    assert "Learnability check" in (out / "bench_classification.md").read_text(encoding="utf-8")
