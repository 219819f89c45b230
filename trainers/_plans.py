"""Rewrites of nnU-Net plans that trainers apply to the ``plans`` dict before ``nnUNetTrainer.__init__``.

The trainer saves the rewritten plans as ``plans.json`` in its results folder and ``nnUNetv2_predict``
reads that copy, so training, validation and prediction build the same network.
"""
from __future__ import annotations

import copy
from typing import Sequence


def resolved_configuration(plans: dict, configuration: str) -> dict:
    """The configuration dict with ``inherits_from`` applied (a copy)."""
    cfg = copy.deepcopy(plans["configurations"][configuration])
    parent = cfg.pop("inherits_from", None)
    if parent is None:
        return cfg
    merged = resolved_configuration(plans, parent)
    merged.update(cfg)
    return merged


def with_configuration(plans: dict, configuration: str, cfg: dict) -> dict:
    """A copy of ``plans`` with ``configuration`` replaced by ``cfg``."""
    new = copy.deepcopy(plans)
    new["configurations"][configuration] = cfg
    return new


def unet_topology(spacing: Sequence[float], patch_size: Sequence[int], min_edge: int = 4):
    """nnU-Net's own topology rule for a patch: (n_stages, kernel_sizes, strides, patch_size)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, patch, _ = get_pool_and_conv_props(list(spacing), list(patch_size), min_edge, 999999)
    return len(strides), [list(k) for k in kernels], [list(s) for s in strides], [int(p) for p in patch]


def cpu_sized_unet_plans(plans: dict, configuration: str, *, max_patch: Sequence[int], base_features: int,
                         max_features: int, batch_size: int) -> dict:
    """Plans whose (PlainConvUNet-style) configuration is shrunk for CPU runs.

    The patch is capped per axis at ``max_patch`` (its last ``len(patch)`` entries are used, so one value
    serves 2d and 3d), the topology recomputed with nnU-Net's rule, feature widths reduced.
    """
    cfg = resolved_configuration(plans, configuration)
    planned = cfg["patch_size"]
    cap = list(max_patch)[-len(planned):]
    patch = [min(p, c) for p, c in zip(planned, cap)]
    n_stages, kernels, strides, patch = unet_topology(cfg["spacing"], patch)
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update({
        "n_stages": n_stages,
        "kernel_sizes": kernels,
        "strides": strides,
        "features_per_stage": [min(max_features, base_features * 2 ** i) for i in range(n_stages)],
    })
    for key, n in (("n_conv_per_stage", n_stages), ("n_conv_per_stage_decoder", n_stages - 1)):
        if key in arch:
            arch[key] = (list(arch[key]) + [arch[key][-1]] * n)[:n]
    cfg["patch_size"] = patch
    cfg["batch_size"] = int(batch_size)
    return with_configuration(plans, configuration, cfg)
