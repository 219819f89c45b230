"""nnU-Net planners that keep raw Hounsfield units in the preprocessed data.

nnU-Net's default ``CTNormalization`` z-scores CT at preprocessing time, after which no window can be
applied. Random window augmentation (and the fixed windows of the baselines) need HU, so these planners
store CT channels with ``NoNormalization``; the windowing happens inside the networks (see
``nnunet_liver.blocks.windowing``), identically at validation and in ``nnUNetv2_predict``.

nnU-Net's ``-pl`` cannot find planners outside nnunetv2; use ``nnunet-liver plan_and_preprocess``, which
passes these classes to nnU-Net's Python API.
"""
from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

HU_NORMALIZATION = "NoNormalization"
PLANS_MARKER = "nnunet_liver"
PAPER_TARGET_SPACING = (2.5, 1.0, 1.0)  # (z, y, x) mm, nnU-Net's array order; paper: 1 x 1 x 2.5 mm


def is_ct_channel(name: str) -> bool:
    return name.strip().lower() in ("ct", "ct_hu", "hu")


class LiverHUPlanner(ExperimentPlanner):
    """nnU-Net's default planner, except that CT channels keep raw HU (``NoNormalization``).

    Writes the default plans name (``nnUNetPlans``) so the stock ``nnUNetv2_train DATASET CONFIG FOLD -tr
    <trainer>`` finds the plans without ``-p``. Non-CT channels keep nnU-Net's normalisation.
    """

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self):
        schemes, use_mask = super().determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        channel_names = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        for i, name in enumerate(channel_names.values()):
            if is_ct_channel(name):
                schemes[i] = HU_NORMALIZATION
                use_mask[i] = False
        return schemes, use_mask

    def save_plans(self, plans):
        plans[PLANS_MARKER] = {"intensities": "HU", "planner": type(self).__name__}
        super().save_plans(plans)
