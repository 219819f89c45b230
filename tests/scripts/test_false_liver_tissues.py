"""scripts/false_liver_tissues.py: false liver voxels by phantom tissue, below / on / above the liver, and
where each lesion subtype's voxels go."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import load_script

script = load_script("false_liver_tissues")


def test_counts_by_region_and_tissue():
    label = np.zeros((5, 2, 2), np.uint8)
    label[1:4, 0, 0] = 1
    label[2, 0, 0] = 2
    tissues = np.zeros((5, 2, 2), np.uint8)
    tissues[:, 1, :] = 2  # tissue "b" on row 1
    pred = np.zeros_like(label)
    pred[0, 1, 1] = 1  # below, tissue b
    pred[2, 1, 0] = 2  # on the liver's slices, tissue b (a false tumour is false liver too)
    pred[4, 0, 1] = 1  # above, tissue a
    pred[4, 1, 1] = 1  # above, tissue b
    pred[1:4, 0, 0] = 1  # true liver: not counted
    counts = script.tissue_counts(label, tissues, pred, ["a", "x", "b"])
    assert counts == {"below the liver": {"b": 1}, "liver slices": {"b": 1}, "above the liver": {"a": 1, "b": 1}}
    with pytest.raises(ValueError, match="no liver"):
        script.tissue_counts(np.zeros_like(label), tissues, pred, ["a", "x", "b"])


def test_lesion_outcomes_count_each_lesions_voxels():
    instances = np.zeros((2, 3, 3), np.uint16)
    instances[0, 0, :] = 1  # lesion 1: three voxels
    instances[1, 2, 2] = 4  # lesion 4: one voxel
    pred = np.zeros_like(instances, dtype=np.uint8)
    pred[0, 0, 0] = 2
    pred[0, 0, 1] = 1
    pred[1, 1, 1] = 2  # a false tumour outside any lesion: not a lesion outcome
    assert script.lesion_outcomes(instances, pred) == {1: [1, 1, 1], 4: [1, 0, 0]}
    pred[0, 0, 2] = 3
    with pytest.raises(ValueError, match="0, 1, 2"):
        script.lesion_outcomes(instances, pred)


def test_demo_folder_and_a_settings_mismatch(tmp_path, capsys):
    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset

    out = tmp_path / "demo"
    raw = write_phantom_dataset(out / "nnunet" / "nnUNet_raw", SynthSettings(num_train=1, num_test=1, size=64, seed=2),
                                progress=False)
    (ref_path,) = sorted((raw / "labelsTs").glob("*.nii.gz"))
    ref = sitk.ReadImage(str(ref_path))
    arr = sitk.GetArrayFromImage(ref)
    pred = np.ones_like(arr)  # liver everywhere: every background voxel is false liver
    img = sitk.GetImageFromArray(pred)
    img.CopyInformation(ref)
    (out / "predictions" / "M").mkdir(parents=True)
    sitk.WriteImage(img, str(out / "predictions" / "M" / ref_path.name))

    assert script.main([str(out), "--size", "64", "--seed", "2", "--fov", "abdomen",
                        "--json", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))["M"]
    counts = result["false liver"]
    assert sum(sum(c.values()) for c in counts.values()) == int((arr == 0).sum())
    assert "lung" in counts["above the liver"]  # the phantom's chest is above its liver
    assert "lung" not in counts["below the liver"]
    # liver everywhere: every lesion voxel is lost to the liver, none is found
    lesions = result["lesions"]
    assert lesions and sum(row["lesions"] for row in lesions.values()) == len(
        [r for r in (raw / "lesions.csv").read_text(encoding="utf-8").splitlines()[1:] if ",test," in r])
    assert sum(row["liver"] for row in lesions.values()) == int((arr == 2).sum())
    assert all(row["found"] == 0 and row["background"] == 0 and row["tumour"] == 0 for row in lesions.values())

    # the segmentation benchmark's layout: <predictions>/<model>/normal/, labels given apart
    bench = tmp_path / "bench" / "M" / "normal"
    bench.mkdir(parents=True)
    shutil.copy(out / "predictions" / "M" / ref_path.name, bench / ref_path.name)
    assert script.main(["--labels", str(raw / "labelsTs"), "--predictions", str(tmp_path / "bench"),
                        "--normal-only", "--size", "64", "--seed", "2", "--fov", "abdomen",
                        "--json", str(tmp_path / "b.json")]) == 0
    b, c = ((tmp_path / name).read_text(encoding="utf-8") for name in ("b.json", "c.json"))
    assert json.loads(b) == json.loads(c)
    # without the settings they come from dataset.json (size 64, seed 2, the whole abdomen)
    assert script.main([str(out), "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text(encoding="utf-8")) == json.loads(c)
    assert script.main(["--labels", str(raw / "labelsTs"), "--predictions", str(tmp_path / "bench"),
                        "--size", "64", "--seed", "2", "--fov", "abdomen"]) == 2  # forgot --normal-only
    assert "add --normal-only" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither a demo folder nor both of --labels and --predictions
        script.main(["--labels", str(raw / "labelsTs")])

    assert script.main([str(out), "--size", "64", "--seed", "3", "--fov", "abdomen"]) == 2
    assert ref_path.name in capsys.readouterr().err
    # phantoms of another version have the same labels and other tissue maps: refused, naming dataset.json
    meta = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    del meta["nnunet_liver"]["generator_version"]  # written before versions: version 1
    (raw / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert script.main([str(out), "--size", "64", "--seed", "2", "--fov", "abdomen"]) == 2
    assert "dataset.json: phantoms of version 1" in capsys.readouterr().err
    shutil.rmtree(out / "predictions")
    assert script.main([str(out)]) == 2


def test_a_cropped_liver_field_of_view_is_regenerated_from_its_dataset_json(tmp_path):
    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset

    out = tmp_path / "demo"
    raw = write_phantom_dataset(out / "nnunet" / "nnUNet_raw",
                                SynthSettings(num_train=1, num_test=1, size=64, seed=3, fov="liver", z_margin_mm=20.0),
                                progress=False)
    (ref_path,) = sorted((raw / "labelsTs").glob("*.nii.gz"))
    (out / "predictions" / "Perfect").mkdir(parents=True)
    shutil.copy(ref_path, out / "predictions" / "Perfect" / ref_path.name)
    # size, seed, field of view and margin all from dataset.json: the regenerated label matches the file
    assert script.main([str(out), "--json", str(tmp_path / "p.json")]) == 0
    result = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["Perfect"]
    assert all(not counts for counts in result["false liver"].values())
    assert result["lesions"] and all(row["found"] == row["lesions"] and row["background"] == row["liver"] == 0
               for row in result["lesions"].values())
    # another margin crops another volume: refused, naming the label
    assert script.main([str(out), "--z-margin-mm", "0"]) == 2
