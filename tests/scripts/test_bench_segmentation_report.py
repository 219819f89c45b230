"""bench_segmentation's tables from saved runs: the ablation paired by seed, no ± for one seed, --saved-only,
and the predictions each run keeps."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_segmentation", "bench_segmentation_report")


def _run(seed: int, liver: float, tumour: float) -> dict:
    split = {"liver": {"dice": liver, "iou": 0.8, "sensitivity": 0.9, "specificity": 0.99, "dice_global": liver},
             "tumour": {"dice": tumour, "iou": 0.2, "sensitivity": 0.3, "specificity": 1.0, "dice_global": tumour},
             "lesion_recall_10mm": 0.5, "liver_max_slices_beyond": 3}
    return {"seed": seed, "normal": split, "shifted": split, "train_iter_per_s": 1.0, "predict_s_per_case": 1.0,
            "iterations": 100, "params": 1000, "curve": []}


def test_ablation_steps_pair_seeds_and_count_the_seeds_a_step_helped(bench):
    a0, a1, a2, ds = bench.ABLATION
    runs = {a0: [_run(0, 0.90, 0.30), _run(1, 0.92, 0.20), _run(2, 0.91, 0.25)],
            a1: [_run(0, 0.91, 0.35), _run(2, 0.90, 0.20)],  # seed 1 missing: pairs on 0 and 2 only
            ds: [_run(0, 0.80, 0.10)]}  # ablation 2 missing: no 1 -> 2 or 2 -> 3 step
    (step,) = bench.ablation_steps(runs)
    assert (step["before"], step["after"], step["seeds"]) == (a0, a1, [0, 2])
    assert step["liver_dice"]["deltas"] == pytest.approx([0.01, -0.01])
    assert step["liver_dice"]["raised"] == 1
    assert step["tumour_dice_global"]["mean"] == pytest.approx((0.05 - 0.05) / 2)
    report = {"settings": {}, "machine": {}, "runs": runs, "accuracy": bench.summarise(runs, "normal"),
              "ablation_steps": [step]}
    text = bench.markdown(report)
    assert f"| {a0} -> {a1} | 0, 2 | +0.010, -0.010 (+0.000) | 1 of 2 |" in text
    assert f"| {ds} | 0 | 0.800 |" in text  # one seed: no ± 0.000
    assert f"| {a0} | 0, 1, 2 | 0.910 ± 0.008 |" in text


def _shifted(run: dict, liver: float, tumour: float) -> dict:
    shifted = {**run["shifted"], "liver": {**run["shifted"]["liver"], "dice": liver},
               "tumour": {**run["shifted"]["tumour"], "dice_global": tumour}}
    return {**run, "shifted": shifted}


def test_robustness_and_rwa_control_compare_the_seeds_the_models_share(bench):
    (rwa, control, twin), = [r for r in bench.RWA_CONTROLS if r[0] == "3D U-Net + RWA"]
    runs = {rwa: [_shifted(_run(0, 0.90, 0.40), 0.80, 0.35), _shifted(_run(2, 0.90, 0.10), 0.90, 0.10)],
            control: [_run(0, 0.92, 0.50)],  # seed 2 not run yet
            twin: [_shifted(_run(0, 0.91, 0.45), 0.81, 0.25), _shifted(_run(2, 0.91, 0.05), 0.91, 0.05)]}
    (pair,) = [p for p in bench.robustness(runs)["pairs"] if p["rwa"] == rwa]
    assert pair["seeds"] == [0, 2]
    assert pair["tumour_dice_drop_rwa"] == pytest.approx(0.025)  # (0.05 + 0) / 2
    assert pair["tumour_dice_drop_twin"] == pytest.approx(0.1)
    assert pair["target_met"] is True
    (row,) = bench.rwa_control(runs)
    assert row["seeds"] == [0]  # only seed 0 has all three: seed 2's RWA run does not enter the mean
    assert row["normal_tumour_rwa"] == pytest.approx(0.40) and row["normal_tumour_twin"] == pytest.approx(0.45)
    text = bench.markdown({"settings": {}, "machine": {}, "rwa_control": [row], "robustness": {"pairs": [pair]}})
    assert f"| {rwa} | 0 | normal | 0.400 / 0.500 / 0.450 |" in text
    assert f"| {rwa} | {twin} | 0, 2 | 0.025 | 0.100 | 0.25 | True |" in text


def test_saved_only_writes_tables_from_saved_runs_and_trains_nothing(bench, tmp_path, monkeypatch, capsys):
    from nnunet_liver.env import EXT_TRAINER_VAR, NNUNET_PATH_VARS

    # main() sets these for its run: set them here first, so that they are restored after the test
    for var in (*NNUNET_PATH_VARS, EXT_TRAINER_VAR):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.setenv("nnUNet_compile", "f")
    out = tmp_path / "b"
    monkeypatch.setattr(bench, "prepare_dataset", lambda args: None)
    monkeypatch.setattr(bench, "check_dataset", lambda args, missing_ok=False: None)
    monkeypatch.setattr(bench, "network_module", lambda trainer, config: None)
    monkeypatch.setattr(bench, "plot_curves", lambda runs, path: {})
    argv = ["--out", str(out), "--preset", "quick", "--parts", "accuracy", "--models", "LiverUNetTrainer_CPU"]

    def refuse(*args, **kwargs):
        pytest.fail("--saved-only trained a model")

    monkeypatch.setattr(bench, "train_and_predict", refuse)
    with pytest.raises(SystemExit, match="no saved run.*--jobs"):
        bench.main([*argv, "--seeds", "0", "1", "--saved-only"])
    # seed 0 trained (a stand-in run), saved under the benchmark's own key
    def stand_in(label, trainer, config, seed, args, o):
        run = _run(seed, 0.9, 0.4)
        largest = _run(seed, 0.95, 0.4)  # the largest component drops false liver: a higher liver Dice
        return {**run, **{split: {**run[split], "largest_component": largest[split]}
                          for split in ("normal", "shifted")}}

    monkeypatch.setattr(bench, "train_and_predict", stand_in)
    bench.main([*argv, "--seeds", "0"])
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == [
        "LiverUNetTrainer_CPU__2d__seed0.json", "LiverUNetTrainer_CPU__3d_fullres__seed0.json"]
    monkeypatch.setattr(bench, "train_and_predict", refuse)
    capsys.readouterr()
    bench.main([*argv, "--seeds", "0", "1", "--saved-only"])  # the key ignores --saved-only: seed 0 is reused
    assert "seed 1: not saved yet (--saved-only)" in capsys.readouterr().out
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {label: [r["seed"] for r in runs] for label, runs in report["runs"].items()} == {
        "2D U-Net": [0], "3D U-Net": [0]}
    text = (out / "results.md").read_text(encoding="utf-8")
    scored, raw = text.split("Accuracy of the raw predictions")
    assert "| 2D U-Net | 0 | 0.950 |" in scored and "| 2D U-Net | 0 | 0.900 |" in raw
    bench.main([*argv, "--seeds", "0", "--saved-only", "--scoring", "raw"])
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "| 2D U-Net | 0 | 0.900 |" in text and "0.950" not in text and "Accuracy of the raw predictions" not in text

    # a run saved on another CPU goes into the tables, which name that CPU; training does not reuse it
    saved = out / "runs" / "LiverUNetTrainer_CPU__2d__seed0.json"
    run = json.loads(saved.read_text(encoding="utf-8"))
    saved.write_text(json.dumps({**run, "settings": {**run["settings"], "cpu": "Other CPU, 2 cores"}}),
                     encoding="utf-8")
    bench.main([*argv, "--seeds", "0", "--saved-only"])
    assert "saved on Other CPU, 2 cores" in capsys.readouterr().out
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "| 2D U-Net | 0 | 0.950 |" in text and "Other CPU, 2 cores" in text
    with pytest.raises(pytest.fail.Exception, match="trained a model"):
        bench.main([*argv, "--seeds", "0"])
    # a run keyed as before the tenth sitting (whole files, byte for byte) is reused where the files are its own
    legacy = {**run["settings"], "code": bench.legacy_code_fingerprint(None)}
    assert legacy["code"] != run["settings"]["code"]
    saved.write_text(json.dumps({**run, "settings": legacy}), encoding="utf-8")
    capsys.readouterr()
    bench.main([*argv, "--seeds", "0"])  # trains nothing (train_and_predict refuses)
    assert "2D U-Net, seed 0: done earlier" in capsys.readouterr().out
    # ... but not one made by other code, nor with other settings, nor on other phantoms
    for changed in ({"code": "0" * 16}, {"cpu_seconds": 1.0}, {"phantoms": 1}):
        saved.write_text(json.dumps({**run, "settings": {**run["settings"], **changed}}), encoding="utf-8")
        bench.main([*argv, "--seeds", "0", "--saved-only"])
        assert "2D U-Net, seed 0: not saved yet" in capsys.readouterr().out


def test_saved_only_never_rewrites_the_data_set(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    args = argparse.Namespace(num_train=2, num_test=1, size=48, fov="liver", z_margin_mm=None)
    with pytest.raises(SystemExit, match=r"\.bench_ready: missing"):
        bench.check_dataset(args)
    marker, settings, ready = bench._dataset_marker(args)
    assert not ready
    marker.parent.mkdir(parents=True)
    bench.check_dataset(args, missing_ok=True)  # a clean clone: runs/ without the data set
    marker.write_text(json.dumps({**dataclasses.asdict(settings), "size": 224}))
    for missing_ok in (False, True):
        with pytest.raises(SystemExit, match="--preset of the training runs"):
            bench.check_dataset(args, missing_ok=missing_ok)
    from nnunet_liver.data.phantoms import PHANTOM_VERSION

    version = {"phantom_version": PHANTOM_VERSION}
    marker.write_text(json.dumps({**dataclasses.asdict(settings), **version}))
    bench.check_dataset(args)
    # a marker without a version was written by the first phantoms (solid bowel): another data set
    marker.write_text(json.dumps(dataclasses.asdict(settings)))
    with pytest.raises(SystemExit, match="--preset of the training runs"):
        bench.check_dataset(args)
    # a marker written before --z-margin-mm existed is the default 30 mm data set, not another margin's
    old = {k: v for k, v in dataclasses.asdict(settings).items() if k != "z_margin_mm"}
    marker.write_text(json.dumps({**old, **version}))
    bench.check_dataset(args)
    with pytest.raises(SystemExit, match="--preset of the training runs"):
        bench.check_dataset(argparse.Namespace(**{**vars(args), "z_margin_mm": 70.0}))


def test_evaluate_split_keeps_each_prediction_on_the_reference_grid(bench, tmp_path):
    label = np.zeros((6, 20, 20), np.uint8)
    label[1:4, 4:16, 4:16] = 1
    label[2:3, 8:11, 8:11] = 2
    img = sitk.GetImageFromArray(label.astype(np.int16) * 50)
    img.SetSpacing((2.0, 2.0, 4.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    sitk.WriteImage(img, str(tmp_path / "img" / "c_001_0000.nii.gz"))
    ref = sitk.GetImageFromArray(label)
    ref.CopyInformation(img)
    sitk.WriteImage(ref, str(tmp_path / "lab" / "c_001.nii.gz"))
    prediction = label.copy()
    prediction[0] = 1  # one slice of false liver below the liver, touching it
    prediction[5, 0:2, 0:2] = 1  # and a blob apart from it, 2 slices above

    class Predictor:
        def predict_single_npy_array(self, data, props):
            return prediction

    raw = tmp_path / "raw"
    raw.mkdir()
    (tmp_path / "img").rename(raw / "imagesTs")
    shutil.copytree(raw / "imagesTs", raw / "imagesTs_shifted")
    (tmp_path / "lab").rename(raw / "labelsTs")
    keep = tmp_path / "predictions" / "seed0" / "M__3d_fullres"
    (keep / "normal").mkdir(parents=True)
    (keep / "normal" / "c_999.nii.gz").write_bytes(b"a case of an earlier run")
    normal, _, shifted = bench.evaluate_splits(Predictor(), raw, keep)
    assert normal["tumour"]["dice_global"] == pytest.approx(1.0) and shifted == normal
    assert (normal["liver_max_slices_beyond"], normal["liver_cases_2_beyond"]) == (2, 1)
    # after the largest component (nnunet-liver postprocess) the blob is gone, the touching slice stays
    largest = normal["largest_component"]
    assert (largest["liver_max_slices_beyond"], largest["liver_cases_2_beyond"]) == (1, 0)
    assert largest["liver"]["dice"] > normal["liver"]["dice"] and largest["tumour"]["dice_global"] == pytest.approx(1)
    # the earlier run's folder is replaced whole; no temporary folder stays behind
    assert sorted(str(p.relative_to(keep)) for p in keep.rglob("*.nii.gz")) == [
        "normal/c_001.nii.gz", "shifted/c_001.nii.gz"]
    assert [p.name for p in keep.parent.iterdir()] == ["M__3d_fullres"]
    kept = sitk.ReadImage(str(keep / "normal" / "c_001.nii.gz"))
    assert kept.GetSpacing() == img.GetSpacing() and kept.GetOrigin() == img.GetOrigin()
    assert np.array_equal(sitk.GetArrayFromImage(kept), prediction)


def test_prepare_dataset_marks_the_data_set_with_its_settings_and_phantom_version(bench, tmp_path, monkeypatch):
    import nnunet_liver.data.synth_dataset as synth
    import nnunet_liver.planners.api as planners
    from nnunet_liver.data.phantoms import PHANTOM_VERSION

    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    made = []

    def write(raw, settings, **kwargs):
        made.append(settings)
        (tmp_path / "pre" / "Dataset990_LiverPhantom").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(synth, "write_phantom_dataset", write)
    monkeypatch.setattr(planners, "plan_and_preprocess", lambda *a, **k: None)
    args = argparse.Namespace(num_train=2, num_test=1, size=48, fov="liver", z_margin_mm=None)
    bench.prepare_dataset(args)
    marker, settings, ready = bench._dataset_marker(args)
    assert ready and made == [settings]
    assert json.loads(marker.read_text(encoding="utf-8"))["phantom_version"] == PHANTOM_VERSION
    bench.prepare_dataset(args)  # ready: not made again
    assert len(made) == 1
    marker.write_text('"not a marker"')
    assert not bench._dataset_marker(args)[2]
    bench.prepare_dataset(args)
    assert len(made) == 2


def test_the_window_sweep_names_the_seed_it_comes_from(bench):
    text = bench.markdown({"settings": {}, "machine": {}, "window_sweep": {"paper fixed": 0.3}, "window_sweep_seed": 2})
    assert "RWA-trained DualStream (seed 2, tumour global Dice)" in text and "| paper fixed | 0.300 |" in text


def test_saved_runs_are_scored_after_the_largest_component_from_their_kept_predictions(bench, tmp_path,
                                                                                      monkeypatch, capsys):
    label = np.zeros((8, 16, 16), np.uint8)
    label[2:6, 3:13, 3:13] = 1
    label[3:5, 6:9, 6:9] = 2
    prediction = label.copy()
    prediction[7, 0:2, 0:2] = 1  # false liver apart from the liver, 2 slices above it
    raw = tmp_path / "raw"
    labels = raw / "Dataset990_LiverPhantom" / "labelsTs"
    labels.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(label), str(labels / "c_001.nii.gz"))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    out = tmp_path / "b"
    for seed in (0, 2):
        for split in bench.SPLITS:
            folder = bench.kept_path(out, "M", "3d_fullres", seed) / split
            folder.mkdir(parents=True)
            sitk.WriteImage(sitk.GetImageFromArray(prediction), str(folder / "c_001.nii.gz"))
    # the figures a run saved before the largest component: those of its kept raw predictions
    summary = bench.split_summary({"c_001.nii.gz": bench.score_case(sitk.ReadImage(str(labels / "c_001.nii.gz")),
                                                                    prediction, largest=False)[0]})
    assert summary["liver_cases_2_beyond"] == 1

    def saved_run(seed, split_summary):
        return {**_run(seed, 0.9, 0.4), "settings": {"code": "c"}, "normal": split_summary, "shifted": split_summary}

    # seed 0 was saved before the raw figures had the column; seed 1: no kept predictions; seed 2: kept
    # predictions that are not this run's (other figures)
    older = {k: v for k, v in summary.items() if k != "liver_cases_2_beyond"}
    saved = [saved_run(0, older), saved_run(1, summary), _run(2, 0.8, 0.3)]
    for run in saved:
        bench.run_path(out, "M", "3d_fullres", run["seed"]).parent.mkdir(exist_ok=True)
        bench.run_path(out, "M", "3d_fullres", run["seed"]).write_text(json.dumps(run), encoding="utf-8")
    before = [bench.run_path(out, "M", "3d_fullres", k).read_text(encoding="utf-8") for k in (1, 2)]

    assert not bench.score_kept_largest_component(saved[0], out, "M", "3d_fullres", data_ready=False)
    assert "largest_component" not in saved[0]["normal"]
    assert bench.score_kept_largest_component(saved[0], out, "M", "3d_fullres")
    assert not bench.score_kept_largest_component(saved[1], out, "M", "3d_fullres")
    assert not bench.score_kept_largest_component(saved[2], out, "M", "3d_fullres")
    assert "do not reproduce its saved figures" in capsys.readouterr().out
    assert [bench.run_path(out, "M", "3d_fullres", k).read_text(encoding="utf-8") for k in (1, 2)] == before
    largest = saved[0]["normal"]["largest_component"]
    assert largest["liver"]["dice"] == pytest.approx(1.0) and largest["liver_cases_2_beyond"] == 0
    assert saved[0]["normal"]["liver"]["dice"] == summary["liver"]["dice"] < 1  # the raw figures stay
    assert saved[0]["normal"]["liver_cases_2_beyond"] == 1  # ... with the column they lacked
    on_disk = json.loads(bench.run_path(out, "M", "3d_fullres", 0).read_text(encoding="utf-8"))
    assert on_disk["shifted"]["largest_component"] == json.loads(json.dumps(largest))
    assert not [p for p in (out / "runs").iterdir() if not p.name.endswith(".json")]  # no temporary file left

    # a saved file that changed since it was read (a benchmark beside it redid the run) is left as it is
    changed = saved_run(0, summary)
    path = bench.run_path(out, "M", "3d_fullres", 0)
    path.write_text(json.dumps({**changed, "settings": {"code": "new"}}), encoding="utf-8")
    assert bench.score_kept_largest_component(changed, out, "M", "3d_fullres")
    assert "changed since it was read" in capsys.readouterr().out
    assert "largest_component" in changed["normal"]
    assert json.loads(path.read_text(encoding="utf-8"))["settings"] == {"code": "new"}

    runs, unscored = bench.scored_runs({"3D U-Net": saved}, "largest-component")
    assert [r["seed"] for r in runs["3D U-Net"]] == [0] and unscored == ["3D U-Net, seed 1", "3D U-Net, seed 2"]
    assert runs["3D U-Net"][0]["normal"]["liver"]["dice"] == pytest.approx(1.0)
    assert bench.scored_runs({"3D U-Net": saved}, "raw") == ({"3D U-Net": saved}, [])
    report = {"settings": {}, "machine": {}, "runs": {"3D U-Net": saved}, "scoring": "largest-component",
              "unscored": unscored, "table_seeds": {"3D U-Net": [0]},
              "accuracy": bench.summarise(runs, "normal"),
              "accuracy_raw": bench.summarise({"3D U-Net": saved}, "normal")}
    text = bench.markdown(report)
    assert "Left out of these tables" in text and "3D U-Net, seed 1; 3D U-Net, seed 2" in text
    scored, raw_table = text.split("Accuracy of the raw predictions")
    assert "| 3D U-Net | 0 | 1.000 |" in scored and "| 3D U-Net | 0, 1, 2 |" in raw_table
    # a column one seed's run lacks (saved before it existed) is not the mean of the other seeds
    assert np.isnan(bench.summarise({"3D U-Net": saved}, "normal")["3D U-Net"]["liver_cases_2_beyond"][0])
    assert bench.summarise({"3D U-Net": saved[:2]}, "normal")["3D U-Net"]["liver_cases_2_beyond"] == (1.0, 0.0)


def test_models_are_chosen_by_trainer_or_by_trainer_and_configuration(bench):
    labels = lambda spec: [m[0] for m in bench.select_models(spec)]  # noqa: E731
    assert labels(None) == labels("") == [m[0] for m in bench.MODELS]
    assert labels("LiverUNetTrainer_CPU") == ["2D U-Net", "3D U-Net"]  # a trainer alone: all its configurations
    assert labels("LiverUNetTrainer_CPU:3d_fullres") == ["3D U-Net"]
    # MODELS' order, each once
    assert labels("DualStreamTrainer_CPU, LiverUNetTrainer_CPU:3d_fullres,LiverUNetTrainer_CPU") == [
        "2D U-Net", "3D U-Net", bench.DUALSTREAM]
    for wrong in ("LiverUNetTrainer", "LiverUNetTrainer_CPU:3d_lowres", "DualStreamTrainer_CPU:2d"):
        with pytest.raises(ValueError, match=f"'{wrong}' names no model.*LiverUNetTrainer_CPU:3d_fullres"):
            bench.select_models(wrong)
    with pytest.raises(SystemExit):  # from the command line: argparse's error, before anything is made
        bench.main(["--out", "/nonexistent/never/made", "--models", "NoSuchTrainer"])
