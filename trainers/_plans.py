"""Rewrites of nnU-Net plans that trainers apply to the ``plans`` dict before ``nnUNetTrainer.__init__``.

The trainer saves the rewritten plans as ``plans.json`` in its results folder and ``nnUNetv2_predict``
reads that copy, so training, validation and prediction build the same network.
"""
from __future__ import annotations

import copy
import math
import warnings
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


def window_constants(plans: dict, window: dict) -> tuple[float, float]:
    """Zero mean / unit variance after a fixed window, from the data set's foreground HU statistics.

    The paper z-scores after its fixed -100..400 HU window. With the window mapping HU to [0, 1], the
    foreground (liver + tumour) mean and std in HU give the windowed mean and std; std is floored so a
    degenerate fingerprint cannot blow up the inputs.
    """
    props = plans.get("foreground_intensity_properties_per_channel", {}).get("0")
    lo = window["eval_level"] - window["eval_width"] / 2
    width = window["eval_width"]
    if not props:
        return 0.5, 0.25
    mean = (min(max(props["mean"], lo), lo + width) - lo) / width
    std = max(props["std"] / width, 0.05)
    return float(mean), float(std)


def inplane_stages(inplane: Sequence[int], max_stages: int, min_edge: int = 4) -> int:
    """How many stages (full resolution + stride-2 downsamplings) an in-plane patch supports."""
    n_down = 0
    while n_down + 1 < max_stages and min(inplane) // 2 ** (n_down + 1) >= min_edge:
        n_down += 1
    return n_down + 1


