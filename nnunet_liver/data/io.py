"""Safe output folders and nnU-Net raw data set helpers shared by every writer in this package.

Rules: raw inputs are never modified; outputs are built under a hidden temporary name beside their
final place and renamed into place only when complete; an existing result is replaced only when the
caller says so (``overwrite=True``).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputExistsError(FileExistsError):
    """Raised when an output exists and overwriting was not requested."""


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ValueError(f"dataset name {name!r} must be letters, digits, '_' or '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def datasets_with_id(root: str | os.PathLike, dataset_id: int) -> list[Path]:
    """Existing ``DatasetXXX_*`` folders in ``root`` with this id (hidden temporary folders excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        m = DATASET_RE.match(p.name)
        if m and int(m.group(1)) == int(dataset_id) and p.is_dir():
            found.append(p)
    return found


def dataset_output_folder(raw_root: str | os.PathLike, dataset_id: int, name: str) -> Path:
    """``<raw_root>/DatasetXXX_<name>``; refuses an id already used by a data set with another name."""
    raw_root = Path(raw_root)
    final = raw_root / dataset_folder_name(dataset_id, name)
    others = [p for p in datasets_with_id(raw_root, dataset_id) if p.name != final.name]
    if others:
        raise OutputExistsError(f"dataset id {dataset_id} is already used by {others[0]} "
                                f"(choose another -d, or remove that folder)")
    return final


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be created in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"{path}: not writable ({e.strerror or e})") from e
    return path


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` atomically.

    On an exception (or Ctrl-C) the temporary folder is removed and ``final`` is untouched, so an
    interrupted run never leaves a result that looks complete.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} exists (use --overwrite to replace it)")
    parent = check_writable_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_file(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`staged_dir` for one file: write to the yielded path, renamed into place on success."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} exists (use --overwrite to replace it)")
    check_writable_dir(final.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.partial-", dir=final.parent, suffix=final.suffix)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result should not be
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_image(array: np.ndarray, path: str | os.PathLike, spacing, origin=None, direction=None) -> None:
    """Write a (z, y, x) array with SimpleITK geometry (spacing/origin in x, y, z order)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing([float(s) for s in spacing])
    if origin is not None:
        img.SetOrigin([float(o) for o in origin])
    if direction is not None:
        img.SetDirection([float(d) for d in direction])
    sitk.WriteImage(img, str(path), useCompression=True)


def write_dataset_json(folder: str | os.PathLike, *, num_training: int, name: str, description: str,
                       extra: dict | None = None) -> None:
    """dataset.json for a liver CT data set: one CT channel, labels 0 background, 1 liver, 2 tumour."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(
        str(folder),
        channel_names={0: "CT"},
        labels={"background": 0, "liver": 1, "tumor": 2},
        num_training_cases=num_training,
        file_ending=".nii.gz",
        dataset_name=name,
        description=description,
        license="see description",
        converted_by="nnunet-liver",
        **(extra or {}),
    )


def copy_case(image, label, folder: str | os.PathLike, case_id: str, split: str = "train") -> None:
    """Write one case into an nnU-Net raw folder, geometry (spacing, origin, direction) unchanged.

    Args:
        image, label: paths or SimpleITK images; ``label`` may be None for unlabelled test cases.
            Labels are stored as uint8 (some sources store them as float); non-integer values are refused.
        split: "train" (imagesTr/labelsTr) or "test" (imagesTs/labelsTs).
    """
    import SimpleITK as sitk

    folder = Path(folder)
    img_dir, lbl_dir = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}[split]
    img = sitk.ReadImage(str(image)) if not isinstance(image, sitk.Image) else image
    (folder / img_dir).mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(folder / img_dir / f"{case_id}_0000.nii.gz"), useCompression=True)
    if label is None:
        return
    lbl = sitk.ReadImage(str(label)) if not isinstance(label, sitk.Image) else label
    arr = sitk.GetArrayViewFromImage(lbl)
    if not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{label}: label image has non-integer values")
    if lbl.GetSize() != img.GetSize():
        raise ValueError(f"{label}: shape {lbl.GetSize()} differs from its image {img.GetSize()}")
    for what, a, b in (("spacing", lbl.GetSpacing(), img.GetSpacing()), ("origin", lbl.GetOrigin(), img.GetOrigin()),
                       ("direction", lbl.GetDirection(), img.GetDirection())):
        if not np.allclose(a, b, rtol=1e-4, atol=1e-3):
            raise ValueError(f"{label}: {what} {tuple(round(v, 4) for v in a)} differs from its image's "
                             f"{tuple(round(v, 4) for v in b)}")
    out = sitk.Cast(lbl, sitk.sitkUInt8)
    out.CopyInformation(img)  # removes float noise only: differences above were refused
    (folder / lbl_dir).mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(folder / lbl_dir / f"{case_id}.nii.gz"), useCompression=True)


def json_safe(value):
    """``value`` ready for ``json.dumps(..., allow_nan=False)``: NaN/inf -> None (null = undefined), numpy
    scalars -> Python numbers, paths -> strings, tuples -> lists, dict keys -> strings; recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
