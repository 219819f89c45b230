"""The ``cpu`` recipe learns: a small, separable but non-monotonic lesion set (benign lesions darker *or*
brighter than the malignant ones, as cysts and haemangiomas are on the phantoms) is classified well on the
held-out folds after a few seconds of training."""
from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import torch

from nnunet_liver.classification.crops import CropSpec, extract_crops, open_preprocessed, read_index
from nnunet_liver.classification.lesions import read_lesion_table
from nnunet_liver.classification.presets import get_preset
from nnunet_liver.classification.splits import make_splits, write_splits
from nnunet_liver.classification.training import train_fold
from nnunet_liver.evaluation.classification_metrics import auc_score
from tests.classification.fakes import write_fake_dataset

torch.set_num_threads(1)

LIVER_HU, MALIGNANT_HU, BENIGN_HU = 60.0, 100.0, (10.0, 170.0)


@pytest.fixture(scope="module")
def separable_crops(tmp_path_factory):
    """12 cases x 2 lesions; malignant at 100 HU, benign at 10 or 170 HU (liver 60), 3 patient-level folds."""
    tmp = tmp_path_factory.mktemp("separable")
    cases = {}
    for i in range(12):
        lesions = []
        for k, centre in enumerate(((4, 7, 7), (8, 16, 16))):
            label = (i + k) % 2
            lesions.append((centre, label, MALIGNANT_HU if label else BENIGN_HU[(i // 2 + k) % 2]))
        cases[f"case_{i:02d}"] = lesions
    info = write_fake_dataset(tmp / "pre", cases, table=tmp / "lesions.csv")
    out = tmp / "crops"
    extract_crops(open_preprocessed(tmp / "pre", 991), read_lesion_table(info["table"]), out,
                  spec=CropSpec(size=32, crop_mm=32.0), progress=False)
    entries = read_index(out)
    labels = [e.label for e in entries]
    assert sum(labels) == 12 and len(labels) == 24
    write_splits(out / "splits.json", make_splits([e.key for e in entries], labels, n_folds=3))
    return out


def test_cpu_recipe_learns_a_separable_set(separable_crops, tmp_path):
    # 25 epochs of ~14 training lesions: ~50 steps, about 10 s on one core (the pooled AUC reached 1.0 from 20)
    config = get_preset("cpu", epochs=25, max_time_s=None)
    t0 = time.perf_counter()
    y, prob = [], []
    for fold in range(3):
        run = tmp_path / f"fold_{fold}"
        train_fold(crop_dir=separable_crops, out_dir=run, model_name="hybrid3d", fold=fold, config=config, seed=0,
                   progress=False, log=lambda _m: None)
        with open(run / "predictions.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        y += [int(r["label"]) for r in rows]
        prob += [float(r["prob"]) for r in rows]
    seconds = time.perf_counter() - t0
    auc = auc_score(np.array(y), np.array(prob))
    assert len(y) == 24
    assert auc >= 0.9, f"pooled test AUC {auc:.3f} after {seconds:.1f} s"