def context_topology(spacing: Sequence[float], patch_size: Sequence[int], pool: Sequence[int],
                     max_stages: int) -> tuple[list[list[int]], list[list[int]]]:
    """Strides and kernels of the contextual stream: nnU-Net's topology rule on the pooled patch and spacing,
    at most ``max_stages`` stages."""
    pooled_spacing = [float(s) * p for s, p in zip(spacing, pool)]
    pooled_patch = [max(1, int(n) // p) for n, p in zip(patch_size, pool)]
    _, kernels, strides, _ = unet_topology(pooled_spacing, pooled_patch, min_edge=2)
    return strides[:max_stages], kernels[:max_stages]


def _dual_stream_arch(spacing: Sequence[float], patch: Sequence[int], *, features_per_stage: Sequence[int],
                      n_blocks_per_stage: Sequence[int], context_features_per_stage: Sequence[int],
                      context_pool_inplane: int, network_kwargs: dict) -> dict:
    n_stages = inplane_stages(patch[1:], len(features_per_stage))
    pool = [1, context_pool_inplane, context_pool_inplane]
    context_strides, context_kernels = context_topology(spacing, patch, pool, len(context_features_per_stage))
    return {
        "n_slices": N_SLICES,
        "strides": [[1, 1, 1]] + [[1, 2, 2]] * (n_stages - 1),
        "n_stages": n_stages,
        "features_per_stage": list(features_per_stage[:n_stages]),
        "n_blocks_per_stage": list(n_blocks_per_stage[:n_stages]),
        "kernel_sizes": 3,
        "context_pool": pool,
        "context_features_per_stage": list(context_features_per_stage[:len(context_strides)]),
        "context_strides": context_strides,
        "context_kernel_sizes": context_kernels,
        **network_kwargs,
    }


#: adjacent slices the spatial stream stacks (the paper's 7); z_margin = N_SLICES // 2
N_SLICES = 7
#: the contextual stream should see at least this many slices (4 x the 7-slice stack, issue 12)
MIN_CONTEXT_SLICES = 28


def _round_inplane(inplane: Sequence[int], n_max_stages: int, spacing: Sequence[float], depth: int,
                   context_pool_inplane: int, n_context_stages: int) -> list[int]:
    """Round an in-plane patch down to a multiple of both streams' in-plane downsampling (the spatial stream's
    stride product and the contextual stream's pool x strides), so every feature map is an exact fraction."""
    factor = 2 ** (inplane_stages(inplane, n_max_stages) - 1)
    patch = [max(factor * 4, (p // factor) * factor) for p in inplane]
    pool = [1, context_pool_inplane, context_pool_inplane]
    strides, _ = context_topology(spacing, [depth, *patch], pool, n_context_stages)
    for axis in (1, 2):
        ctx = context_pool_inplane * math.prod(s[axis] for s in strides)
        step = math.lcm(factor, ctx)
        patch[axis - 1] = max(step, (patch[axis - 1] // step) * step)
    return patch


#: in-plane fractions of the largest patch tried by the GPU memory planning, largest first
INPLANE_FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)


def dual_stream_plans(plans: dict, configuration: str, *, n_slices_patch: int, max_inplane: int,
                      features_per_stage: Sequence[int], n_blocks_per_stage: Sequence[int],
                      context_features_per_stage: Sequence[int], context_pool_inplane: int, batch_size: int,
                      network_kwargs: dict, gpu_memory_gb: float | None = None,
                      dataset_voxels: float | None = None) -> dict:
    """Plans whose 3D configuration runs :class:`DualStreamAttentionNet`.

    The patch has ``n_slices_patch`` slices (nnU-Net pads shorter volumes; at least 2 x z_margin + 1 so that
    some slices have real neighbours, and a warning below 28, the contextual stream's minimum) and the
    planned in-plane extent, capped at ``max_inplane`` and at the median image and rounded to both streams'
    downsampling; the spatial stream's strides
    are in-plane only (z stride 1), which nnU-Net turns into matching deep-supervision targets. The
    contextual stream pools ``context_pool_inplane`` x in-plane and takes nnU-Net's topology rule on the
    pooled patch for its strides and kernels (up to ``len(context_features_per_stage)`` stages).

    ``gpu_memory_gb``: instead of ``batch_size``, choose the in-plane patch (the largest of
    :data:`INPLANE_FRACTIONS` of the capped extent) and then the batch (>= 2, up to 16) whose estimated
    peak training memory under fp16 autocast fits (``nnunet_liver.planners.gpu_memory``), the batch capped
    like nnU-Net's so that it covers at most 5 % of ``dataset_voxels`` when given. The estimate is
    for the full network (attention and context on, whatever ``network_kwargs`` says, so that the ablation
    steps train on the same patches) and counts the full-resolution checkpointed segment as stored, since
    the backward pass recomputes it while the rest is held.
    """
    cfg = resolved_configuration(plans, configuration)
    if len(cfg["patch_size"]) != 3:
        raise ValueError(f"the dual-stream network runs on a 3D configuration (3d_fullres), not {configuration!r}")
    median = cfg["median_image_size_in_voxels"]
    n_max = len(features_per_stage)
    largest = [max(8, min(int(m), max_inplane)) for m in median[1:]]
    depth = max(int(n_slices_patch), 2 * (N_SLICES // 2) + 1)
    if depth < MIN_CONTEXT_SLICES and gpu_memory_gb is not None:  # real-size plans; CPU presets are small on purpose
        warnings.warn(f"DualStream patch of {depth} slices: the contextual stream sees fewer than "
                      f"{MIN_CONTEXT_SLICES} slices (fine for CPU presets, not the paper's design)", stacklevel=2)
    arch_args = dict(features_per_stage=features_per_stage, n_blocks_per_stage=n_blocks_per_stage,
                     context_features_per_stage=context_features_per_stage,
                     context_pool_inplane=context_pool_inplane)

    def rounded(inplane):
        return _round_inplane(inplane, n_max, cfg["spacing"], depth, context_pool_inplane,
                              len(context_features_per_stage))

    patch = [depth, *rounded(largest)]
    memory = None
    if gpu_memory_gb is not None:
        from nnunet_liver.architectures.dual_stream import DualStreamAttentionNet
        from nnunet_liver.planners.gpu_memory import choose_patch_and_batch

        def build(candidate):
            kwargs = _dual_stream_arch(cfg["spacing"], candidate, **arch_args, network_kwargs=network_kwargs)
            levels = [i for i in kwargs.get("checkpoint_stages", ()) if i != 0]
            kwargs.update(use_attention=True, use_context=True, checkpoint_stages=levels, checkpoint_gates=False)
            return DualStreamAttentionNet(1, 2, **kwargs, deep_supervision=True)

        candidates = []
        for f in INPLANE_FRACTIONS:
            inplane = rounded([max(8, int(round(p * f))) for p in largest])
            if [depth, *inplane] not in candidates:
                candidates.append([depth, *inplane])
        import torch

        with torch.random.fork_rng():  # the measurement draws random inputs; leave the trainer's seed alone
            chosen, batch_size, memory = choose_patch_and_batch(build, candidates, gpu_memory_gb, min_batch=2,
                                                                max_batch=16, dataset_voxels=dataset_voxels)
        patch = list(chosen)
    cfg["patch_size"] = [int(p) for p in patch]
    cfg["batch_size"] = int(batch_size)
    cfg["architecture"] = {
        "network_class_name": "nnunet_liver.architectures.dual_stream.DualStreamAttentionNet",
        "arch_kwargs": _dual_stream_arch(cfg["spacing"], patch, **arch_args, network_kwargs=network_kwargs),
        "_kw_requires_import": [],
    }
    if memory is not None:
        cfg["gpu_memory_plan"] = {"target_gib": float(gpu_memory_gb),
                                  "estimated_peak_gib": round(float(memory["peak"]), 2),
                                  "estimated_allocated_gib": round(float(memory["allocated"]), 2)}
    return with_configuration(plans, configuration, cfg)


def windowed_unet_plans(plans: dict, configuration: str, network_kwargs: dict) -> dict:
    """Plans whose configuration runs nnU-Net's planned U-Net behind a window layer."""
    cfg = resolved_configuration(plans, configuration)
    cfg["architecture"]["network_class_name"] = "nnunet_liver.architectures.windowed.WindowedPlainConvUNet"
    cfg["architecture"]["arch_kwargs"].update(network_kwargs)
    return with_configuration(plans, configuration, cfg)
