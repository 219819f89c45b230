"""Bad inputs, tried as a user would, on every command that reads images: predict, convert lits, convert ircadb,
evaluate, submit and classify extract. Each must exit 2 with one line naming the file and the problem, and
write nothing."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnunet_liver.cli import main as cli_main
from nnunet_liver.data.real_ct import TOTALSEG_CT, TOTALSEG_LIVER
from tests.cli.bad_inputs import (
    FILE_KINDS,
    bad_file,
    ct_image,
    matching_label,
    set_rescale,
)

HEADER_KINDS = ("truncated_nii", "empty", "zero_axis", "4d")  # what a header-only reader can see


def fails(capsys, argv, path, expected: str) -> str:
    """Run the command; assert exit 2 and one line naming ``path`` and holding ``expected``."""
    code = cli_main.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and str(path) in err and expected in err, err
    return err


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def nothing_written(folder: Path, before: list[str], root: str | None = None) -> bool:
    """Nothing new under ``folder``, except maybe the empty output root ``root`` the user named."""
    after = tree(folder)
    return after == before or (root is not None and after == sorted(before + [root])
                               and not any((folder / root).iterdir()))


# ------------------------------------------------------------------------------------------------------
# predict


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_predict_file(kind, tmp_path, capsys):
    path, expected = bad_file(kind, tmp_path / "in", role="ct")
    before = tree(tmp_path)
    # the input is read before the model is loaded: no model is needed to refuse it
    fails(capsys, ["predict", "-i", path, "-o", tmp_path / "out", "-m", tmp_path / "model", "--no-progress"],
          path, expected)
    assert nothing_written(tmp_path, before)


def test_predict_dicom(tmp_path, capsys):
    from tests.inference.helpers import write_dicom_series

    mixed = tmp_path / "mixed"
    for prefix in ("a", "b"):
        write_dicom_series(ct_image(), mixed, prefix=prefix, description=prefix)
    overflow = tmp_path / "overflow"
    write_dicom_series(ct_image(), overflow)
    set_rescale(overflow, "1e30", "0")
    before = tree(tmp_path)
    for folder, expected in ((mixed, "2 DICOM series (mixed series); choose one with --series UID"),
                             (overflow, "outside the range of Hounsfield units")):
        err = fails(capsys, ["predict", "-i", folder, "-o", tmp_path / "out", "-m", tmp_path / "model",
                             "--no-progress"], folder, expected)
    assert "rescale slope 1e30 intercept 0 overflows" in err
    assert nothing_written(tmp_path, before)


# ------------------------------------------------------------------------------------------------------
# convert


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_convert_lits(kind, tmp_path, capsys):
    src = tmp_path / "LiTS"
    path, expected = bad_file(kind, src, role="ct", name="volume-0")
    matching_label(kind, src, "segmentation-0")
    before = tree(tmp_path)
    fails(capsys, ["convert", "lits", src, "-o", tmp_path / "raw", "-np", 1, "--no-progress"], path, expected)
    assert nothing_written(tmp_path, before, "raw")


def _ircadb_mixed(patient: Path) -> tuple[Path, str]:
    from tests.data.converters.fixtures import ircadb_ct, write_dicom_series

    extra = patient / "extra"
    write_dicom_series(ircadb_ct(5), extra, "1.2.826.0.1.3680043.2.1125.99")
    for f in extra.iterdir():
        shutil.move(f, patient / "PATIENT_DICOM" / f"b_{f.name}")
    extra.rmdir()
    return patient / "PATIENT_DICOM", "mixed DICOM series, 2 series UIDs"


def _ircadb_overflow(patient: Path) -> tuple[Path, str]:
    set_rescale(patient / "PATIENT_DICOM", "1e30", "0")
    return patient / "PATIENT_DICOM", "outside the range of Hounsfield units"


def _ircadb_empty_file(patient: Path) -> tuple[Path, str]:
    (patient / "PATIENT_DICOM" / "image_9").write_bytes(b"")
    return patient / "PATIENT_DICOM", "not readable as part of the series (corrupt or not DICOM): image_9"


def _ircadb_truncated_zip(patient: Path) -> tuple[Path, str]:
    folder = patient / "PATIENT_DICOM"
    with zipfile.ZipFile(patient / "PATIENT_DICOM.zip", "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"PATIENT_DICOM/{f.name}")
    shutil.rmtree(folder)
    data = (patient / "PATIENT_DICOM.zip").read_bytes()
    (patient / "PATIENT_DICOM.zip").write_bytes(data[: len(data) // 2])
    return patient / "PATIENT_DICOM.zip", "cannot read the zip file"


def _ircadb_label_as_ct(patient: Path) -> tuple[Path, str]:
    from tests.data.converters.fixtures import ircadb_masks, write_dicom_series

    shutil.rmtree(patient / "PATIENT_DICOM")
    write_dicom_series((ircadb_masks()["liver"] > 0).astype(np.int16), patient / "PATIENT_DICOM",
                       "1.2.826.0.1.3680043.2.1125.98", hu=False)
    return patient / "PATIENT_DICOM", "a label map (segmentation), not a CT"


@pytest.mark.parametrize("damage", [_ircadb_mixed, _ircadb_overflow, _ircadb_empty_file, _ircadb_truncated_zip,
                                    _ircadb_label_as_ct])
def test_convert_ircadb(damage, tmp_path, capsys):
    from tests.data.converters.fixtures import make_ircadb_patient

    patient = make_ircadb_patient(tmp_path / "3Dircadb1" / "3Dircadb1.1")
    path, expected = damage(patient)
    before = tree(tmp_path)
    fails(capsys, ["convert", "ircadb", tmp_path / "3Dircadb1", "-o", tmp_path / "raw", "-np", 1, "--no-progress"],
          path, expected)
    assert nothing_written(tmp_path, before, "raw")


# ------------------------------------------------------------------------------------------------------
# evaluate, submit: label maps


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_evaluate(kind, tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    shutil.copy(TOTALSEG_LIVER, ref / "case.nii.gz")
    path, expected = bad_file(kind, pred, role="label")
    before = tree(tmp_path)
    fails(capsys, ["evaluate", ref, pred, "-o", tmp_path / "out", "-np", 1, "--no-progress"], path, expected)
    assert nothing_written(tmp_path, before)


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_submit_prediction(kind, tmp_path, capsys):
    tests, pred = tmp_path / "test", tmp_path / "pred"
    tests.mkdir()
    shutil.copy(TOTALSEG_CT, tests / "test-volume-0.nii.gz")
    path, expected = bad_file(kind, pred, role="label", name="test-volume-0")
    before = tree(tmp_path)
    fails(capsys, ["submit", pred, "--test-images", tests, "-o", tmp_path / "sub.zip", "-np", 1, "--no-progress"],
          path, expected)
    assert nothing_written(tmp_path, before)


@pytest.mark.parametrize("kind", HEADER_KINDS)
def test_submit_test_volume(kind, tmp_path, capsys):
    """submit reads only the test volumes' headers (their grid): what a header shows is refused."""
    tests, pred = tmp_path / "test", tmp_path / "pred"
    pred.mkdir()
    shutil.copy(TOTALSEG_LIVER, pred / "test-volume-0.nii.gz")
    path, expected = bad_file(kind, tests, role="ct", name="test-volume-0")
    before = tree(tmp_path)
    fails(capsys, ["submit", pred, "--test-images", tests, "-o", tmp_path / "sub.zip", "-np", 1, "--no-progress"],
          path, expected)
    assert nothing_written(tmp_path, before)


