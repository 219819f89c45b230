"""Planning and preprocessing through nnU-Net's Python API with :class:`LiverHUPlanner`."""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Sequence

from nnunet_liver.data.io import datasets_with_id


def _dataset_name(dataset_id: int) -> str:
    raw = Path(os.environ["nnUNet_raw"])
    found = datasets_with_id(raw, dataset_id)
    if not found:
        raise FileNotFoundError(f"no Dataset{dataset_id:03d}_* folder in nnUNet_raw ({raw})")
    if len(found) > 1:
        raise ValueError(f"dataset id {dataset_id} is ambiguous in {raw}: {', '.join(p.name for p in found)}")
    if not (found[0] / "dataset.json").is_file():
        raise FileNotFoundError(f"{found[0] / 'dataset.json'}: missing")
    return found[0].name


# nnU-Net modules that start ``multiprocessing.get_context("spawn").Pool(n)`` for planning and preprocessing
_SPAWNING_MODULES = (
    "nnunetv2.experiment_planning.verify_dataset_integrity",
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor",
    "nnunetv2.preprocessing.preprocessors.default_preprocessor",
)


class _ThreadPoolContext:
    """Stands in for the ``multiprocessing`` module inside :data:`_SPAWNING_MODULES`: its contexts' ``Pool``
    is a :class:`multiprocessing.pool.ThreadPool` of the calling process (same ``starmap``,
    ``starmap_async`` and ``_pool`` of workers with ``is_alive``, which nnU-Net's loops use)."""

    Pool = multiprocessing.pool.ThreadPool

    def get_context(self, method: str | None = None) -> _ThreadPoolContext:
        return self

    def __getattr__(self, name: str):
        return getattr(multiprocessing, name)


@contextlib.contextmanager
def in_process_pools(enabled: bool = True, modules: Sequence[str] = _SPAWNING_MODULES) -> Iterator[None]:
    """With ``enabled``, the pools that the nnU-Net ``modules`` start (by default its integrity check,
    fingerprinting and preprocessing) are threads of this process instead of spawned processes.

    Each spawned worker imports nnU-Net and torch again, about 10 s on a 2-core machine, while one worker
    buys no parallelism: for ``num_processes=1`` that start-up was most of the time of planning a small
    data set (the quick demo's 10 phantoms: 38 s). Not thread-safe with respect to other threads that use
    these modules at the same time.
    """
    if not enabled:
        yield
        return
    import importlib

    modules = [importlib.import_module(m) for m in modules]
    saved = [m.multiprocessing for m in modules]
    stand_in = _ThreadPoolContext()
    for m in modules:
        m.multiprocessing = stand_in
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.multiprocessing = original


def plans_file(dataset_id: int, plans_name: str = "nnUNetPlans") -> Path:
    return Path(os.environ["nnUNet_preprocessed"]) / _dataset_name(dataset_id) / f"{plans_name}.json"


def plans_keep_hu(plans: dict, configuration: str | None = None) -> bool:
    """True when every channel of ``configuration`` (or of all configurations) stores raw HU."""
    from nnunet_liver.planners.hu_planner import HU_NORMALIZATION

    configs = [configuration] if configuration else list(plans["configurations"])
    for c in configs:
        schemes = plans["configurations"][c].get("normalization_schemes")
        if schemes is None:  # inherits from a parent configuration
            parent = plans["configurations"][c].get("inherits_from")
            return parent is not None and plans_keep_hu(plans, parent)
        if any(s != HU_NORMALIZATION for s in schemes):
            return False
    return True


def plan_and_preprocess(dataset_id: int, *, configurations: Sequence[str] = ("2d", "3d_fullres"),
                        num_processes: int = 2, verify: bool = False, paper_spacing: bool = False,
                        plans_name: str = "nnUNetPlans", gpu_memory_target_in_gb: float | None = None,
                        preprocess: bool = True, overwrite: bool = False, verbose: bool = False) -> Path:
    """Fingerprint, plan (raw HU kept) and preprocess one data set; returns the plans file.

    With ``num_processes=1`` nnU-Net's worker pools run in this process (:func:`in_process_pools`).

    Raises:
        FileNotFoundError: no such data set in ``nnUNet_raw``.
        FileExistsError: plans of this name exist that were not made by nnunet-liver and ``overwrite`` is off.
        ValueError: the data set fails nnU-Net's integrity check.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from nnunet_liver.planners.hu_planner import PAPER_TARGET_SPACING, PLANS_MARKER, LiverHUPlanner

    name = _dataset_name(dataset_id)
    target = plans_file(dataset_id, plans_name)
    if target.is_file() and not overwrite:
        existing = json.loads(target.read_text(encoding="utf-8"))
        if PLANS_MARKER not in existing:
            raise FileExistsError(f"{target} exists and was not made by nnunet-liver (its CT channels may be "
                                  f"z-scored); use --overwrite to replace it, or -overwrite_plans_name NAME")
    with in_process_pools(num_processes == 1):
        if verify:
            try:
                verify_dataset_integrity(os.path.join(os.environ["nnUNet_raw"], name), num_processes)
            except (AssertionError, RuntimeError) as e:
                raise ValueError(f"{name}: nnU-Net's dataset integrity check failed: {e}") from None
        extract_fingerprint_dataset(dataset_id, num_processes=num_processes, check_dataset_integrity=False,
                                    clean=True, verbose=verbose)
        _, identifier = plan_experiment_dataset(
            dataset_id, LiverHUPlanner, gpu_memory_target_in_gb=gpu_memory_target_in_gb,
            overwrite_target_spacing=PAPER_TARGET_SPACING if paper_spacing else None,
            overwrite_plans_name=plans_name,
        )
        if preprocess:
            preprocess_dataset(dataset_id, identifier, configurations=list(configurations),
                               num_processes=[num_processes] * len(configurations), verbose=verbose)
    return target
