"""The README's main job: ``nnunet-liver demo --quick`` end to end on a fresh folder, then resumed.

Asserts that every step ran, every model predicted every test case with the input geometry, that DualStream
segmented the carried real CT on its grid, and that every table and figure of the report exists and shows the
numbers of the results files it was made from.
"""
from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.cli.demo import CLASSIFIERS, SEG_MODELS
from tests.conftest import subprocess_env

pytestmark = pytest.mark.slow

N_STEPS = 14


def run_demo(out):
    return subprocess.run([sys.executable, "-m", "nnunet_liver.cli.main", "demo", "--quick", "--out", str(out)],
                          env=subprocess_env({"nnUNet_def_n_proc": "1"}), capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=1500)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    first = run_demo(out)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-3000:]
    return out, first


def test_every_step_runs_and_every_model_predicts_the_test_cases(demo):
    out, first = demo
    for i in range(1, N_STEPS + 1):
        assert f"[{i}/{N_STEPS}] " in first.stdout
    raw = out / "nnunet" / "nnUNet_raw" / "Dataset990_LiverPhantom"
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    assert len(images) == 2
    for m in SEG_MODELS:
        preds = sorted((out / "predictions" / m.key).glob("*.nii.gz"))
        assert [p.name for p in preds] == [i.name.replace("_0000", "") for i in images], m.key
        for img, pred in zip(images, preds):
            a, b = sitk.ReadImage(str(img)), sitk.ReadImage(str(pred))
            assert a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            assert set(np.unique(sitk.GetArrayFromImage(b))) <= {0, 1, 2}
        assert (out / "logs" / f"train_{m.key}.log").is_file()
    for model in CLASSIFIERS:
        assert list((out / "classification").glob(f"{model}*/fold_*/predictions.csv")), model


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_report_has_every_table_and_figure_with_the_numbers_of_the_results_files(demo):
    out, _ = demo
    report = out / "report"
    html = (report / "report.html").read_text(encoding="utf-8")
    md = (report / "report.md").read_text(encoding="utf-8")
    for title in ("Table 1", "Table 2", "Ablation", "Figure 3", "Figure 4", "Figure 5", "Figure 6", "Figure 7",
                  "Cost", "Phantom to real: one real CT"):
        assert title in html and title in md, title
    assert "not LiTS results" in html  # the provenance statement
    # self-contained: every image is an embedded PNG that decodes, nothing is fetched
    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(images) >= 6
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="https?://', html)
    for png in re.findall(r"\]\((figures/[^)]+\.png)\)", md):
        assert (report / png).read_bytes()[:4] == b"\x89PNG"

    data = json.loads((report / "report_data.json").read_text(encoding="utf-8"))
    # Table 1: mean over cases of each model's summary.json
    rows = {r["label"]: r for r in data["table1"]["rows"]}
    assert set(rows) == {m.label for m in SEG_MODELS}
    for m in SEG_MODELS:
        summary = json.loads((out / "evaluation" / m.key / "summary.json").read_text(encoding="utf-8"))
        for structure in ("liver", "tumour"):
            for metric in ("dice", "iou", "sensitivity", "specificity"):
                values = [c[structure][metric] for c in summary["cases"].values()]
                values = [v for v in values if v is not None and not math.isnan(v)]
                shown = rows[m.label]["metrics"][structure][metric]
                assert shown["n"] == len(values)
                assert _close(shown["mean"], float(np.mean(values))), (m.label, structure, metric)
        liver = rows[m.label]["metrics"]["liver"]["dice"]["mean"]
        assert f"{liver:.3f}" in html
    # cost table: the demo's cost.json
    cost = json.loads((out / "evaluation" / "cost.json").read_text(encoding="utf-8"))
    cost_rows = {r["label"]: r for r in data["cost"]["rows"]}
    for m in SEG_MODELS:
        for key in ("params", "flops_per_voxel", "seconds_per_case", "train_seconds", "iterations"):
            assert _close(cost_rows[m.label][key], cost[m.key][key]), (m.label, key)
    assert f"{cost['DualStreamTrainer_CPU__3d_fullres']['params']:,}" in html
    # Table 2: classify evaluate's table2.json
    table2 = json.loads((out / "classification" / "evaluation" / "table2.json").read_text(encoding="utf-8"))
    t2 = {r["model"]: r for r in data["table2"]["rows"]}
    assert set(t2) == set(CLASSIFIERS) == set(table2["models"])
    for model, row in t2.items():
        for part in ("mean", "pooled"):
            for metric, value in row[part].items():
                assert _close(value, table2["models"][model][part][metric]), (model, part, metric)


