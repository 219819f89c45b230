"""Lesions of a label map and their measurements in the input image's geometry.

A lesion is a 3D connected component of the tumour label with face connectivity (``scipy.ndimage.label``'s
default, as in ``nnunet_liver.evaluation.lits`` and the classifier's lesion tables); ids follow scipy's
numbering (raster order of the first voxel).

Per lesion:

- centroid: mean voxel position as a SimpleITK continuous index (x, y, z = the file's first, second and
  third axis) and in patient millimetres (LPS, ``TransformContinuousIndexToPhysicalPoint``);
- volume: voxel count times the voxel volume, in ml;
- longest axial diameter: the largest distance between the centres of two lesion voxels in the same axial
  slice, in mm. Axial slices are the planes of the two index axes that are not the one closest to the
  patient's head-foot axis (so a volume stored in another orientation is still measured axially). Centre to
  centre, the value is one voxel shorter than an edge-to-edge calliper reading;
- mean and standard deviation of the HU inside the lesion;
- ``small``: longest axial diameter under 10 mm, where segmentation and classification are least reliable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

__all__ = ["SMALL_DIAMETER_MM", "LesionMeasurement", "axial_axis", "label_lesions", "max_inplane_distance",
           "measure_lesions"]

SMALL_DIAMETER_MM = 10.0


@dataclass(frozen=True)
class LesionMeasurement:
    """One lesion (see the module docstring for the definitions).

    Attributes:
        lesion_id: its value in the labelled array (1..n).
        n_voxels: voxels in the input grid.
        centroid_index: (x, y, z) continuous SimpleITK index.
        centroid_mm: (x, y, z) patient coordinates in mm (LPS).
        volume_ml: volume.
        axial_diameter_mm: longest axial diameter.
        axial_slice: index (along the axial axis) of the slice holding that diameter.
        mean_hu, std_hu: HU statistics inside the lesion.
        small: axial diameter under ``SMALL_DIAMETER_MM``.
        bbox: ((z0, z1), (y0, y1), (x0, x1)) half-open, numpy (z, y, x) order.
    """

    lesion_id: int
    n_voxels: int
    centroid_index: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    volume_ml: float
    axial_diameter_mm: float
    axial_slice: int
    mean_hu: float
    std_hu: float
    small: bool
    bbox: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict:
        return asdict(self)


def label_lesions(seg: np.ndarray, tumour_label: int) -> tuple[np.ndarray, int]:
    """Face-connected components of ``seg == tumour_label``: (int32 labelled array, number of lesions)."""
    labelled, n = ndimage.label(np.asarray(seg) == tumour_label)
    return labelled.astype(np.int32, copy=False), int(n)


def axial_axis(direction: tuple[float, ...] | np.ndarray) -> int:
    """The numpy (z, y, x) axis whose index direction is closest to the patient's head-foot (S) axis."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    sitk_axis = int(np.argmax(np.abs(d[2, :])))  # column j = direction of index axis j in LPS
    return 2 - sitk_axis


def max_inplane_distance(points_mm: np.ndarray) -> float:
    """Largest distance between 2D points (the diameter of the set), via their convex hull."""
    if len(points_mm) < 2:
        return 0.0
    pts = points_mm
    if len(pts) > 16:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # collinear (a one-voxel-wide lesion): the extremes along the line are enough
            pts = pts[[np.argmin(pts[:, 0]), np.argmax(pts[:, 0]), np.argmin(pts[:, 1]), np.argmax(pts[:, 1])]]
    return float(pdist(pts).max())


def measure_lesions(labelled: np.ndarray, n: int, image_hu: np.ndarray, reference,
                    small_mm: float = SMALL_DIAMETER_MM) -> list[LesionMeasurement]:
    """Measure every lesion of a labelled array.

    Args:
        labelled: (z, y, x) int lesion ids (0 background), from :func:`label_lesions`.
        n: number of lesions.
        image_hu: (z, y, x) HU on the same grid.
        reference: SimpleITK image with the grid's geometry (spacing, origin, direction).
        small_mm: diameter below which a lesion is flagged ``small``.
    """
    if labelled.shape != image_hu.shape:
        raise ValueError(f"labels {labelled.shape} and image {image_hu.shape} differ in shape")
    if n == 0:
        return []
    spacing_zyx = np.asarray(reference.GetSpacing(), dtype=np.float64)[::-1]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    ax = axial_axis(reference.GetDirection())
    inplane = [a for a in range(3) if a != ax]
    boxes = ndimage.find_objects(labelled, max_label=n)
    counts = np.bincount(labelled.ravel(), minlength=n + 1)
    out = []
    for lesion_id in range(1, n + 1):
        box = boxes[lesion_id - 1]
        if box is None:
            continue
        mask = labelled[box] == lesion_id
        idx = np.argwhere(mask)  # (k, 3) in the box, numpy order
        origin = np.array([s.start for s in box])
        centroid_zyx = idx.mean(axis=0) + origin
        centroid_index = tuple(float(v) for v in centroid_zyx[::-1])
        centroid_mm = tuple(float(v) for v in reference.TransformContinuousIndexToPhysicalPoint(centroid_index))
        values = image_hu[box][mask].astype(np.float64)
        best, best_slice = 0.0, int(idx[0, ax] + origin[ax])
        for s in np.unique(idx[:, ax]):
            pts = idx[idx[:, ax] == s][:, inplane] * spacing_zyx[inplane]
            d = max_inplane_distance(pts)
            if d > best:
                best, best_slice = d, int(s + origin[ax])
        if best == 0.0:  # one voxel per slice: the slice with most voxels is as good as any
            best_slice = int(np.bincount(idx[:, ax]).argmax() + origin[ax])
        out.append(LesionMeasurement(
            lesion_id=lesion_id, n_voxels=int(counts[lesion_id]), centroid_index=centroid_index,
            centroid_mm=centroid_mm, volume_ml=float(counts[lesion_id]) * voxel_ml, axial_diameter_mm=best,
            axial_slice=best_slice, mean_hu=float(values.mean()), std_hu=float(values.std()),
            small=bool(best < small_mm), bbox=tuple((s.start, s.stop) for s in box)))
    return out
