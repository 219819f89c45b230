"""Plans as nnU-Net 2.x plans the LiTS training set, without the images.

nnU-Net's ``ExperimentPlanner.plan_experiment()`` reads only ``dataset.json`` and the data set fingerprint
(``dataset_fingerprint.json``: spacings, shapes after cropping, foreground intensity statistics), never an
image, once ``dataset.json`` lists the cases (its ``dataset`` key) and names the reader
(``overwrite_image_reader_writer``). :func:`lits_like_plans` writes both files for a fingerprint shaped like
LiTS (131 CTs of 512 x 512 voxels; 0.55-1.0 mm in-plane and 0.7-5 mm slices; 36-977 slices) into a
temporary ``nnUNet_raw``/``nnUNet_preprocessed`` and runs the real planner on them, so benchmarks (cost at
the real patch, memory, speed) can build the networks exactly as training on LiTS would.

What nnU-Net 2.8.1 plans from it with :class:`LiverHUPlanner` and its default 8 GB target (printed by
``python -m nnunet_liver.planners.lits_like``):

- spacing (z, y, x) 1.0 x 0.768 x 0.768 mm (the medians), median image 432 x 512 x 512 voxels;
- ``3d_fullres``: patch 128 x 128 x 128, batch 2, 6 stages, strides [1,1,1] then [2,2,2] x 5, 3x3x3 kernels,
  features 32..320, ``batch_dice`` True;
- ``3d_lowres``: patch 128 x 128 x 128, batch 2 at 2.43 x 1.86 x 1.86 mm (median image 178 x 211 x 211), so
  ``3d_cascade_fullres`` exists too;
- ``2d``: patch 512 x 512, batch 12, 8 stages;
- the CT channel kept in raw HU (``NoNormalization``); ``planner="default"`` gives nnU-Net's stock
  ``CTNormalization`` plans for comparison.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["lits_like_plans", "lits_like_fingerprint", "lits_like_dataset_json", "DATASET_NAME", "NUM_CASES"]

DATASET_NAME = "Dataset929_LiTSLike"
NUM_CASES = 131
INPLANE_VOXELS = 512
# foreground (liver + tumour) HU statistics of LiTS as nnU-Net's fingerprint gives them (min/max: the CT
# range, which label noise at the liver border reaches; the planners and trainers use mean, std, percentiles)
INTENSITIES = {"max": 3071.0, "mean": 99.4, "median": 101.0, "min": -1024.0, "percentile_00_5": -17.0,
               "percentile_99_5": 201.0, "std": 39.4}
# (slice spacing in mm, number of cases), thickest first: a thin-slice majority, median 1.0 mm, a tail of
# 2.5 and 5 mm scans
SLICE_SPACINGS = ((5.0, 16), (2.5, 20), (2.0, 10), (1.5, 10), (1.0, 40), (0.8, 25), (0.7, 10))

_CACHE: dict[str, tuple[dict, dict]] = {}


def lits_like_fingerprint() -> dict:
    """A LiTS-like ``dataset_fingerprint.json`` (arrays in nnU-Net's (z, y, x) order).

    In-plane spacing runs evenly over 0.55-0.985 mm (median 0.768 mm, LiTS's). z extents run evenly over
    180-684 mm, the shortest going to the thickest slices (5 mm scans of 36-48 slices, 0.7 mm scans of
    930-977); the slice count is extent / spacing, so the median case is 432 slices at 1 mm both before and
    after nnU-Net resamples to the median spacing.
    """
    z_spacing = np.repeat([s for s, _ in SLICE_SPACINGS], [n for _, n in SLICE_SPACINGS])
    assert len(z_spacing) == NUM_CASES
    inplane = np.linspace(0.55, 0.985156, NUM_CASES)
    extent_mm = np.linspace(180.0, 684.0, NUM_CASES)
    slices = np.maximum(1, np.round(extent_mm / z_spacing)).astype(int)
    return {
        "spacings": [[float(z), float(r), float(r)] for z, r in zip(z_spacing, inplane.round(6))],
        "shapes_after_crop": [[int(n), INPLANE_VOXELS, INPLANE_VOXELS] for n in slices],
        "foreground_intensity_properties_per_channel": {"0": dict(INTENSITIES)},
        "median_relative_size_after_cropping": 1.0,
    }


def lits_like_dataset_json() -> dict:
    """LiTS's ``dataset.json`` as ``nnunet-liver convert lits`` writes it (one CT channel, 0/1/2 labels)."""
    return {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
            "numTraining": NUM_CASES, "file_ending": ".nii.gz", "name": "LiTSLike",
            "description": "LiTS-like fingerprint for planning without images (nnunet_liver.planners.lits_like)"}


def _planner_class(planner: str):
    if planner == "hu":
        from nnunet_liver.planners.hu_planner import LiverHUPlanner

        return LiverHUPlanner
    if planner == "default":
        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

        return ExperimentPlanner
    raise ValueError(f"planner must be 'hu' (LiverHUPlanner, raw HU) or 'default' (nnU-Net's), not {planner!r}")


@contextlib.contextmanager
def _environ(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _plan(planner: str) -> tuple[dict, dict]:
    cls = _planner_class(planner)
    dataset_json = lits_like_dataset_json()
    planning_json = {**dataset_json, "overwrite_image_reader_writer": "SimpleITKIO",
                     "dataset": {f"lits_{i:03d}": {"images": [f"imagesTr/lits_{i:03d}_0000.nii.gz"],
                                                   "label": f"labelsTr/lits_{i:03d}.nii.gz"}
                                 for i in range(NUM_CASES)}}
    with tempfile.TemporaryDirectory(prefix="lits_like_") as tmp:
        raw, pre = Path(tmp) / "nnUNet_raw", Path(tmp) / "nnUNet_preprocessed"
        for root in (raw, pre):
            (root / DATASET_NAME).mkdir(parents=True)
        (raw / DATASET_NAME / "dataset.json").write_text(json.dumps(planning_json), encoding="utf-8")
        (pre / DATASET_NAME / "dataset_fingerprint.json").write_text(json.dumps(lits_like_fingerprint()),
                                                                      encoding="utf-8")
        with _environ(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre)), contextlib.redirect_stdout(io.StringIO()):
            p = cls(DATASET_NAME)
            p.plan_experiment()
            plans_file = pre / DATASET_NAME / f"{p.plans_identifier}.json"
        plans = json.loads(plans_file.read_text(encoding="utf-8"))  # what nnU-Net stores: JSON types only
    return plans, dataset_json


def lits_like_plans(planner: str = "hu") -> tuple[dict, dict]:
    """``(plans, dataset_json)`` as nnU-Net plans the LiTS training set (see the module docstring).

    Args:
        planner: "hu" (:class:`~nnunet_liver.planners.hu_planner.LiverHUPlanner`, raw HU kept, what the
            trainers need) or "default" (nnU-Net's ``ExperimentPlanner``).

    Planned once per process and planner (a few seconds on a CPU), then served from a cache; each call returns
    fresh copies.
    """
    if planner not in _CACHE:
        _CACHE[planner] = _plan(planner)
    return copy.deepcopy(_CACHE[planner])


def _summary(plans: dict) -> str:
    lines = [f"{plans['experiment_planner_used']}: median spacing {plans['original_median_spacing_after_transp']},"
             f" median shape {plans['original_median_shape_after_transp']}"]
    for name, c in plans["configurations"].items():
        if "patch_size" not in c:
            lines.append(f"  {name}: inherits from {c.get('inherits_from')}")
            continue
        a = c["architecture"]["arch_kwargs"]
        lines.append(f"  {name}: patch {c['patch_size']}, batch {c['batch_size']}, spacing "
                     f"{[round(s, 4) for s in c['spacing']]}, median image {c['median_image_size_in_voxels']}, "
                     f"{a['n_stages']} stages, strides {a['strides']}, features {list(a['features_per_stage'])}, "
                     f"batch_dice {c.get('batch_dice')}, normalisation {c['normalization_schemes']}")
    return "\n".join(lines)


if __name__ == "__main__":
    for name in ("hu", "default"):
        print(_summary(lits_like_plans(name)[0]))
