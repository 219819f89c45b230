"""scripts/gpu_check.py: its budget, its report and its prediction case (the full run needs a GPU; its CPU dry
run is in the script's docstring)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("gpu_check")


def steps():
    return ([{"kind": "train", "trainer": t, "compile": False} for t in "AB"]
            + [{"kind": "predict", "trainer": t} for t in "AB"]
            + [{"kind": "train", "trainer": t, "compile": True} for t in "AB"])


def test_steps_leave_the_later_steps_their_floors_and_compile_runs_share(gpu_check):
    floor = gpu_check.FLOOR_S
    s = steps()
    later = floor["train"] + 2 * floor["predict"] + 2 * floor["train_compiled"]
    assert gpu_check.step_timeout(s, 0, 400) == 400 - later
    assert gpu_check.step_timeout(s, 3, 300) == 300 - 2 * floor["train_compiled"]
    assert gpu_check.step_timeout(s, 4, 200) == 100  # two compile runs left: half each
    assert gpu_check.step_timeout(s, 5, 130) == 130


def test_report_shows_finished_partial_failed_and_skipped_steps(gpu_check):
    report = {
        "machine": {"device": "GPU", "torch": "2", "cuda": "13", "nnunetv2": "2.8", "cpus": 16,
                    "nnUNet_n_proc_DA": "12"},
        "steps": {"synth_s": 1.0}, "data": {},
        "training": {
            "A compile off": {"patch_size": [8, 64, 64], "batch_size": 2, "parameters": 1234, "compiled": False,
                              "train_iter_per_s": 5.5, "train_peak_mem_gib": 3.2, "train_peak_reserved_gib": 4.0,
                              "epoch_s": [3.0, 2.0], "status": "ok"},
            "A compile on": {"compiled": True, "first_train_step_s": 80.0, "status": "timeout: stopped after 90 s",
                             "log_tail": "compiling..."},
            "B compile on": {"status": "skipped: 10 s of the budget left for it"},
        },
        "prediction": {"A": {"case_shape_xyz": [512, 512, 200], "predict_s": 30.1, "status": "ok"},
                       "B": {"status": "failed: exit code 1", "log_tail": "FileNotFoundError: checkpoint"}},
    }
    md = gpu_check.markdown(report)
    assert "| A | off | [8, 64, 64] | 2 | 1,234 | 5.5 |" in md and "| 3.2 (4.0) | ok |" in md
    assert "| A | on |" in md and "| 80.0 |" in md and "timeout: stopped after 90 s" in md
    assert "| B | on |" in md and "skipped" in md
    assert "| A | [512, 512, 200] |" in md and "| 30.1 |" in md
    assert "compiling..." in md and "FileNotFoundError: checkpoint" in md


def test_prediction_case_keeps_the_field_of_view_and_takes_the_plans_spacing(gpu_check, tmp_path):
    import SimpleITK as sitk

    src = sitk.GetImageFromArray(np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8))
    src.SetSpacing((2.0, 2.0, 5.0))
    src.SetOrigin((10.0, -3.0, 7.0))
    sitk.WriteImage(src, str(tmp_path / "src.nii.gz"))
    info = gpu_check.make_prediction_case(tmp_path / "src.nii.gz", tmp_path / "case" / "c_0000.nii.gz",
                                          (16, 12, 10), spacing_xyz=(1.5, 1.5, 3.0))
    out = sitk.ReadImage(str(tmp_path / "case" / "c_0000.nii.gz"))  # resampled to 1 x 1 x 2 mm, then relabelled
    assert out.GetSize() == (16, 12, 10) and out.GetSpacing() == (1.5, 1.5, 3.0)
    # the outer voxel edges stay: origin moves by half the change of the voxel size
    assert out.GetOrigin() == pytest.approx((10.0 - 0.5, -3.0 - 0.5, 7.0 - 1.5))
    assert out.GetPixelID() == sitk.sitkInt16
    arr = sitk.GetArrayFromImage(out)
    assert arr.min() >= 0 and arr.max() <= 4 * 6 * 8  # resampled inside the source: no -1000 padding
    assert info["shape_xyz"] == [16, 12, 10]


def test_fewer_than_five_training_cases_are_refused(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x", "--num-train", "4"])
    assert gpu_check.parse_args(["--out", "x", "--device", "cpu"]).compile == ["off"]
    assert gpu_check.parse_args(["--out", "x"]).compile == ["off", "on"]
