"""The real CTs go through data set writing and HU-keeping preprocessing with their geometry intact."""
from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.data.io import copy_case, write_dataset_json
from nnunet_liver.planners.api import plan_and_preprocess

CASES = {
    "crlm": ("crlm_liver_ct.nii.gz", "crlm_liver_seg.nii.gz"),
    "totalseg": ("totalseg_abdomen_ct.nii.gz", "totalseg_abdomen_liver.nii.gz"),
}


@pytest.fixture
def real_dataset(real_dir, nnunet_dirs):
    folder = __import__("pathlib").Path(nnunet_dirs["nnUNet_raw"]) / "Dataset980_RealCT"
    for cid, (img, lbl) in CASES.items():
        copy_case(real_dir / img, real_dir / lbl, folder, cid)
    write_dataset_json(folder, num_training=len(CASES), name="RealCT", description="test")
    return folder


def test_written_cases_keep_geometry_and_voxels(real_dataset, real_dir):
    for cid, (img, lbl) in CASES.items():
        src = sitk.ReadImage(str(real_dir / img))
        out = sitk.ReadImage(str(real_dataset / "imagesTr" / f"{cid}_0000.nii.gz"))
        assert out.GetSpacing() == pytest.approx(src.GetSpacing())
        assert out.GetOrigin() == pytest.approx(src.GetOrigin())
        assert out.GetDirection() == pytest.approx(src.GetDirection())
        assert np.array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(src))
        seg = sitk.ReadImage(str(real_dataset / "labelsTr" / f"{cid}.nii.gz"))
        assert seg.GetPixelID() == sitk.sitkUInt8
        assert np.array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(sitk.ReadImage(str(real_dir / lbl))))
    # the TotalSegmentator case has a non-identity direction: it must not have been normalised away
    assert sitk.ReadImage(str(real_dataset / "imagesTr" / "totalseg_0000.nii.gz")).GetDirection()[0] == -1


def test_label_geometry_mismatch_is_refused(real_dir, tmp_path):
    lbl = sitk.ReadImage(str(real_dir / "crlm_liver_seg.nii.gz"))
    lbl.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="origin"):
        copy_case(real_dir / "crlm_liver_ct.nii.gz", lbl, tmp_path / "ds", "x")


def test_preprocessing_keeps_hu_and_geometry(real_dataset, real_dir, nnunet_dirs):
    plans_path = plan_and_preprocess(980, configurations=("3d_fullres",), num_processes=1, verify=True)
    import json

    plans = json.loads(plans_path.read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["NoNormalization"]
    assert plans["nnunet_liver"]["intensities"] == "HU"

    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = plans_path.parent / plans["configurations"]["3d_fullres"]["data_identifier"]
    ds = infer_dataset_class(str(folder))(str(folder))
    for cid, (img, lbl) in CASES.items():
        data, seg, _, props = ds.load_case(cid)
        data = np.asarray(data[:])
        src = sitk.ReadImage(str(real_dir / img))
        src_arr = sitk.GetArrayFromImage(src).astype(np.float32)
        # raw HU survive: the intensity range of the stored array is the source's (resampling may
        # overshoot a little at sharp edges), and the liver's mean HU is unchanged within a few HU
        assert data.min() >= src_arr.min() - 60 and data.max() <= src_arr.max() + 60
        assert abs(np.percentile(data, 50) - np.percentile(src_arr, 50)) < 30
        liver_src = src_arr[sitk.GetArrayFromImage(sitk.ReadImage(str(real_dir / lbl))) >= 1].mean()
        liver_pre = data[0][np.asarray(seg[:])[0] >= 1].mean()
        assert abs(liver_pre - liver_src) < 5, (cid, liver_pre, liver_src)
        assert 40 < liver_pre < 200  # a contrast-enhanced liver in HU, not a z-score
        sitk_stuff = props["sitk_stuff"]
        assert sitk_stuff["spacing"] == pytest.approx(src.GetSpacing())
        assert sitk_stuff["origin"] == pytest.approx(src.GetOrigin())
        assert sitk_stuff["direction"] == pytest.approx(src.GetDirection())
