"""Windowing as the network's first layer.

nnU-Net applies no trainer transforms at final validation or in `nnUNetv2_predict`, so a window applied as a
data transform would be missing there. As a layer, the window follows the module's mode: random per sample in
`train()`, the fixed evaluation window in `eval()`, which both validation and the predictor use.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from nnunet_liver.augment.window import WindowConfig, apply_window, as_window_config, sample_windows

__all__ = ["WindowInput"]


class WindowInput(nn.Module):
    """Window raw HU, then normalise: output = (apply_window(x, L, W) - mean) / std.

    Args:
        config: window distribution (a `WindowConfig`, its `to_dict()` form, a preset name, or None for PAPER).
        mean: subtracted after windowing. The default 0.5 centres the window's [0, 1] range.
        std: divisor after windowing. The default 0.25 maps the window to [-2, 2], close to unit variance
            for intensities spread over the window (a uniform distribution on [0, 1] has std 0.29). A trainer can
            pass dataset-derived values (the paper z-scores after its fixed window).

    The module has no parameters and no buffers, so its state_dict is empty whatever the config: a checkpoint
    does not depend on the window. Training draws use torch's default CPU generator (`sample_windows` without a
    generator). nnU-Net 2.8 does not seed torch in the training process; torch seeds the default CPU generator
    from OS entropy in every process, so DDP ranks draw independent windows. If a trainer calls
    `torch.manual_seed`, it should add the rank to the seed to keep the draws independent across ranks.
    """

    def __init__(self, config: WindowConfig | dict[str, Any] | str | None = None, mean: float = 0.5,
                 std: float = 0.25) -> None:
        super().__init__()
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.config = as_window_config(config)
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, x: Tensor) -> Tensor:
        """x: raw HU, (batch, channels, *spatial). Returns the normalised window, same shape and dtype."""
        config = self.config
        if self.training and config.is_random:
            level, width = sample_windows(config, x.shape[0], device=x.device)
            windowed = apply_window(x, level, width)
        elif self.training:
            windowed = apply_window(x, config.level, config.width)
        else:
            windowed = apply_window(x, config.eval_level, config.eval_width)
        return (windowed - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"config={self.config}, mean={self.mean}, std={self.std}"
