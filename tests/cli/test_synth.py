"""``nnunet-liver synth``: outputs, determinism and bad input (exit code 2, nothing half-written)."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.cli.main import main
from nnunet_liver.data import synth_dataset

ARGS = ["--size", "48", "--num-train", "2", "--num-test", "1", "-np", "1", "--no-progress"]


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writes_a_complete_dataset_deterministically(tmp_path, capsys):
    assert main(["synth", "-o", str(tmp_path / "a"), *ARGS]) == 0
    assert main(["synth", "-o", str(tmp_path / "b"), *ARGS]) == 0
    a = tmp_path / "a" / "Dataset990_LiverPhantom"
    b = tmp_path / "b" / "Dataset990_LiverPhantom"
    ha, hb = file_hashes(a), file_hashes(b)
    assert ha == hb  # bit-identical files for the same seed
    assert {"dataset.json", "lesions.csv", "cases.csv", "imagesTr/liver_000_0000.nii.gz",
            "labelsTr/liver_001.nii.gz", "imagesTs/liver_002_0000.nii.gz", "labelsTs/liver_002.nii.gz",
            "imagesTs_shifted/liver_002_0000.nii.gz"} <= set(ha)
    ds = json.loads((a / "dataset.json").read_text(encoding="utf-8"))
    assert ds["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert ds["channel_names"] == {"0": "CT"} and ds["numTraining"] == 2

    # another seed gives other images
    assert main(["synth", "-o", str(tmp_path / "c"), *ARGS, "--seed", "1"]) == 0
    assert file_hashes(tmp_path / "c" / "Dataset990_LiverPhantom")["imagesTr/liver_000_0000.nii.gz"] != \
        ha["imagesTr/liver_000_0000.nii.gz"]


def test_lesion_table_matches_label_components(tmp_path):
    from scipy import ndimage

    assert main(["synth", "-o", str(tmp_path), *ARGS[:2], "--num-train", "6", "--num-test", "0", "-np", "1",
                 "--no-progress"]) == 0
    folder = tmp_path / "Dataset990_LiverPhantom"
    rows = list(csv.DictReader(open(folder / "lesions.csv", encoding="utf-8")))
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case_id"], []).append(r)
    for lbl_path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        cid = lbl_path.name[: -len(".nii.gz")]
        lbl = sitk.ReadImage(str(lbl_path))
        arr = sitk.GetArrayFromImage(lbl)
        comps, n = ndimage.label(arr == 2)
        table = by_case.get(cid, [])
        assert n == len(table), cid
        spacing = np.array(lbl.GetSpacing())  # x, y, z
        for r in table:
            zyx = np.round([float(r["centroid_z_vox"]), float(r["centroid_y_vox"]), float(r["centroid_x_vox"])])
            mm = np.array([float(r["centroid_x_mm"]), float(r["centroid_y_mm"]), float(r["centroid_z_mm"])])
            assert np.allclose(mm, zyx[::-1] * spacing, atol=spacing.max())
            assert r["label"] in ("benign", "malignant")
            vox = comps[tuple(int(i) for i in zyx)]
            # a compact lesion contains its centroid; its component volume matches the table
            if vox:
                ml = (comps == vox).sum() * np.prod(spacing) / 1000
                assert ml == pytest.approx(float(r["volume_ml"]), rel=1e-3)


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_non_positive_count_is_refused(tmp_path, capsys):
    code, err = run_cli(["synth", "-o", str(tmp_path), "--num-train", "0", "--no-progress"], capsys)
    assert code == 2 and "--num-train must be positive" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_needs_overwrite(tmp_path, capsys):
    assert main(["synth", "-o", str(tmp_path), *ARGS]) == 0
    before = file_hashes(tmp_path)
    code, err = run_cli(["synth", "-o", str(tmp_path), *ARGS, "--seed", "5"], capsys)
    assert code == 2 and "exists (use --overwrite" in err
    assert file_hashes(tmp_path) == before
    assert main(["synth", "-o", str(tmp_path), *ARGS, "--seed", "5", "--overwrite"]) == 0
    assert file_hashes(tmp_path) != before
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset990_LiverPhantom"]  # no temporary leftovers


def test_existing_dataset_id_with_another_name_is_refused(tmp_path, capsys):
    (tmp_path / "Dataset990_Other").mkdir()
    code, err = run_cli(["synth", "-o", str(tmp_path), *ARGS, "--overwrite"], capsys)
    assert code == 2 and "dataset id 990 is already used" in err and "Dataset990_Other" in err


def test_unwritable_output_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    code, err = run_cli(["synth", "-o", str(blocker / "raw"), *ARGS], capsys)
    assert code == 2 and "not writable" in err and str(blocker) in err


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = synth_dataset._write_case
    calls = []

    def failing(folder, index, split, settings):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(folder, index, split, settings)

    monkeypatch.setattr(synth_dataset, "_write_case", failing)
    assert main(["synth", "-o", str(tmp_path), *ARGS]) == 130
    assert list(tmp_path.iterdir()) == []


def test_z_margin_keeps_that_many_mm_above_and_below_the_liver(tmp_path):
    """--fov liver --z-margin-mm: the same anatomy with more slices above and below the liver, recorded in
    dataset.json; a negative margin is refused."""
    args = ["--size", "64", "--num-train", "1", "--num-test", "0", "-np", "1", "--no-progress", "--fov", "liver"]
    extents = {}
    for margin in (30, 70):
        root = tmp_path / f"m{margin}"
        assert main(["synth", "-o", str(root), *args, "--z-margin-mm", str(margin)]) == 0
        ds = root / "Dataset990_LiverPhantom"
        label = sitk.ReadImage(str(ds / "labelsTr" / "liver_000.nii.gz"))
        z = np.flatnonzero(sitk.GetArrayFromImage(label).any(axis=(1, 2)))
        sz = label.GetSpacing()[2]
        extents[margin] = (z[0] * sz, (label.GetSize()[2] - 1 - z[-1]) * sz, len(z))
        extra = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))["nnunet_liver"]
        assert extra["z_margin_mm"] == margin
    assert extents[30][2] == extents[70][2]  # the same liver
    for side in (0, 1):
        # up to the margin: the whole abdomen's grid may end first (above the liver, at the dome)
        assert extents[70][side] >= extents[30][side] >= min(30, extents[70][side]) - sz
        assert extents[70][side] <= 70 + sz
    assert extents[70][0] + extents[70][1] > extents[30][0] + extents[30][1] + 20
    with pytest.raises(ValueError, match="--z-margin-mm"):
        synth_dataset.SynthSettings(fov="liver", z_margin_mm=-1).validate()
    # the whole abdomen has no margin to set: refused, nothing written
    assert main(["synth", "-o", str(tmp_path / "abd"), *args[:-2], "--fov", "abdomen", "--z-margin-mm", "70"]) == 2
    assert not (tmp_path / "abd").exists()
