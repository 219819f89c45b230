"""Bad input files as a user meets them, made from the real CTs the repository carries.

Each builder writes one damaged file and returns ``(path, expected message part)``; ``test_bad_inputs`` runs
every command on them (the README's table of bad inputs comes from those runs).
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from nnunet_liver.data.real_ct import CRLM_CT, CRLM_SEG, TOTALSEG_CT, TOTALSEG_LIVER

FILE_KINDS = ("nan", "inf", "truncated", "truncated_nii", "corrupt_gz", "empty", "zero_axis", "4d", "swapped")


def _write(arr: np.ndarray, path: Path, like: sitk.Image) -> None:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(like)
    sitk.WriteImage(img, str(path), useCompression=path.name.endswith(".gz"))


def _nifti(arr_xyz: np.ndarray, path: Path) -> None:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(arr_xyz, affine), str(path))


def bad_file(kind: str, folder: Path, *, role: str = "ct", name: str = "case") -> tuple[Path, str]:
    """One damaged image file in ``folder``.

    Args:
        kind: one of :data:`FILE_KINDS`.
        role: "ct" (built from the abdominal CT) or "label" (from its liver mask; "swapped" is then the CT).
        name: file name without ending.

    Returns:
        (path, a part of the message every command must print).
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = TOTALSEG_CT if role == "ct" else TOTALSEG_LIVER
    image = sitk.ReadImage(str(source))
    arr = sitk.GetArrayFromImage(image)
    path = folder / f"{name}.nii.gz"
    if kind == "nan":
        a = arr.astype(np.float32)
        a[10:20] = np.nan
        _write(a, path, image)
        return path, "NaN"
    if kind == "inf":
        a = arr.astype(np.float32)
        a[5] = np.inf
        _write(a, path, image)
        return path, "infinite"
    if kind == "truncated":
        real = CRLM_CT if role == "ct" else source
        data = real.read_bytes()
        path.write_bytes(data[:5000] if role == "ct" else data[: len(data) // 2])
        return path, "truncated"
    if kind == "truncated_nii":
        path = folder / f"{name}.nii"
        with gzip.open(source, "rb") as f:
            data = f.read()
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated"
    if kind == "corrupt_gz":
        a = arr.astype(np.float32) if role == "ct" else arr
        _write(a, path, image)
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(range(64))
        path.write_bytes(bytes(data))
        return path, "corrupt"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty file"
    if kind == "zero_axis":
        _nifti(np.zeros((122, 101, 0), np.int16), path)
        return path, "zero-length axis"
    if kind == "4d":
        _nifti(np.stack([np.transpose(arr)] * 2, axis=-1), path)
        return path, "4D image"
    if kind == "swapped":
        shutil.copy(TOTALSEG_LIVER if role == "ct" else TOTALSEG_CT, path)
        return path, "label map" if role == "ct" else "a CT given as a label map"
    raise ValueError(kind)


def matching_label(kind: str, folder: Path, name: str) -> Path:
    """A valid label map with the grid of ``bad_file(kind, role="ct")`` (a converter pairs them)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    shutil.copy(CRLM_SEG if kind == "truncated" else TOTALSEG_LIVER, path)
    return path


def ct_image() -> sitk.Image:
    return sitk.ReadImage(str(TOTALSEG_CT))


def set_rescale(folder: Path, slope: str, intercept: str) -> None:
    """Rewrite RescaleSlope/RescaleIntercept of every DICOM file in ``folder``."""
    import pydicom

    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(f)
