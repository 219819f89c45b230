"""scripts/bench_predict.py runs end to end with given models (one repeat, a phantom as the case)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import load_script
from tests.inference.helpers import lesion_region

pytestmark = pytest.mark.slow


def test_bench_predict_with_given_models(predict_models, tmp_path, monkeypatch):
    for k, v in predict_models["env"].items():
        monkeypatch.setenv(k, v)
    bench = load_script("bench_predict")
    out = tmp_path / "out"
    case, reference = tmp_path / "case_0000.nii.gz", tmp_path / "case.nii.gz"
    lesion_region(predict_models["raw"] / "imagesTs" / "liver_005_0000.nii.gz",
                  predict_models["raw"] / "labelsTs" / "liver_005.nii.gz", case, reference)
    report = bench.main(["--out", str(out), "--model-folder", str(predict_models["model"]), "--classifier",
                         str(predict_models["classifier"]), "--case", str(case), "--repeats", "1",
                         "--reference-seg", str(reference)])
    saved = json.loads((out / "bench_predict.json").read_text(encoding="utf-8"))
    assert saved["ratio_median"] == pytest.approx(report["ratio_median"])
    ours, stock = saved["nnunet_liver_predict"], saved["nnunet_stock_predict"]
    assert ours["median_s"] > 0 and stock["median_s"] > 0 and len(ours["runs_s"]) == 1
    assert saved["ratio_median"] == pytest.approx(ours["median_s"] / stock["median_s"])
    assert ours["peak_rss_mib"] > 50 and stock["peak_rss_mib"] > 50  # a torch process, not the wrapper's
    assert "--classifier" in ours["command"] and "--disable_tta" in stock["command"]
    assert saved["findings"]["timings_s"]["classify"] >= 0
    assert (out / "pred_ours" / "findings.json").is_file() and (out / "pred_stock" / "case.nii.gz").is_file()
    assert any("differ between the stock segmentation and ours" in n for n in saved["notes"])
    assert "**Ratio (medians):" in (out / "bench_predict.md").read_text(encoding="utf-8")
    # the reference label map's lesions went through classification and the report
    import SimpleITK as sitk
    from scipy import ndimage

    ref = saved["reference_lesions"]
    n = ndimage.label(sitk.GetArrayFromImage(sitk.ReadImage(str(reference))) == 2)[1]
    assert ref["n_lesions"] == n > 0 and len(ref["probabilities"]) == n
    assert all(0 <= p <= 1 for p in ref["probabilities"].values())
    assert saved["ratio_with_reference_lesions"] >= saved["ratio_median"]
    assert len(list((out / "pred_reference").glob("lesion_*.png"))) == n
