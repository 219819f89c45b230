"""The LiTS-like plans: nnU-Net's real planner on a LiTS-shaped fingerprint, no images."""
import os

import numpy as np
import pytest

from nnunet_liver.planners.lits_like import NUM_CASES, lits_like_fingerprint, lits_like_plans


@pytest.fixture(scope="module")
def hu_plans():
    return lits_like_plans()


def test_fingerprint_is_lits_shaped():
    f = lits_like_fingerprint()
    spacings, shapes = np.array(f["spacings"]), np.array(f["shapes_after_crop"])
    assert spacings.shape == shapes.shape == (NUM_CASES, 3)
    assert 0.7 <= spacings[:, 0].min() and spacings[:, 0].max() <= 5.0
    assert 0.55 <= spacings[:, 1:].min() and spacings[:, 1:].max() <= 1.0
    assert (shapes[:, 1:] == 512).all()
    assert np.median(spacings, 0) == pytest.approx([1.0, 0.7676, 0.7676], abs=1e-3)
    assert np.median(shapes[:, 0] * spacings[:, 0]) == pytest.approx(432, abs=3)  # slices at 1 mm
    fg = f["foreground_intensity_properties_per_channel"]["0"]
    assert (fg["mean"], fg["std"], fg["percentile_00_5"], fg["percentile_99_5"]) == (99.4, 39.4, -17.0, 201.0)


def test_3d_fullres_is_nnunets_lits_plan_with_raw_hu(hu_plans):
    plans, dataset_json = hu_plans
    c = plans["configurations"]["3d_fullres"]
    assert c["patch_size"] == [128, 128, 128] and c["batch_size"] == 2
    assert c["spacing"] == pytest.approx([1.0, 0.767578, 0.767578])
    assert c["median_image_size_in_voxels"] == pytest.approx([432, 512, 512])
    arch = c["architecture"]["arch_kwargs"]
    assert arch["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert arch["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert c["normalization_schemes"] == ["NoNormalization"] and plans["nnunet_liver"]["intensities"] == "HU"
    assert plans["configurations"]["2d"]["patch_size"] == [512, 512]
    assert plans["foreground_intensity_properties_per_channel"]["0"]["mean"] == 99.4
    assert dataset_json["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert dataset_json["numTraining"] == NUM_CASES and "dataset" not in dataset_json


def test_trainers_and_nnunet_accept_the_plans(hu_plans):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_liver.planners.api import plans_keep_hu
    from nnunet_liver.trainers.segmentation import liver_tumour_regions

    plans, dataset_json = hu_plans
    assert plans_keep_hu(plans, "3d_fullres")
    pm = PlansManager(plans)
    assert list(pm.get_configuration("3d_fullres").patch_size) == [128, 128, 128]
    assert pm.get_label_manager(liver_tumour_regions(dataset_json)).num_segmentation_heads == 2


def test_stock_planner_z_scores_and_plans_the_same_patch():
    plans, _ = lits_like_plans("default")
    c = plans["configurations"]["3d_fullres"]
    assert c["normalization_schemes"] == ["CTNormalization"] and "nnunet_liver" not in plans
    assert c["patch_size"] == [128, 128, 128]
    with pytest.raises(ValueError, match="planner"):
        lits_like_plans("residual")


def test_cached_copies_and_environment_left_alone(hu_plans):
    before = os.environ.get("nnUNet_raw")
    a, _ = lits_like_plans()
    a["configurations"]["3d_fullres"]["patch_size"] = [1, 1, 1]
    b, _ = lits_like_plans()
    assert b == hu_plans[0] and b["configurations"]["3d_fullres"]["patch_size"] == [128, 128, 128]
    assert os.environ.get("nnUNet_raw") == before
