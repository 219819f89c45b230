"""A tiny preprocessed data set written directly in nnU-Net's numpy layout (no planning: fast).

Each case is a (z, y, x) = (12, 24, 24) volume of liver at 60 HU with spherical lesions: benign ones at
0 HU (cyst-like), malignant ones at 140 HU, so a classifier can learn them in a few steps (a lesion given as
``(centre, label, hu)`` gets its own HU). The "raw" grid
is the preprocessed grid cropped by ``crop_offset`` voxels and unresampled, so raw centroids are the
preprocessed ones plus the offset.
"""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np

SHAPE = (12, 24, 24)
SPACING = (3.0, 1.5, 1.5)  # z, y, x mm
OFFSET = (1, 2, 3)  # crop box start in the raw grid


def sphere(shape, centre, radius_vox):
    zz, yy, xx = np.indices(shape)
    return ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius_vox ** 2


def default_cases(n_cases: int = 6) -> dict[str, list[tuple[tuple[int, int, int], int]]]:
    """Two lesions per case (centre, label); labels alternate so every fold sees both classes."""
    cases = {}
    for i in range(n_cases):
        cases[f"case_{i:02d}"] = [((4, 7, 7), i % 2), ((8, 16, 16), (i + 1) % 2)]
    return cases


def write_fake_dataset(preprocessed_root: Path, cases=None, *, dataset: str = "Dataset991_Fake",
                       normalization: str = "NoNormalization", table: Path | None = None,
                       extra_rows=(), drop_rows=()) -> dict:
    """Write plans, dataset.json, case files and (optionally) a lesion table with raw voxel centroids.

    Returns:
        {"folder": data folder, "table": table path, "rows": table rows written}.
    """
    cases = default_cases() if cases is None else cases
    base = Path(preprocessed_root) / dataset
    folder = base / "nnUNetPlans_3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    plans = {"dataset_name": dataset, "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "spacing": list(SPACING),
                                               "normalization_schemes": [normalization]}}}
    (base / "nnUNetPlans.json").write_text(json.dumps(plans), encoding="utf-8")
    (base / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "liver": 1, "tumor": 2},
                                                   "numTraining": len(cases)}), encoding="utf-8")
    rows = []
    for cid, lesions in cases.items():
        img = np.full(SHAPE, 60.0, np.float32)
        seg = np.ones(SHAPE, np.int16)
        for k, (centre, label, *hu) in enumerate(lesions, start=1):
            m = sphere(SHAPE, centre, 2.2)
            img[m] = hu[0] if hu else 140.0 if label else 0.0
            seg[m] = 2
            raw = [c + o for c, o in zip(centre, OFFSET)]
            rows.append({"case_id": cid, "lesion_id": k, "label": "malignant" if label else "benign",
                         "subtype": "hcc" if label else "cyst", "centroid_z_vox": raw[0], "centroid_y_vox": raw[1],
                         "centroid_x_vox": raw[2]})
        props = {"spacing": list(SPACING), "shape_before_cropping": tuple(s + 2 * o for s, o in zip(SHAPE, OFFSET)),
                 "bbox_used_for_cropping": [[o, o + s] for s, o in zip(SHAPE, OFFSET)],
                 "shape_after_cropping_and_before_resampling": SHAPE,
                 "sitk_stuff": {"spacing": SPACING[::-1], "origin": (0.0, 0.0, 0.0),
                                "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}}
        np.savez_compressed(folder / f"{cid}.npz", data=img[None], seg=seg[None])
        with open(folder / f"{cid}.pkl", "wb") as f:
            pickle.dump(props, f)
    rows = [r for r in rows if (r["case_id"], r["lesion_id"]) not in set(drop_rows)] + list(extra_rows)
    if table is not None:
        with open(table, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case_id", "lesion_id", "label"],
                               lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return {"folder": folder, "table": table, "rows": rows}
