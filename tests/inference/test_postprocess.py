"""Postprocessing: the largest liver component stays; tumour outside it is dropped and counted."""
from __future__ import annotations

import numpy as np

from nnunet_liver.inference.postprocess import Postprocessing, keep_largest_liver, load_postprocessing


def test_largest_liver_component_and_counts():
    seg = np.zeros((4, 20, 20), np.uint8)
    seg[:, 2:12, 2:12] = 1
    seg[1:3, 4:7, 4:7] = 2  # tumour inside the liver: kept
    seg[1, 15:18, 15:18] = 2  # an island of tumour ...
    seg[2, 15:18, 15:18] = 1  # ... with some liver: the smaller component, dropped
    out, n = keep_largest_liver(seg)
    assert n == 2
    assert (out[1:3, 4:7, 4:7] == 2).all() and not out[:, 15:, 15:].any()
    result, counts = Postprocessing().apply(seg, tumour_label=2, voxel_ml=0.5)
    assert np.array_equal(result, out)
    assert counts["tumour_voxels_dropped"] == 9 and counts["liver_voxels_dropped"] == 9
    assert counts["tumour_ml_dropped"] == 4.5 and counts["liver_components"] == 2


def test_single_component_is_unchanged(tmp_path):
    seg = np.zeros((3, 8, 8), np.uint8)
    seg[1, 2:5, 2:5] = 1
    out, n = keep_largest_liver(seg)
    assert n == 1 and out is seg
    # no nnU-Net postprocessing.pkl in this model folder: the default
    assert load_postprocessing(tmp_path, [0]).method == "largest liver component"


def test_nnunet_postprocessing_pkl_is_followed(tmp_path):
    import pickle

    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    folder = tmp_path / "crossval_results_folds_0_1"
    folder.mkdir()
    with open(folder / "postprocessing.pkl", "wb") as f:
        pickle.dump(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": 2}]), f)
    pp = load_postprocessing(tmp_path, [1, 0])
    assert pp.method == "nnU-Net postprocessing.pkl" and pp.source == folder / "postprocessing.pkl"
    seg = np.zeros((3, 10, 10), np.uint8)
    seg[:, :, :5] = 1
    seg[1, 1:4, 1:4] = 2
    seg[1, 7, 7] = 2  # outside the liver, but nnU-Net's decision here keeps only the largest tumour component
    out, counts = pp.apply(seg, tumour_label=2, voxel_ml=1.0)
    assert out[1, 7, 7] == 0 and (out[1, 1:4, 1:4] == 2).all() and counts["tumour_voxels_dropped"] == 1
    assert pp.describe()["steps"][0]["function"] == "remove_all_but_largest_component_from_segmentation"
