"""Grouped folds for nnU-Net: no group on both sides of a fold, balanced, deterministic, nnU-Net's format."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_liver.data.io import OutputExistsError
from nnunet_liver.data.splits import (
    SplitsError,
    dataset_groups,
    grouped_folds,
    patient_ids,
    training_cases,
    union_groups,
    write_splits,
)


def test_union_groups_joins_through_shared_members_and_outsiders():
    items = ["a", "b", "c", "d", "e"]
    assert union_groups(items, [("a", "c"), ("c", "e")]) == [["a", "c", "e"], ["b"], ["d"]]
    # "x" is not an item but links b and d (a dropped copy that joined two kept cases)
    assert union_groups(items, [("b", "x"), ("x", "d")]) == [["a"], ["b", "d"], ["c"], ["e"]]


@pytest.mark.parametrize("seed", range(5))
def test_no_group_crosses_a_fold(seed):
    rng = np.random.default_rng(seed)
    cases = [f"case_{i:03d}" for i in range(int(rng.integers(12, 60)))]
    links = [list(rng.choice(cases, size=int(rng.integers(2, 5)), replace=False)) for _ in range(6)]
    splits = grouped_folds(cases, links)
    assert len(splits) == 5
    assert sorted(c for f in splits for c in f["val"]) == sorted(cases)  # each case validated once
    for fold in splits:
        assert not set(fold["train"]) & set(fold["val"]) and set(fold["train"]) | set(fold["val"]) == set(cases)
        assert fold["train"] == sorted(fold["train"]) and fold["val"] == sorted(fold["val"])
    for group in union_groups(cases, links):
        homes = [k for k, f in enumerate(splits) if set(group) & set(f["val"])]
        assert len(homes) == 1 and set(group) <= set(splits[homes[0]]["val"])
    sizes = [len(f["val"]) for f in splits]
    biggest = max(len(g) for g in union_groups(cases, links))
    assert max(sizes) - min(sizes) <= biggest
    assert grouped_folds(list(reversed(cases)), links) == splits  # deterministic, order-free


def test_singletons_give_balanced_folds_and_too_few_groups_are_refused():
    splits = grouped_folds([f"c{i}" for i in range(23)])
    assert sorted(len(f["val"]) for f in splits) == [4, 4, 5, 5, 5]
    with pytest.raises(SplitsError, match="4 training case group"):
        grouped_folds([f"c{i}" for i in range(8)], [["c0", "c1"], ["c2", "c3"], ["c4", "c5", "c6"]])


def test_write_splits_keeps_an_identical_file_and_refuses_another(tmp_path):
    path = tmp_path / "Dataset001_X" / "splits_final.json"
    splits = grouped_folds([f"c{i}" for i in range(10)])
    assert write_splits(path, splits) is True
    assert json.loads(path.read_text(encoding="utf-8")) == splits
    mtime = path.stat().st_mtime_ns
    assert write_splits(path, splits) is False and path.stat().st_mtime_ns == mtime
    other = grouped_folds([f"c{i}" for i in range(10)], seed=1)
    with pytest.raises(OutputExistsError, match="exists with other folds"):
        write_splits(path, other)
    assert write_splits(path, other, overwrite=True) and json.loads(path.read_text(encoding="utf-8")) == other


def test_groups_recorded_in_a_raw_dataset(tmp_path):
    ds = tmp_path / "Dataset001_X"
    (ds / "imagesTr").mkdir(parents=True)
    for i in range(6):
        (ds / "imagesTr" / f"c{i}_0000.nii.gz").write_bytes(b"")
    (ds / "imagesTr" / "c0_0001.nii.gz").write_bytes(b"")  # a second channel is not a case
    (ds / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}), encoding="utf-8")
    (ds / "case_mapping.json").write_text(json.dumps({
        "split_groups": [["c0", "c1"]], "cases": {"c2": {"patient_id": "p"}, "c3": {"patient_id": "p"},
                                                   "c4": {"patient_id": ""}}}), encoding="utf-8")
    (ds / "lesions.csv").write_text("case_id,lesion_id,patient_id\nc4,1,q\nc5,1,q\nc5,2,q\n", encoding="utf-8")
    assert training_cases(ds) == [f"c{i}" for i in range(6)]
    assert patient_ids(ds) == {"c2": "p", "c3": "p", "c4": "q", "c5": "q"}
    assert dataset_groups(ds) == [["c0", "c1"], ["c2", "c3"], ["c4", "c5"]]
    (ds / "lesions.csv").write_text("case_id,lesion_id,patient_id\nc3,1,other\n", encoding="utf-8")
    with pytest.raises(SplitsError, match=r"lesions.csv: case c3 has patient_id 'other', but .*case_mapping.json"):
        patient_ids(ds)
