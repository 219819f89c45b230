"""Patient-level cross-validation folds for the lesion classifiers.

All lesions of a case stay in one part of every fold (lesions of one patient are correlated: a split by
lesion would leak). Folds are ``sklearn.model_selection.StratifiedGroupKFold`` on the lesion labels with
the case id as group. Inside each fold, a validation part for early stopping is split off the training
cases the same way (about ``val_fraction`` of them), so the test fold is never used to choose an epoch.

``splits.json``::

    {"n_folds": 5, "seed": 0, "val_fraction": 0.15, "lesions": [keys...],
     "folds": [{"train": [keys], "val": [keys], "test": [keys]}, ...]}

Keys are ``"<case_id>/<lesion_id>"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["SplitError", "check_splits", "fold_labels", "load_splits", "make_splits", "write_splits"]


class SplitError(ValueError):
    """Folds cannot be made, do not match the lesions, or a fold cannot be trained."""


def _case_of(key: str) -> str:
    return key.rsplit("/", 1)[0]


def _group_split(keys: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int):
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": one-class training parts are reported by
        # fold_labels, with the fold named, when that fold is trained
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(keys, labels, groups))


def make_splits(keys: Sequence[str], labels: Sequence[int], *, n_folds: int = 5, seed: int = 0,
                val_fraction: float = 0.15) -> dict:
    """Stratified, patient-grouped folds with a validation part inside each training part.

    Args:
        keys: lesion keys ``case_id/lesion_id`` (the case id is the group).
        labels: 0/1 per lesion.
        n_folds: number of folds (>= 2).
        seed: shuffling seed.
        val_fraction: share of the training cases used for validation (0 disables validation: early
            stopping then watches the training loss).

    Returns:
        The ``splits.json`` content.

    Raises:
        SplitError: fewer cases than folds, or bad arguments.
    """
    keys = np.asarray(list(keys))
    labels = np.asarray(list(labels), dtype=int)
    if keys.size == 0:
        raise SplitError("no lesions to split")
    if len(set(keys.tolist())) != keys.size:
        raise SplitError("duplicate lesion keys")
    if n_folds < 2:
        raise SplitError(f"need at least 2 folds, got {n_folds}")
    if not 0 <= val_fraction < 1:
        raise SplitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = np.asarray([_case_of(k) for k in keys])
    n_cases = len(set(groups.tolist()))
    if n_cases < n_folds:
        raise SplitError(f"{n_cases} case(s) with lesions cannot make {n_folds} patient-level folds")
    folds = []
    for k, (train_idx, test_idx) in enumerate(_group_split(keys, labels, groups, n_folds, seed)):
        val_idx = np.array([], dtype=int)
        n_train_cases = len(set(groups[train_idx].tolist()))
        if val_fraction > 0 and n_train_cases >= 3:
            n_val = int(np.clip(round(1 / val_fraction), 2, n_train_cases))
            inner = _group_split(keys[train_idx], labels[train_idx], groups[train_idx], n_val, seed + 1000 + k)
            # the inner split whose validation part has both classes, if any
            pick = next((v for _, v in inner if len(set(labels[train_idx][v].tolist())) == 2), inner[0][1])
            val_idx = train_idx[pick]
            train_idx = np.setdiff1d(train_idx, val_idx)
        folds.append({"train": sorted(keys[train_idx].tolist()), "val": sorted(keys[val_idx].tolist()),
                      "test": sorted(keys[test_idx].tolist())})
    out = {"n_folds": n_folds, "seed": seed, "val_fraction": val_fraction, "lesions": sorted(keys.tolist()),
           "folds": folds}
    check_splits(out)
    return out


def check_splits(splits: dict, keys: Sequence[str] | None = None) -> None:
    """Check that parts are disjoint by case and cover the lesions; with ``keys``, that they match them.

    Raises:
        SplitError: naming the problem.
    """
    lesions = set(splits["lesions"])
    if keys is not None and set(keys) != lesions:
        extra, missing = sorted(set(keys) - lesions), sorted(lesions - set(keys))
        raise SplitError(f"splits do not match the crop index: {len(extra)} lesion(s) not in the splits "
                         f"(e.g. {', '.join(extra[:3])}), {len(missing)} split lesion(s) not in the index "
                         f"(e.g. {', '.join(missing[:3])}); extract again to renew splits.json")
    tested: set[str] = set()
    for k, fold in enumerate(splits["folds"]):
        parts = {name: set(fold[name]) for name in ("train", "val", "test")}
        if set().union(*parts.values()) != lesions:
            raise SplitError(f"fold {k} does not cover every lesion")
        cases = {name: {_case_of(x) for x in part} for name, part in parts.items()}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = cases[a] & cases[b]
            if shared:
                raise SplitError(f"fold {k}: case(s) {', '.join(sorted(shared))} in both {a} and {b}")
        tested |= parts["test"]
    if tested != lesions:
        raise SplitError("the test parts of the folds do not cover every lesion")


def write_splits(path: str | os.PathLike, splits: dict) -> None:
    from nnunet_liver.data.io import staged_file

    with staged_file(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(splits, indent=1), encoding="utf-8")


def load_splits(path: str | os.PathLike, keys: Sequence[str] | None = None) -> dict:
    """Read and check ``splits.json``.

    Raises:
        SplitError: missing file, or folds that do not match ``keys``.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"{path}: no splits (run nnunet-liver classify extract)")
    splits = json.loads(path.read_text(encoding="utf-8"))
    check_splits(splits, keys)
    return splits


def fold_labels(splits: dict, fold: int, labels: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(n benign, n malignant) of each part of a fold.

    Raises:
        SplitError: unknown fold, or a training part with a single class.
    """
    if not 0 <= fold < len(splits["folds"]):
        raise SplitError(f"fold {fold} does not exist (folds 0..{len(splits['folds']) - 1})")
    counts = {}
    for name, part in splits["folds"][fold].items():
        y = [labels[k] for k in part]
        counts[name] = (y.count(0), y.count(1))
    n0, n1 = counts["train"]
    if n0 == 0 or n1 == 0:
        only = "benign" if n1 == 0 else "malignant"
        raise SplitError(f"fold {fold}: the training part has only {only} lesions ({n0} benign, {n1} malignant); "
                         f"the class-weighted loss needs both classes: use fewer folds or more cases")
    return counts