def test_rerun_skips_every_finished_step(demo):
    out, _ = demo
    second = run_demo(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("done in an earlier run, skipped") == N_STEPS


def test_real_ct_predicted_on_its_grid_and_reported_with_the_dice_of_its_summary(demo):
    from nnunet_liver.data.real_ct import CRLM_CT

    out, _ = demo
    root = out / "real_ct"
    seg = root / "predict" / "segmentation.nii.gz"
    a, b = sitk.ReadImage(str(CRLM_CT)), sitk.ReadImage(str(seg))
    assert a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(b))) <= {0, 1, 2}
    assert (root / "prediction" / "crlm_liver_ct.nii.gz").read_bytes() == seg.read_bytes()
    manifest = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert manifest["real_ct"]["model"] == "DualStream"
    assert manifest["real_ct"]["model_folder"].endswith("DualStreamTrainer_CPU__nnUNetPlans__3d_fullres")
    case = json.loads((root / "evaluation" / "summary.json").read_text(encoding="utf-8"))["cases"]["crlm_liver_ct"]
    data = json.loads((out / "report" / "report_data.json").read_text(encoding="utf-8"))
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    for structure in ("liver", "tumour"):
        assert _close(data["real_ct"][structure]["dice"], case[structure]["dice"]), structure
    dice = case["liver"]["dice"]
    verdict = "met" if dice >= 0.85 else "not met"
    assert f"Target: liver Dice ≥ 0.85: {verdict}</strong> (liver Dice {dice:.3f})" in html
    assert data["figures"]["real_ct"]["file"] == "figures/real_ct_contours.png"
    assert (out / "report" / "figures" / "real_ct_contours.png").read_bytes()[:4] == b"\x89PNG"


def test_predictions_keep_the_largest_liver_component_and_the_report_shows_extent_and_lesions(demo):
    """predictions/ = the largest connected liver component of nnUNetv2_predict's raw_predictions/, both are
    evaluated, and the report's extent table shows the post-processed summaries' aggregate figures."""
    from nnunet_liver.inference.postprocess import keep_largest_liver

    out, _ = demo
    data = json.loads((out / "report" / "report_data.json").read_text(encoding="utf-8"))
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    extent = {r["label"]: r for r in data["table1_extent"]}
    assert set(extent) == {m.label for m in SEG_MODELS}
    for m in SEG_MODELS:
        raw = sorted((out / "raw_predictions" / m.key).glob("*.nii.gz"))
        assert len(raw) == 2
        for path in raw:
            kept = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / m.key / path.name)))
            expected, _ = keep_largest_liver(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
            assert np.array_equal(kept, expected), (m.key, path.name)
        agg = json.loads((out / "evaluation" / m.key / "summary.json").read_text(encoding="utf-8"))["aggregate"]
        assert (out / "evaluation" / "raw" / m.key / "summary.json").is_file()
        row = extent[m.label]
        assert _close(row["tumour_dice_global"], agg["tumour"]["dice_global"])
        assert row["extent"] == agg["liver_extent"]
        assert row["lesions"]["large"]["n"] == agg["lesion_recall_by_size"]["large"]["n"]
        assert _close(row["liver_dice_global"], agg["liver"]["dice_global"])
    assert "Post-processing:" in html and "largest connected liver component" in html
    assert "Liver slices beyond the liver (max)" in html


def test_iterations_must_be_whole_epochs_and_refusal_writes_nothing(tmp_path, capsys):
    """Fast (no demo run): --iterations that are not whole epochs of the preset stop before any folder exists."""
    from nnunet_liver.cli.main import main

    for bad in ("0", "310", "-25"):
        assert main(["demo", "--out", str(tmp_path / "out"), "--iterations", bad]) == 2
        assert "--iterations must be a positive multiple of the epoch length, 25" in capsys.readouterr().err
    assert main(["demo", "--quick", "--out", str(tmp_path / "out"), "--iterations", "7"]) == 2
    assert "epoch length, 5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_default_iterations_follow_the_training_speed(monkeypatch):
    """600 iterations on CUDA or a CPU with native bf16 (unless NNUNET_LIVER_BF16=0), 300 elsewhere."""
    import nnunet_liver.trainers._mixins as mixins
    from nnunet_liver.cli import demo

    preset = demo.PRESETS["default"]
    assert (preset.epochs * preset.iters, preset.epochs_fast * preset.iters) == (300, 600)
    for native, setting, device, fast in ((False, "auto", "cpu", False), (True, "auto", "cpu", True),
                                          (True, "0", "cpu", False), (False, "auto", "cuda", True),
                                          (True, "1", "cpu", True), (False, "1", "cpu", False)):
        monkeypatch.setattr(mixins, "cpu_bf16_supported", lambda native=native: native)
        monkeypatch.setenv("NNUNET_LIVER_BF16", setting)
        assert demo.fast_training(device) is fast, (native, setting, device)


def test_run_trains_the_fast_budget_only_where_training_is_fast(tmp_path, monkeypatch):
    """run() puts 600 iterations into the pipeline's settings where training is fast, 300 elsewhere, and
    --iterations wins over both (stopped at the first step; the process environment is restored)."""
    import os

    from nnunet_liver.cli import demo
    from nnunet_liver.cli.main import build_parser
    from nnunet_liver.cli.steps import Pipeline

    class Stop(Exception):
        pass

    seen = []

    def first_step(self, name, fn, index, total):
        seen.append(self.signature["epochs"] * self.signature["iters"])
        raise Stop

    monkeypatch.setattr(Pipeline, "step", first_step)
    saved = dict(os.environ)
    try:
        for fast, extra, expected in ((True, [], 600), (False, [], 300), (True, ["--iterations", "50"], 50)):
            monkeypatch.setattr(demo, "fast_training", lambda device, fast=fast: fast)
            args = build_parser().parse_args(["demo", "--out", str(tmp_path / "out"), *extra])
            with pytest.raises(Stop):
                args.func(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert seen == [600, 300, 50]
