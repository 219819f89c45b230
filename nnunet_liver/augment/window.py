"""CT intensity windowing and random window augmentation (RWA).

A window (level L, width W) maps Hounsfield units to [0, 1]: clip(HU, L - W/2, L + W/2), then (HU - (L - W/2)) / W.
Random window augmentation (Ostmo et al., arXiv 2510.08116) draws L and W per sample during training and
applies a fixed window at evaluation. The math here is deterministic (`apply_window`); the randomness lives in
`sample_windows`, which takes an optional `torch.Generator` and never touches global state when given one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FIXED_PAPER",
    "OSTMO_BEST",
    "PAPER",
    "PRESETS",
    "WindowConfig",
    "apply_window",
    "as_window_config",
    "sample_windows",
]


def _as_window_tensor(value: float | Tensor, x: Tensor, name: str) -> Tensor:
    """A scalar or per-sample `(batch,)` window parameter as float32, broadcastable to x."""
    if not isinstance(value, Tensor):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        return torch.tensor(float(value), dtype=torch.float32, device=x.device)
    if value.ndim == 0:
        return value.to(device=x.device, dtype=torch.float32)
    if value.ndim != 1 or value.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{name} must be a scalar or have shape (batch,) = ({x.shape[0]},), got {tuple(value.shape)}")
    return value.to(device=x.device, dtype=torch.float32).view(-1, *([1] * (x.ndim - 1)))


def apply_window(x: Tensor, level: float | Tensor, width: float | Tensor) -> Tensor:
    """Clip x to [level - width/2, level + width/2] and rescale that interval to [0, 1].

    Args:
        x: raw HU, (batch, channels, *spatial).
        level: window centre in HU, a scalar or one value per sample, (batch,).
        width: window width in HU (> 0), a scalar or (batch,).

    Returns:
        Tensor of x's shape, dtype and device with values in [0, 1]. The arithmetic runs in float32 so that
        half-precision inputs do not lose the window bounds to rounding (bf16 keeps 8 significant bits: a level
        of 213.5 HU would become 214). Gradients flow to x inside the window and to tensor-valued level/width.
    """
    if not isinstance(width, Tensor) and width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    level_t = _as_window_tensor(level, x, "level")
    width_t = _as_window_tensor(width, x, "width")
    lower = level_t - 0.5 * width_t
    upper = level_t + 0.5 * width_t
    clipped = torch.minimum(torch.maximum(x.float(), lower), upper)
    # Dividing by (upper - lower) rather than width maps the bounds to exactly 0 and 1 despite rounding.
    return ((clipped - lower) / (upper - lower)).to(x.dtype)


@dataclass(frozen=True)
class WindowConfig:
    """Which windows a model sees in training and at evaluation.

    In training, each sample starts from the base window; with probability `p_level` its level is redrawn
    uniformly from `level_range`, and independently with probability `p_width` its width from `width_range`.
    Evaluation (validation and prediction) always uses (`eval_level`, `eval_width`).

    All fields are plain floats so that `to_dict()` is JSON-serialisable (it is stored in nnU-Net's
    plans.json `arch_kwargs`).
    """

    level: float
    width: float
    level_range: tuple[float, float]
    width_range: tuple[float, float]
    p_level: float
    p_width: float
    eval_level: float
    eval_width: float

    def __post_init__(self) -> None:
        for name in ("level", "width", "p_level", "p_width", "eval_level", "eval_width"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("level_range", "width_range"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {getattr(self, name)}")
            object.__setattr__(self, name, value)
        values = [self.level, self.width, self.eval_level, self.eval_width, *self.level_range, *self.width_range]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"window parameters must be finite: {self}")
        if min(self.width, self.eval_width, self.width_range[0]) <= 0:
            raise ValueError(f"window widths must be > 0: {self}")
        for name in ("p_level", "p_width"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def is_random(self) -> bool:
        """Whether training draws can differ from the base window."""
        level_random = self.p_level > 0 and self.level_range != (self.level, self.level)
        width_random = self.p_width > 0 and self.width_range != (self.width, self.width)
        return level_random or width_random

    @classmethod
    def fixed(cls, level: float, width: float) -> WindowConfig:
        """A window that never changes: training and evaluation both use (level, width)."""
        return cls(level=level, width=width, level_range=(level, level), width_range=(width, width),
                   p_level=0.0, p_width=0.0, eval_level=level, eval_width=width)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowConfig:
        """Inverse of `to_dict`; unknown or missing keys raise instead of being ignored."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        missing = names - set(d)
        if unknown or missing:
            raise ValueError(f"WindowConfig keys: unknown {sorted(unknown)}, missing {sorted(missing)}")
        return cls(**d)


