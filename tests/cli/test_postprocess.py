"""``nnunet-liver postprocess``: the largest connected liver component of every label map, the input untouched,
bad input refused with the file named and nothing written."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import SimpleITK as sitk

from nnunet_liver.cli.main import main

SPACING = (0.8, 0.7, 2.5)  # x, y, z as SimpleITK
ORIGIN = (-10.0, 5.0, 30.0)


def write(path, array, dtype=np.uint8):
    image = sitk.GetImageFromArray(np.asarray(array, dtype))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(path))


def two_livers() -> np.ndarray:
    """A liver with a tumour, and a smaller liver-and-tumour blob apart from it, touching only at a corner."""
    seg = np.zeros((8, 20, 20), np.uint8)
    seg[1:6, 2:12, 2:12] = 1
    seg[2:4, 4:7, 4:7] = 2
    seg[6:8, 12:15, 12:15] = 1  # shares one voxel corner with the liver: a separate face-connected component
    seg[7, 13, 13] = 2
    return seg


def hashes(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_keeps_the_largest_liver_component_with_its_tumour_and_the_geometry(tmp_path, capsys):
    src, out = tmp_path / "raw", tmp_path / "post"
    src.mkdir()
    write(src / "a.nii.gz", two_livers())
    write(src / "b.nii.gz", (two_livers() > 0) * 0)  # empty: nothing to keep, nothing removed
    before = hashes(src)
    assert main(["postprocess", "-i", str(src), "-o", str(out)]) == 0
    assert hashes(src) == before
    got = sitk.ReadImage(str(out / "a.nii.gz"))
    assert np.allclose(got.GetSpacing(), SPACING) and np.allclose(got.GetOrigin(), ORIGIN)
    expected = two_livers()
    expected[6:8, 12:15, 12:15] = 0
    assert np.array_equal(sitk.GetArrayFromImage(got), expected)
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / "b.nii.gz"))).any()
    report = json.loads((out / "postprocessing.json").read_text(encoding="utf-8"))
    assert report["method"] == "largest liver component"
    assert report["cases"]["a"] == {"liver_components": 2, "liver_voxels_dropped": 17, "tumour_voxels_dropped": 1,
                                    "tumour_ml_dropped": round(np.prod(SPACING) / 1000, 4)}
    assert report["cases"]["b"]["liver_voxels_dropped"] == 0
    assert "a: 2 liver component(s); removed 17 liver and 1 tumour voxels" in capsys.readouterr().out


def test_existing_output_needs_overwrite(tmp_path, capsys):
    src, out = tmp_path / "raw", tmp_path / "post"
    src.mkdir()
    write(src / "a.nii.gz", two_livers())
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    assert main(["postprocess", "-i", str(src), "-o", str(out)]) == 2
    assert "exists (use --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["postprocess", "-i", str(src), "-o", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "postprocessing.json"]


def test_bad_input_names_the_file_and_writes_nothing(tmp_path, capsys):
    src, out = tmp_path / "raw", tmp_path / "post"
    src.mkdir()
    write(src / "a.nii.gz", two_livers())
    bad = two_livers()
    bad[0, 0, 0] = 3
    write(src / "b.nii.gz", bad)
    assert main(["postprocess", "-i", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "b.nii.gz" in err and "above 2" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["raw"]  # no partial folder left

    (src / "b.nii.gz").write_bytes(b"not a nifti")
    assert main(["postprocess", "-i", str(src), "-o", str(out)]) == 2
    assert "b.nii.gz" in capsys.readouterr().err and not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["postprocess", "-i", str(empty), "-o", str(out)]) == 2
    assert "no label maps" in capsys.readouterr().err
    assert main(["postprocess", "-i", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    (src / "b.nii.gz").unlink()
    before = hashes(src)
    for inside in (src, src / "post", tmp_path):  # -o the input, inside it, or holding it (--overwrite would delete it)
        assert main(["postprocess", "-i", str(src), "-o", str(inside), "--overwrite"]) == 2
        assert "must not be, hold or lie inside the input folder" in capsys.readouterr().err
    assert hashes(src) == before
