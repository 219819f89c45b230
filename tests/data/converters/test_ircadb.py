"""3D-IRCADb pieces: structure names, zip handling, DICOM series checks, lesion rows of touching lesions."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.data.converters import ConversionError
from nnunet_liver.data.converters.ircadb import (
    _extract,
    convert_ircadb,
    find_patients,
    lesion_rows,
    list_structures,
    read_series,
    structure_kind,
)
from tests.data.converters.fixtures import (
    IRCADB_SPACING,
    ircadb_ct,
    ircadb_masks,
    make_ircadb_patient,
    write_dicom_series,
)


@pytest.mark.parametrize("name, kind", [
    ("liver", "liver"), ("livertumor01", "tumour"), ("livertumor1", "tumour"), ("livertumors", "tumour"),
    ("liverTumor02", "tumour"), ("livertumour3", "tumour"), ("livercyst", "cyst"), ("liverkyst", "cyst"),
    ("liverkyste", "cyst"), ("liverkyst1", "cyst"), ("livercysts02", "cyst"), ("portalvein", None),
    ("venoussystem", None), ("bone", None), ("surrenalTumor", None), ("leftkidney", None), ("liverlobe", None),
])
def test_structure_kind(name, kind):
    assert structure_kind(name) == kind


def test_read_series_keeps_hu_and_geometry(tmp_path):
    write_dicom_series(ircadb_ct(3), tmp_path / "s", "1.2.3.4")
    img = read_series(tmp_path / "s", "CT")
    assert np.array_equal(sitk.GetArrayFromImage(img), ircadb_ct(3))
    assert np.allclose(img.GetSpacing(), IRCADB_SPACING, atol=1e-5)
    with pytest.raises(ConversionError, match="no files"):
        (tmp_path / "empty").mkdir()
        read_series(tmp_path / "empty", "CT")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "image_0").write_text("not dicom", encoding="utf-8")
    with pytest.raises(ConversionError, match="text: no DICOM series found"):
        read_series(tmp_path / "text", "CT")


def test_masks_zip_without_top_folder_and_unsafe_members(tmp_path):
    masks = tmp_path / "MASKS_DICOM.zip"
    with zipfile.ZipFile(masks, "w") as z:
        z.writestr("liver/image_0", b"x")
        z.writestr("livertumor01/image_0", b"x")
        z.writestr("artery/image_0", b"x")
    assert list_structures(masks) == {"liver": "liver", "livertumor01": "tumour"}
    out = _extract(masks, "MASKS_DICOM", tmp_path / "out", keep=lambda rel: not rel.startswith("artery"))
    assert sorted(p.name for p in out.iterdir()) == ["liver", "livertumor01"]
    evil = tmp_path / "PATIENT_DICOM.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("PATIENT_DICOM/image_0", b"x")
        z.writestr("PATIENT_DICOM/../../evil", b"x")
    with pytest.raises(ConversionError, match="points outside the folder"):
        _extract(evil, "PATIENT_DICOM", tmp_path / "unpacked")
    assert not (tmp_path / "evil").exists()
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ConversionError, match="bad.zip: cannot read the zip file"):
        list_structures(tmp_path / "bad.zip")


def test_patients_found_at_any_depth(tmp_path):
    (tmp_path / "a" / "3Dircadb1" / "3Dircadb1.10").mkdir(parents=True)
    (tmp_path / "a" / "3Dircadb1" / "3Dircadb1.2").mkdir()
    (tmp_path / "a" / ".hidden" / "3Dircadb1.3").mkdir(parents=True)
    assert {n: p.name for n, p in find_patients(tmp_path).items()} == {2: "3Dircadb1.2", 10: "3Dircadb1.10"}
    assert list(find_patients(tmp_path / "a" / "3Dircadb1" / "3Dircadb1.2")) == [2]
    (tmp_path / "b" / "3Dircadb1.2").mkdir(parents=True)
    with pytest.raises(ConversionError, match="patient 2 found twice"):
        find_patients(tmp_path)


def test_touching_lesions_share_their_label_component():
    img = sitk.Image(6, 5, 4, sitk.sitkUInt8)
    img.SetSpacing((1.0, 2.0, 3.0))
    a = np.zeros((4, 5, 6), bool)
    a[1:3, 1:3, 1:3] = True
    b = np.zeros_like(a)
    b[1:3, 1:3, 3:5] = True  # touches a
    cyst = np.zeros_like(a)
    cyst[3, 4, 5] = True
    label = np.zeros(a.shape, np.uint8)
    label[a | b] = 2
    label[cyst] = 1
    rows = lesion_rows("c", img, label, [("livertumor01", "tumour", a), ("livertumor02", "tumour", b),
                                         ("livercyst", "cyst", cyst)], {"tumour": 2, "cyst": 1})
    assert [(r["mask"], r["lesion_id"], r["voxels"]) for r in rows] == [
        ("livertumor01", 1, 8), ("livertumor02", 1, 8), ("livercyst", "", 1)]
    assert rows[0]["volume_ml"] == pytest.approx(8 * 6 / 1000)
    assert (rows[2]["centroid_x_mm"], rows[2]["centroid_y_mm"], rows[2]["centroid_z_mm"]) == (5.0, 8.0, 9.0)


def test_masks_whose_background_is_shifted_by_an_intercept(tmp_path):
    make_ircadb_patient(tmp_path / "src" / "3Dircadb1.1", masks_with_intercept=True)
    result = convert_ircadb(tmp_path / "src", tmp_path / "raw", progress=False)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(result.folder / "labelsTr" / "ircadb_001.nii.gz")))
    m = {k: v > 0 for k, v in ircadb_masks().items()}
    assert np.array_equal(label == 2, m["livertumor01"] | m["livertumor02"])
    assert np.array_equal(label == 1, (m["liver"] | m["liverkyst"]) & ~(label == 2))
