"""``nnunet-liver submit``: converter -> predictions -> zip, --keep-largest-liver, --check, the real CT."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_liver.cli.main import main
from nnunet_liver.data.real_ct import REAL_CT_DIR
from tests.data.converters.fixtures import lits_label, make_lits, tree_hashes, write_nifti

ARGS = ["--no-progress", "-np", "1"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def grid(x) -> tuple:
    return tuple(x.GetSize()), tuple(x.GetSpacing()), tuple(x.GetOrigin()), tuple(x.GetDirection())


def converted(tmp_path: Path, capsys, tests: int = 3) -> tuple[Path, Path]:
    src = make_lits(tmp_path / "src", tests=tests)
    raw = tmp_path / "raw"
    assert run_cli(["convert", "lits", src, "-o", raw, *ARGS], capsys)[0] == 0
    return src, raw / "Dataset501_LiTS"


def fake_prediction(image: Path, out: Path, labels: np.ndarray) -> None:
    """A prediction with the geometry of ``image`` (as nnU-Net writes them)."""
    ref = sitk.ReadImage(str(image))
    pred = sitk.GetImageFromArray(labels)
    pred.CopyInformation(ref)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pred, str(out))


def read_entry(z: zipfile.ZipFile, name: str, tmp: Path) -> sitk.Image:
    path = tmp / name
    path.write_bytes(z.read(name))
    return sitk.ReadImage(str(path))


def test_submission_from_converted_case_ids(tmp_path, capsys):
    src, ds = converted(tmp_path, capsys)
    preds = tmp_path / "pred"
    for n in range(3):
        fake_prediction(ds / f"imagesTs/lits_test_{n:03d}_0000.nii.gz", preds / f"lits_test_{n:03d}.nii.gz",
                        lits_label(n))
    (preds / "plans.json").write_text("{}", encoding="utf-8")  # nnU-Net writes these beside the predictions
    before = tree_hashes(src)
    out = tmp_path / "submission.zip"
    code, stdout, err = run_cli(["submit", preds, "--test-images", src, "-o", out, "--mapping", ds, *ARGS], capsys)
    assert code == 0 and "3 segmentation(s)" in stdout, err
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == [f"test-segmentation-{n}.nii" for n in range(3)]
        for n in range(3):
            name = f"test-segmentation-{n}.nii"
            assert z.read(name)[:2] != b"\x1f\x8b"  # plain NIfTI, not gzipped
            seg = read_entry(z, name, tmp_path)
            assert seg.GetPixelID() == sitk.sitkUInt8
            assert grid(seg) == grid(header(src / f"test-volume-{n}.nii"))
            assert np.array_equal(sitk.GetArrayFromImage(seg), lits_label(n))
    assert tree_hashes(src) == before
    code, stdout, _ = run_cli(["submit", "--check", out, "--test-images", src], capsys)
    assert code == 0 and "valid (3 segmentations)" in stdout

    # without the mapping the case ids mean nothing; an existing zip is kept without --overwrite
    code, _, err = run_cli(["submit", preds, "--test-images", src, "-o", tmp_path / "b.zip", *ARGS], capsys)
    assert code == 2 and "lits_test_000.nii.gz: cannot tell which test volume" in err and "--mapping" in err
    code, _, err = run_cli(["submit", preds, "--test-images", src, "-o", out, "--mapping", ds, *ARGS], capsys)
    assert code == 2 and "exists (use --overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_keep_largest_liver_and_lits_names(tmp_path, capsys):
    src = make_lits(tmp_path / "src", tests=1)
    lab = lits_label(1)
    blob = np.zeros_like(lab)
    blob[0:2, 14:16, 14:16] = 1  # detached liver blob ...
    blob[1, 15, 15] = 2  # ... holding a tumour voxel
    preds = tmp_path / "pred"
    fake_prediction(src / "test-volume-0.nii", preds / "test-volume-0.nii.gz", lab + blob)
    for largest, expected in ((False, lab + blob), (True, lab)):
        out = tmp_path / f"s{largest}.zip"
        argv = ["submit", preds, "--test-images", src, "-o", out, "--store", *ARGS]
        assert run_cli(argv + (["--keep-largest-liver"] if largest else []), capsys)[0] == 0
        with zipfile.ZipFile(out) as z:
            assert z.getinfo("test-segmentation-0.nii").compress_type == zipfile.ZIP_STORED
            assert np.array_equal(sitk.GetArrayFromImage(read_entry(z, "test-segmentation-0.nii", tmp_path)),
                                  expected)


def test_bad_predictions(tmp_path, capsys):
    src = make_lits(tmp_path / "src", tests=2)
    preds = tmp_path / "pred"
    fake_prediction(src / "test-volume-0.nii", preds / "test-volume-0.nii.gz", lits_label(0))
    out = tmp_path / "s.zip"
    code, _, err = run_cli(["submit", preds, "--test-images", src, "-o", out, *ARGS], capsys)
    assert code == 2 and "no prediction for test-volume-1" in err
    write_nifti(lits_label(1)[:, :, :15], preds / "test-segmentation-1.nii")
    code, _, err = run_cli(["submit", preds, "--test-images", src, "-o", out, *ARGS], capsys)
    assert code == 2 and \
        "test-segmentation-1.nii: shape (15, 16, 8) differs from (16, 16, 8) of test-volume-1.nii" in err
    lab = lits_label(1)
    lab[0, 0, 0] = 4
    fake_prediction(src / "test-volume-1.nii", preds / "test-segmentation-1.nii", lab)
    code, _, err = run_cli(["submit", preds, "--test-images", src, "-o", out, *ARGS], capsys)
    assert code == 2 and "test-segmentation-1.nii: unknown label value(s) 4" in err
    fake_prediction(src / "test-volume-1.nii", preds / "test-volume-7.nii.gz", lits_label(1))
    (preds / "test-segmentation-1.nii").unlink()
    code, _, err = run_cli(["submit", preds, "--test-images", src, "-o", out, *ARGS], capsys)
    assert code == 2 and "test-volume-7.nii.gz: prediction for test-volume-7, which is not in the test images" in err
    assert not out.exists() and [p for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_check_lists_every_problem(tmp_path, capsys):
    src = make_lits(tmp_path / "src", tests=5)

    def nifti(labels, n, dtype=np.uint8, origin=None, gz=False) -> bytes:
        ref = header(src / f"test-volume-{n}.nii")
        img = sitk.GetImageFromArray(labels.astype(dtype))
        img.SetSpacing(ref.GetSpacing())
        img.SetOrigin(origin or ref.GetOrigin())
        img.SetDirection(ref.GetDirection())
        path = tmp_path / ("x.nii.gz" if gz else "x.nii")
        sitk.WriteImage(img, str(path), useCompression=gz)
        return path.read_bytes()

    bad_values = lits_label(2).astype(np.float32)
    bad_values[0, 0, 0] = 3
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("sub/", b"")
        z.writestr("sub/test-segmentation-0.nii", nifti(lits_label(0), 0))
        z.writestr("test-segmentation-1.nii.gz", nifti(lits_label(1), 1, gz=True))
        z.writestr("test-segmentation-2.nii", nifti(bad_values, 2, dtype=np.float32))
        z.writestr("test-segmentation-3.nii", nifti(lits_label(3), 3, origin=(0.0, 0.0, 0.0)))
        z.writestr("test-segmentation-9.nii", nifti(lits_label(0), 0))
        z.writestr("readme.txt", b"hello")
        z.writestr("test-segmentation-5.nii", nifti(lits_label(0), 0))  # there are test volumes 0..4 only
    before = broken.read_bytes()
    code, out, err = run_cli(["submit", "--check", broken, "--test-images", src], capsys)
    assert code == 2 and err.endswith(": 10 problem(s)"), err
    expected = [
        "sub/: folder inside the zip",
        "sub/test-segmentation-0.nii: inside a folder",
        "test-segmentation-1.nii.gz: compressed .nii.gz",
        "test-segmentation-2.nii: voxel type 32-bit float (must be uint8)",
        "test-segmentation-2.nii: labels outside 0/1/2: 3",
        "test-segmentation-3.nii: origin",
        "test-segmentation-9.nii: extra file, there is no test-volume-9",
        "test-segmentation-5.nii: extra file, there is no test-volume-5",
        "readme.txt: unexpected file",
        "test-segmentation-4.nii: missing",
    ]
    lines = out.splitlines()
    assert len(lines) == len(expected) == 10
    for e in expected:
        assert sum(line.startswith(e) for line in lines) == 1, (e, lines)
    assert broken.read_bytes() == before
    (tmp_path / "notzip.zip").write_bytes(b"nope")
    code, out, _ = run_cli(["submit", "--check", tmp_path / "notzip.zip", "--test-images", src], capsys)
    assert code == 2 and "not a readable zip file" in out


def test_gzipped_entry_under_nii_name(tmp_path, capsys):
    src = make_lits(tmp_path / "src", tests=1)
    broken = tmp_path / "broken.zip"
    path = tmp_path / "x.nii.gz"
    fake_prediction(src / "test-volume-0.nii", path, lits_label(0))
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("test-segmentation-0.nii", path.read_bytes())
    code, out, _ = run_cli(["submit", "--check", broken, "--test-images", src], capsys)
    assert code == 2 and out.splitlines() == [
        "test-segmentation-0.nii: gzip-compressed content (must be an uncompressed .nii)"]


def test_real_ct_survives_convert_and_submit(tmp_path, capsys):
    """Scanner geometry (direction diag(-1, -1, 1), non-zero origin) through convert -> predict -> submit."""
    src = tmp_path / "lits_test"
    src.mkdir()
    ct = sitk.ReadImage(str(REAL_CT_DIR / "totalseg_abdomen_ct.nii.gz"))
    sitk.WriteImage(ct, str(src / "test-volume-0.nii"), useCompression=False)
    raw = tmp_path / "raw"
    assert run_cli(["convert", "lits", src, "-o", raw, *ARGS], capsys)[0] == 0
    converted_ct = sitk.ReadImage(str(raw / "Dataset501_LiTS/imagesTs/lits_test_000_0000.nii.gz"))
    assert grid(converted_ct) == grid(ct) and converted_ct.GetPixelID() == ct.GetPixelID()
    assert np.array_equal(sitk.GetArrayFromImage(converted_ct), sitk.GetArrayFromImage(ct))
    preds = tmp_path / "pred"
    preds.mkdir()
    shutil.copy(REAL_CT_DIR / "totalseg_abdomen_liver.nii.gz", preds / "lits_test_000.nii.gz")
    out = tmp_path / "submission.zip"
    code, _, err = run_cli(["submit", preds, "--test-images", src, "-o", out, "--mapping",
                            raw / "Dataset501_LiTS" / "case_mapping.json", *ARGS], capsys)
    assert code == 0, err
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["test-segmentation-0.nii"]
        seg = read_entry(z, "test-segmentation-0.nii", tmp_path)
    volume = header(src / "test-volume-0.nii")
    assert grid(seg) == grid(volume)  # exactly, not within a tolerance
    assert tuple(np.round(seg.GetDirection())) == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    assert seg.GetPixelID() == sitk.sitkUInt8
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL_CT_DIR / "totalseg_abdomen_liver.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(seg), liver)
    assert run_cli(["submit", "--check", out, "--test-images", src], capsys)[0] == 0