# ------------------------------------------------------------------------------------------------------
# classify extract: instance maps and preprocessed cases


@pytest.fixture
def fake_preprocessed(tmp_path, monkeypatch):
    from tests.classification.fakes import write_fake_dataset

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    info = write_fake_dataset(tmp_path / "nnUNet_preprocessed", table=tmp_path / "lesions.csv")
    return tmp_path, Path(info["folder"])


def extract_argv(root: Path, *extra) -> list:
    return ["classify", "extract", "-d", 991, "--table", root / "lesions.csv", "--size", 16, "--crop-mm", 24,
            "--num-folds", 2, "--no-progress", "-o", root / "crops", *extra]


@pytest.mark.parametrize("kind", [k for k in FILE_KINDS if k != "truncated_nii"])  # maps are <case>.nii.gz here
def test_classify_extract_instance_map(kind, fake_preprocessed, capsys):
    root, _ = fake_preprocessed
    path, expected = bad_file(kind, root / "instances", role="label", name="case_00")
    before = tree(root)
    fails(capsys, extract_argv(root, "--instances", root / "instances"), path, expected)
    assert nothing_written(root, before)


@pytest.mark.parametrize("damage", ["truncated", "nan"])
def test_classify_extract_preprocessed_case(damage, fake_preprocessed, capsys):
    root, folder = fake_preprocessed
    npz = folder / "case_03.npz"
    if damage == "truncated":
        npz.write_bytes(npz.read_bytes()[:300])
        expected = "preprocessed case case_03 (case_03.npz, case_03.pkl) cannot be read"
    else:
        with np.load(npz) as f:
            data, seg = f["data"].copy(), f["seg"]
        data[0, 2] = np.nan
        np.savez_compressed(npz, data=data, seg=seg)
        expected = "preprocessed case case_03 (case_03.npz, case_03.pkl) holds NaN or infinite values"
    before = tree(root)
    fails(capsys, extract_argv(root), folder, expected)
    assert nothing_written(root, before)