# paper.md: L ~ U[12, 130] HU, W ~ U[129, 298] HU for every training sample. The paper does not say which window
# an RWA model sees at test time; the centre of the ranges keeps the test window inside the training distribution.
PAPER = WindowConfig(level=71.0, width=213.5, level_range=(12.0, 130.0), width_range=(129.0, 298.0),
                     p_level=1.0, p_width=1.0, eval_level=71.0, eval_width=213.5)

# Best setting of Ostmo et al.: base window L = 62.5, W = 198.8, each redrawn independently with p = 0.163.
OSTMO_BEST = WindowConfig(level=62.5, width=198.8, level_range=(2.5, 122.5), width_range=(118.8, 278.8),
                          p_level=0.163, p_width=0.163, eval_level=62.5, eval_width=198.8)

# The paper's fixed preprocessing window -100..400 HU, for models trained without RWA.
FIXED_PAPER = WindowConfig.fixed(level=150.0, width=500.0)

# RWA's own evaluation window held fixed in training too: the control that separates "random window" from
# "narrower window" (an RWA model evaluates at 71/213.5 = -36..178 HU, the paper's fixed twin at -100..400 HU).
FIXED_RWA_CENTRE = WindowConfig.fixed(level=PAPER.eval_level, width=PAPER.eval_width)

PRESETS: dict[str, WindowConfig] = {"paper": PAPER, "ostmo_best": OSTMO_BEST, "fixed_paper": FIXED_PAPER,
                                    "fixed_rwa_centre": FIXED_RWA_CENTRE}


def as_window_config(value: WindowConfig | dict[str, Any] | str | None) -> WindowConfig:
    """Accept a config, its `to_dict()` form, a preset name (see `PRESETS`) or None (PAPER)."""
    if value is None:
        return PAPER
    if isinstance(value, WindowConfig):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown window preset {value!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[value]
    if isinstance(value, dict):
        return WindowConfig.from_dict(value)
    raise TypeError(f"cannot make a WindowConfig from {type(value).__name__}")


def sample_windows(config: WindowConfig, batch: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Draw one training window per sample.

    Args:
        config: the window distribution.
        batch: number of samples.
        generator: source of randomness; without one, torch's default generator on the draw device is used.
        device: where the returned tensors live. Draws happen on the generator's device (CPU when no generator
            is given) and are then moved, so a seeded CPU generator gives the same windows on any device.

    Returns:
        (level, width), each float32 of shape (batch,). A coin with probability 0 returns the base value exactly.
    """
    draw_device = generator.device if generator is not None else torch.device("cpu")
    # no generator argument when there is none: torch.compile traces that overload with a symbolic batch
    u = torch.rand(4, batch, device=draw_device) if generator is None else \
        torch.rand(4, batch, generator=generator, device=draw_device)
    lo_l, hi_l = config.level_range
    lo_w, hi_w = config.width_range
    level = torch.where(u[2] < config.p_level, lo_l + (hi_l - lo_l) * u[0], torch.full_like(u[0], config.level))
    width = torch.where(u[3] < config.p_width, lo_w + (hi_w - lo_w) * u[1], torch.full_like(u[1], config.width))
    return level.to(device=device, dtype=torch.float32), width.to(device=device, dtype=torch.float32)
