"""Postprocessing of a predicted liver/tumour label map.

Default: keep the largest connected component of the liver (every label >= 1: liver and tumour together,
face connectivity); everything outside it, liver or tumour, becomes background, and the numbers of dropped
voxels go into the report. When the model folder holds the ``postprocessing.pkl`` that
``nnUNetv2_find_best_configuration`` determined for the folds in use, nnU-Net's decision is applied instead
(``nnunetv2.postprocessing.remove_connected_components.apply_postprocessing``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["Postprocessing", "keep_largest_liver", "load_postprocessing"]


def keep_largest_liver(seg: np.ndarray) -> tuple[np.ndarray, int]:
    """Keep the largest face-connected component of ``seg >= 1``.

    Returns:
        (the new label map (a copy when anything changed), number of liver components found).
    """
    foreground = seg >= 1
    labelled, n = ndimage.label(foreground)
    if n <= 1:
        return seg, n
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = labelled == int(np.argmax(sizes))
    out = seg.copy()
    out[foreground & ~keep] = 0
    return out, n


@dataclass
class Postprocessing:
    """The postprocessing a prediction gets.

    Attributes:
        method: "largest liver component" or "nnU-Net postprocessing.pkl".
        source: the pkl file (nnU-Net's) or None.
        functions, kwargs: nnU-Net's postprocessing functions and their keyword arguments.
    """

    method: str = "largest liver component"
    source: Path | None = None
    functions: Sequence[Callable] = field(default_factory=list)
    kwargs: Sequence[dict] = field(default_factory=list)

    def describe(self) -> dict:
        d = {"method": self.method, "file": str(self.source) if self.source else None}
        if self.functions:
            d["steps"] = [{"function": getattr(f, "__name__", str(f)), **_json_kwargs(k)}
                          for f, k in zip(self.functions, self.kwargs, strict=True)]
        return d

    def apply(self, seg: np.ndarray, tumour_label: int, voxel_ml: float) -> tuple[np.ndarray, dict]:
        """Postprocess ``seg`` (z, y, x); returns it and the counts of what was removed."""
        if self.functions:
            from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

            out = apply_postprocessing(seg, list(self.functions), list(self.kwargs))
            n_components = None
        else:
            out, n_components = keep_largest_liver(seg)
        changed = out != seg
        tumour_dropped = int(np.count_nonzero(changed & (seg == tumour_label)))
        liver_dropped = int(np.count_nonzero(changed & (seg >= 1) & (seg != tumour_label)))
        return out, {
            "liver_components": n_components,
            "liver_voxels_dropped": liver_dropped,
            "tumour_voxels_dropped": tumour_dropped,
            "tumour_ml_dropped": round(tumour_dropped * voxel_ml, 4),
        }


def _json_kwargs(kwargs: dict) -> dict:
    def fix(v):
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    return {k: fix(v) for k, v in kwargs.items()}


def load_postprocessing(model_folder: str | os.PathLike, folds: Sequence) -> Postprocessing:
    """nnU-Net's ``crossval_results_folds_<folds>/postprocessing.pkl`` of these folds when present, else the
    default (largest liver component)."""
    from nnunetv2.utilities.file_path_utilities import folds_tuple_to_string

    if not folds or any(f == "all" for f in folds):
        return Postprocessing()
    path = Path(model_folder) / f"crossval_results_folds_{folds_tuple_to_string(sorted(folds))}" / "postprocessing.pkl"
    if not path.is_file():
        return Postprocessing()
    import pickle

    with open(path, "rb") as f:
        functions, kwargs = pickle.load(f)
    return Postprocessing("nnU-Net postprocessing.pkl", path, list(functions), list(kwargs))
