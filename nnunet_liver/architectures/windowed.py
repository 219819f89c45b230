"""nnU-Net's plain U-Net with the window as its first layer: the 2D/3D U-Net baselines and their RWA twins.

The preprocessed data keep raw HU (``nnunet_liver.planners``); this network windows them itself, with a
random window per sample in ``train()`` mode when its config is random (RWA) and the config's fixed window
in ``eval()`` mode (validation and ``nnUNetv2_predict``). The paper's baselines use the fixed window
-100..400 HU followed by zero mean / unit variance (``window="fixed_paper"`` with dataset constants).
"""
from __future__ import annotations

from typing import Any

from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import Tensor

from nnunet_liver.blocks.windowing import WindowInput


class WindowedPlainConvUNet(PlainConvUNet):
    """``PlainConvUNet`` (same keyword arguments) preceded by :class:`WindowInput`.

    Args:
        window: window config (``WindowConfig.to_dict()``, a preset name, or None for the paper's RWA ranges).
        window_mean, window_std: affine normalisation after windowing (see :class:`WindowInput`).
        **unet_kwargs: ``PlainConvUNet``'s arguments, as nnU-Net's plans give them.

    The window layer has no state, so the state_dict is ``PlainConvUNet``'s: checkpoints of both load into
    each other.
    """

    def __init__(self, *args: Any, window: dict | str | None = None, window_mean: float = 0.5,
                 window_std: float = 0.25, **unet_kwargs: Any) -> None:
        super().__init__(*args, **unet_kwargs)
        self.window = WindowInput(window, mean=window_mean, std=window_std)

    def forward(self, x: Tensor):
        """x: raw HU, (batch, channels, *spatial). Returns logits (a list with deep supervision)."""
        return super().forward(self.window(x))
