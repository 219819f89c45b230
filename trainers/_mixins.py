"""Small behaviour mixins shared by the CPU-sized trainers."""
from __future__ import annotations


class NoInferenceMirroringMixin:
    """Test-time mirroring off for final validation and ``nnUNetv2_predict`` (stored in the checkpoint).

    Mirroring multiplies sliding-window inference by up to 8; on a CPU it dominates a smoke run. Training
    augmentation still mirrors. Put this mixin before the nnU-Net trainer among the bases.
    """

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return result
