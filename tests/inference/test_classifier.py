"""The classifier sees at prediction the crops it was trained on: same preprocessing, same crop function."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_liver.inference.classifier import ClassifierError, crop_tensors, find_crop_info, load_classifier
from nnunet_liver.inference.inputs import CaseInput, read_case
from nnunet_liver.inference.lesions import label_lesions
from nnunet_liver.inference.pipeline import analyse_segmentation
from nnunet_liver.inference.postprocess import Postprocessing
from nnunet_liver.inference.segmentation import load_segmentation_model

torch.set_num_threads(1)


def test_crop_tensors_resize_as_training(tmp_path):
    from nnunet_liver.classification.crops import CropEntry
    from nnunet_liver.classification.training import load_crop_data

    rng = np.random.default_rng(0)
    img, mask = rng.normal(0, 100, (3, 24, 24, 24)).astype(np.float32), (rng.random((3, 24, 24, 24)) > 0.7)
    entries = []
    for i in range(3):
        np.savez(tmp_path / f"c{i}.npz", image=img[i], mask=mask[i].astype(np.uint8), meta=np.array("{}"))
        entries.append(CropEntry("c", i, 0, "", f"c{i}.npz", 64.0, 10.0))
    ref = load_crop_data(tmp_path, 16, entries)
    x, m = crop_tensors(list(img), list(mask.astype(np.uint8)), 16)
    assert torch.equal(x, ref.images) and torch.equal(m, ref.masks)


@pytest.mark.slow
def test_ground_truth_lesions_get_the_training_crops(predict_models, tmp_path, monkeypatch):
    """Lesions of a training case's ground truth, classified by the prediction path, get the probabilities
    that the training path (classify extract with these lesions as instance maps) gives."""
    from nnunet_liver.classification.crops import extract_crops, open_preprocessed, raw_reader
    from nnunet_liver.classification.lesions import read_lesion_table
    from nnunet_liver.classification.training import load_crop_data, predict_lesions

    for k, v in predict_models["env"].items():
        monkeypatch.setenv(k, v)
    raw = predict_models["raw"]
    clf = load_classifier(predict_models["classifier"])
    assert clf.crop_info_path == predict_models["crops"] / "crops.json"  # found beside the run folder

    # training path: instance maps = our lesion numbering of every training case's ground truth
    inst_dir, table = tmp_path / "instances", tmp_path / "table.csv"
    inst_dir.mkdir()
    rows = []
    for lbl_path in sorted((raw / "labelsTr").glob("*.nii.gz")):
        lbl = sitk.ReadImage(str(lbl_path))
        labelled, n = label_lesions(sitk.GetArrayFromImage(lbl), 2)
        out = sitk.GetImageFromArray(labelled.astype(np.uint16))
        out.CopyInformation(lbl)
        sitk.WriteImage(out, str(inst_dir / lbl_path.name))
        rows += [{"case_id": lbl_path.name[:-7], "lesion_id": i, "label": i % 2} for i in range(1, n + 1)]
    with open(table, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "lesion_id", "label"])
        w.writeheader()
        w.writerows(rows)
    data = open_preprocessed(predict_models["env"]["nnUNet_preprocessed"], 990)
    crops = tmp_path / "crops"
    extract_crops(data, read_lesion_table(table), crops, spec=clf.spec, tumour_label=2, strict=False,
                  instance_maps=raw_reader(inst_dir, ".nii.gz", data.dataset_json), progress=False,
                  log=lambda m: None)
    from nnunet_liver.classification.crops import read_index

    entries = read_index(crops)
    reference = predict_lesions(clf.model, clf.model_name, load_crop_data(crops, clf.config.input_size, entries),
                                clf.config)
    ref_prob = {(e.case_id, e.lesion_id): p for e, p in zip(entries, reference["prob"], strict=True)}

    # prediction path, on the raw image and the ground truth label map
    model = load_segmentation_model(predict_models["model"], progress=False)
    compared = 0
    for case_id in sorted({e.case_id for e in entries}):
        vol = read_case(CaseInput(case_id, raw / "imagesTr" / f"{case_id}_0000.nii.gz", "file"))
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case_id}.nii.gz")))
        geometry = {"spacing": vol.image.GetSpacing(), "origin": vol.image.GetOrigin(),
                    "direction": vol.image.GetDirection()}
        pre, props = model.preprocess(vol.array, geometry)
        stored, _, _, _ = data.dataset().load_case(case_id)
        assert np.array_equal(pre, np.asarray(stored))  # nnU-Net's preprocessing, in memory as on disk
        analysis = analyse_segmentation(vol, gt, tumour_label=2, postprocessing=Postprocessing(), classifier=clf,
                                        preprocessed=pre, preprocessed_spacing=model.preprocessed_spacing(props),
                                        properties=props, transpose_forward=model.transpose_forward)
        for lid, p in analysis.probabilities.items():
            if (case_id, lid) in ref_prob:
                assert p == pytest.approx(ref_prob[(case_id, lid)], abs=1e-5), (case_id, lid)
                compared += 1
    assert compared >= 3


@pytest.mark.slow
def test_classifier_errors(predict_models, tmp_path):
    with pytest.raises(ClassifierError, match="checkpoint not found"):
        load_classifier(tmp_path / "missing.pt")
    with pytest.raises(ClassifierError, match="is a folder"):
        load_classifier(tmp_path)
    nnunet_ckpt = predict_models["model"] / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(ClassifierError, match="checkpoint"):
        load_classifier(nnunet_ckpt)
    copied = tmp_path / "fold_0" / "checkpoint_final.pt"
    copied.parent.mkdir()
    copied.write_bytes(Path(predict_models["classifier"]).read_bytes())
    with pytest.raises(ClassifierError, match="--crops"):
        load_classifier(copied)
    assert load_classifier(copied, crops=predict_models["crops"]).spec.size == 32
    assert find_crop_info(copied, predict_models["crops"] / "crops.json").name == "crops.json"
