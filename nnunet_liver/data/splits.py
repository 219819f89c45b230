"""Cross-validation folds that keep groups of cases together, written as nnU-Net's ``splits_final.json``.

A group is every copy of one scan (near-duplicates kept by ``merge --keep-duplicates``) and every case of
one patient where a source says so (a ``patient_id``). nnU-Net's own split (``KFold`` over the sorted case
ids) knows neither and can put one patient on both sides of a fold. ``nnUNetv2_train`` uses
``<nnUNet_preprocessed>/DatasetXXX_Name/splits_final.json`` when it exists, and nnU-Net's planner copies a
``splits_final.json`` found in the raw data set folder there.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from nnunet_liver.data.io import OutputExistsError, staged_file

SPLITS_FILE = "splits_final.json"
N_FOLDS = 5
SEED = 12345  # nnU-Net's seed for its own split


class SplitsError(ValueError):
    """Folds cannot be made (too few groups) or a source of groups is malformed."""


def union_groups(items: Iterable[str], links: Iterable[Iterable[str]]) -> list[list[str]]:
    """Connected components of ``items`` under ``links`` (each link: items that belong together).

    Items named in a link but not in ``items`` are joined too (they may connect two items), then left out.
    Returns the components as sorted lists, in the order of their first item in ``items``.
    """
    items = list(dict.fromkeys(items))
    parent: dict[str, str] = {i: i for i in items}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in links:
        link = list(link)
        for other in link[1:]:
            ra, rb = find(link[0]), find(other)
            if ra != rb:
                parent[rb] = ra
    members: dict[str, list[str]] = {}
    for i in items:
        members.setdefault(find(i), []).append(i)
    return [sorted(m) for m in members.values()]


def grouped_folds(case_ids: Iterable[str], groups: Iterable[Iterable[str]] = (), *, n_folds: int = N_FOLDS,
                  seed: int = SEED) -> list[dict[str, list[str]]]:
    """``n_folds`` folds in nnU-Net's format (``[{"train": [...], "val": [...]}, ...]``) over ``case_ids``, with
    every group inside one validation part.

    Groups are shuffled with ``seed`` and dealt, largest first, to the fold with the fewest cases, so folds
    differ in size by at most the largest group. Deterministic.

    Raises:
        SplitsError: fewer groups than folds.
    """
    ids = sorted(set(case_ids))
    units = sorted(union_groups(ids, groups))
    if len(units) < n_folds:
        raise SplitsError(f"{len(units)} training case group(s) cannot make {n_folds} folds")
    order = np.random.RandomState(seed).permutation(len(units))
    dealt = sorted((units[i] for i in order), key=len, reverse=True)  # stable: random order within a size
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for unit in dealt:
        min(folds, key=len).extend(unit)  # first of the smallest folds
    return [{"train": sorted(c for j, f in enumerate(folds) if j != k for c in f), "val": sorted(folds[k])}
            for k in range(n_folds)]


def write_splits(path: str | os.PathLike, splits: list[dict], *, overwrite: bool = False) -> bool:
    """Write ``splits`` to ``path`` (staged). Returns False when an identical file is already there.

    Raises:
        OutputExistsError: ``path`` holds other splits (or is unreadable) and ``overwrite`` is off.
    """
    path = Path(path)
    if path.exists():
        try:
            same = json.loads(path.read_text(encoding="utf-8")) == splits
        except (OSError, ValueError):
            same = False
        if same:
            return False
        if not overwrite:
            raise OutputExistsError(f"{path} exists with other folds (use --overwrite to replace it; nnU-Net "
                                    f"models trained on the old folds then no longer match)")
    with staged_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(splits, indent=1) + "\n", encoding="utf-8")
    return True


def check_splits_writable(path: str | os.PathLike, splits: list[dict], *, overwrite: bool = False) -> None:
    """Raise what :func:`write_splits` would raise, without writing (to fail before long work)."""
    path = Path(path)
    if path.exists() and not overwrite:
        try:
            same = json.loads(path.read_text(encoding="utf-8")) == splits
        except (OSError, ValueError):
            same = False
        if not same:
            raise OutputExistsError(f"{path} exists with other folds (use --overwrite to replace it; nnU-Net "
                                    f"models trained on the old folds then no longer match)")


# ------------------------------------------------------------------------------------------------------
# Groups recorded in a raw data set


def patient_ids(dataset: str | os.PathLike) -> dict[str, str]:
    """Case id -> patient id, where the data set records one: a ``patient_id`` in a case's
    ``case_mapping.json`` record, or a ``patient_id`` column in ``lesions.csv``.

    Raises:
        SplitsError: a case given two different patient ids; the message names the file.
    """
    dataset = Path(dataset)
    found: dict[str, str] = {}
    where: dict[str, str] = {}

    def add(case: str, pid, source: str) -> None:
        pid = str(pid).strip()
        if not pid:
            return
        if case in found and found[case] != pid:
            raise SplitsError(f"{source}: case {case} has patient_id {pid!r}, but {where[case]} says "
                              f"{found[case]!r}")
        found[case], where[case] = pid, source

    mapping = dataset / "case_mapping.json"
    if mapping.is_file():
        try:
            records = json.loads(mapping.read_text(encoding="utf-8")).get("cases", {})
        except (OSError, ValueError) as e:
            raise SplitsError(f"{mapping}: unreadable ({e})") from None
        for case, record in records.items():
            if isinstance(record, dict) and record.get("patient_id") not in (None, ""):
                add(case, record["patient_id"], str(mapping))
    table = dataset / "lesions.csv"
    if table.is_file():
        with open(table, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if "patient_id" in (reader.fieldnames or ()):
                for row in reader:
                    add(row.get("case_id", ""), row.get("patient_id", ""), str(table))
    return found


def patient_links(ids: dict[str, str]) -> list[list[str]]:
    """Groups of cases that share a patient id (from :func:`patient_ids`)."""
    by_patient: dict[str, list[str]] = {}
    for case, pid in ids.items():
        by_patient.setdefault(pid, []).append(case)
    return [sorted(v) for _, v in sorted(by_patient.items()) if len(v) > 1]


def training_cases(dataset: str | os.PathLike) -> list[str]:
    """Case ids in ``imagesTr`` of a raw data set (channel 0000, the data set's file ending)."""
    dataset = Path(dataset)
    ds_json = dataset / "dataset.json"
    if not ds_json.is_file():
        raise SplitsError(f"{dataset}: no dataset.json (not an nnU-Net raw data set, or unfinished)")
    try:
        ending = json.loads(ds_json.read_text(encoding="utf-8"))["file_ending"]
    except (OSError, ValueError, KeyError) as e:
        raise SplitsError(f"{ds_json}: unreadable or without file_ending ({e})") from None
    suffix = "_0000" + ending
    return sorted(p.name[:-len(suffix)] for p in (dataset / "imagesTr").glob("*" + suffix))


def dataset_groups(dataset: str | os.PathLike) -> list[list[str]]:
    """Every group a raw data set records: ``split_groups`` of a merged data set's ``case_mapping.json``
    (copies of one scan, patients) and cases sharing a ``patient_id``."""
    dataset = Path(dataset)
    groups: list[list[str]] = []
    mapping = dataset / "case_mapping.json"
    if mapping.is_file():
        try:
            groups += [list(g) for g in json.loads(mapping.read_text(encoding="utf-8")).get("split_groups", [])]
        except (OSError, ValueError) as e:
            raise SplitsError(f"{mapping}: unreadable ({e})") from None
    return groups + patient_links(patient_ids(dataset))
