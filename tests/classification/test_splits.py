"""Patient-level folds: no case in two parts, stratified classes, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_liver.classification.splits import (
    SplitError,
    check_splits,
    fold_labels,
    load_splits,
    make_splits,
    write_splits,
)


def lesions(n_cases=30, seed=0):
    rng = np.random.default_rng(seed)
    keys, labels = [], []
    for c in range(n_cases):
        p = rng.uniform(0.1, 0.9)
        for k in range(1, rng.integers(1, 5) + 1):
            keys.append(f"case_{c:03d}/{k}")
            labels.append(int(rng.uniform() < p))
    return keys, labels


def case(key):
    return key.rsplit("/", 1)[0]


def test_no_patient_in_two_parts_and_every_lesion_tested_once():
    keys, labels = lesions()
    splits = make_splits(keys, labels, n_folds=5, seed=3)
    tested = []
    for fold in splits["folds"]:
        parts = {name: {case(k) for k in fold[name]} for name in ("train", "val", "test")}
        assert not parts["train"] & parts["test"]
        assert not parts["train"] & parts["val"]
        assert not parts["val"] & parts["test"]
        assert fold["val"], "a validation part is split off the training cases"
        assert sorted(fold["train"] + fold["val"] + fold["test"]) == sorted(keys)
        tested += fold["test"]
    assert sorted(tested) == sorted(keys)


def test_folds_are_stratified():
    keys, labels = lesions(n_cases=60, seed=1)
    y = dict(zip(keys, labels))
    overall = np.mean(labels)
    splits = make_splits(keys, labels, n_folds=5, seed=0)
    for fold in splits["folds"]:
        share = np.mean([y[k] for k in fold["test"]])
        assert abs(share - overall) < 0.15
        assert {y[k] for k in fold["train"]} == {0, 1}


def test_splits_are_reproducible_and_seeded():
    keys, labels = lesions()
    assert make_splits(keys, labels, seed=4) == make_splits(keys, labels, seed=4)
    assert make_splits(keys, labels, seed=4)["folds"] != make_splits(keys, labels, seed=5)["folds"]


def test_too_few_cases():
    with pytest.raises(SplitError, match="3 case\\(s\\) with lesions cannot make 5 patient-level folds"):
        make_splits(["a/1", "a/2", "b/1", "c/1"], [0, 1, 0, 1], n_folds=5)


def test_one_class_training_fold_is_an_error():
    # case a has only benign lesions, case b only malignant ones: each fold trains on one class
    splits = make_splits(["a/1", "a/2", "b/1"], [0, 0, 1], n_folds=2)
    labels = {"a/1": 0, "a/2": 0, "b/1": 1}
    with pytest.raises(SplitError, match=r"fold \d: the training part has only (benign|malignant) lesions"):
        fold_labels(splits, 0, labels)
    with pytest.raises(SplitError, match="fold 7 does not exist"):
        fold_labels(splits, 7, labels)


def test_check_and_load(tmp_path):
    keys, labels = lesions(n_cases=10)
    splits = make_splits(keys, labels, n_folds=2)
    write_splits(tmp_path / "splits.json", splits)
    assert load_splits(tmp_path / "splits.json", keys) == splits
    with pytest.raises(SplitError, match="1 lesion\\(s\\) not in the splits"):
        load_splits(tmp_path / "splits.json", keys + ["new/1"])
    bad = {**splits, "folds": [dict(splits["folds"][0])]}
    bad["folds"][0]["val"] = bad["folds"][0]["val"] + [bad["folds"][0]["train"][0]]
    with pytest.raises(SplitError):
        check_splits(bad)
    with pytest.raises(SplitError, match="no splits"):
        load_splits(tmp_path / "missing.json")
