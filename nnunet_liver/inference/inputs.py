"""Input CTs of ``nnunet-liver predict``: files, DICOM series, folders of cases, and the checks that a volume is a CT.

A case is an image file (NIfTI, NRRD, MetaImage) or a folder holding one DICOM series. A folder that holds
DICOM files itself is one case; any other folder is a batch: its image files and its sub-folders (DICOM
series) are the cases.

Every problem is an :class:`InputError` naming the file or folder and what is wrong with it, raised before
anything is written: unreadable, empty, truncated or corrupt files (files go through the shared reader
:mod:`nnunet_liver.data.images`), several DICOM series without a choice, slices that do not make one volume,
DICOM without the CT modality or without the rescale tags that give Hounsfield units, 2D and 4D images,
zero-length axes, direction matrices that are not orthonormal, NaN or infinite voxels, and intensities that
cannot be Hounsfield units (an overflowing rescale, a label map, no air).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_liver.data.images import ImageError, ct_array, itk_message, quiet_itk

__all__ = [
    "IMAGE_ENDINGS",
    "CTVolume",
    "CaseInput",
    "InputError",
    "case_name",
    "check_ct",
    "discover_cases",
    "dicom_series",
    "read_case",
    "select_part",
]

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
ORTHONORMAL_TOL = 1e-3

_TAG_MODALITY = "0008|0060"
_TAG_DESCRIPTION = "0008|103e"
_TAG_INTERCEPT = "0028|1052"
_TAG_SLOPE = "0028|1053"
_TAG_POSITION = "0020|0032"
_TAG_ORIENTATION = "0020|0037"


class InputError(ImageError):
    """A case that cannot be read as a CT; the message names the file or folder and the problem."""


@dataclass(frozen=True)
class CaseInput:
    """One case to predict.

    Attributes:
        name: case name (output sub-folder in batch mode): the file name without its ending and without
            nnU-Net's channel suffix ``_0000``, or the DICOM folder's name.
        path: the image file or DICOM folder.
        kind: "file" or "dicom".
        series: DICOM series instance UID to read (None: the folder's only series).
    """

    name: str
    path: Path
    kind: str
    series: str | None = None


@dataclass
class CTVolume:
    """A CT read and checked.

    Attributes:
        image: the SimpleITK image as read (its geometry is the output's geometry).
        array: (z, y, x) float32 Hounsfield units (SimpleITK's array order).
        source: where it came from.
        info: what the report records about the input (format, DICOM series, ...).
        read_seconds: time taken to read and check it.
    """

    image: object  # SimpleITK.Image; not annotated so that this module imports without SimpleITK loaded
    array: np.ndarray
    source: CaseInput
    info: dict = field(default_factory=dict)
    read_seconds: float = 0.0


def _strip_ending(name: str) -> str | None:
    low = name.lower()
    for ending in IMAGE_ENDINGS:
        if low.endswith(ending):
            return name[: -len(ending)]
    return None


def case_name(path: str | os.PathLike) -> str:
    """``liver_024_0000.nii.gz`` -> ``liver_024``; a folder keeps its name."""
    path = Path(path)
    stem = _strip_ending(path.name)
    if stem is None:
        return path.name
    return re.sub(r"_0000$", "", stem) or stem


def _has_dicom_series(folder: Path) -> list[str]:
    import SimpleITK as sitk

    try:
        with quiet_itk():  # "No Series were found" on stderr for every folder of files
            return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []


def discover_cases(path: str | os.PathLike, series: str | None = None) -> tuple[list[CaseInput], bool, list[str]]:
    """The cases of an input path.

    Args:
        path: an image file, a DICOM series folder, or a folder of cases.
        series: DICOM series UID (single DICOM folder only).

    Returns:
        (cases, batch, notes): ``batch`` is True for a folder of cases; ``notes`` lists what was ignored.

    Raises:
        InputError: the path does not exist, is an unsupported file, or an empty folder; ``series`` given for
            a batch.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        if _strip_ending(path.name) is None:
            raise InputError(f"{path}: unsupported file type (expected {', '.join(IMAGE_ENDINGS)} or a DICOM folder)")
        return [CaseInput(case_name(path), path, "file", series)], False, []
    if _has_dicom_series(path):
        return [CaseInput(path.name, path, "dicom", series)], False, []
    if series is not None:
        raise InputError(f"{path}: --series applies to a DICOM series folder, but this folder holds no DICOM files")
    cases, ignored = [], []
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            cases.append(CaseInput(child.name, child, "dicom"))
        elif _strip_ending(child.name) is not None:
            cases.append(CaseInput(case_name(child), child, "file"))
        else:
            ignored.append(child.name)
    if not cases:
        raise InputError(f"{path}: no image files ({', '.join(IMAGE_ENDINGS)}) and no DICOM series folders")
    notes = [f"ignored {len(ignored)} file(s) of other types in {path}: {', '.join(ignored[:5])}"
             f"{', ...' if len(ignored) > 5 else ''}"] if ignored else []
    return cases, True, notes


def select_part(cases: list[CaseInput], num_parts: int, part_id: int) -> list[CaseInput]:
    """The cases of part ``part_id`` (0 .. ``num_parts`` - 1): nnU-Net's ``-num_parts/-part_id`` split, every
    ``num_parts``-th case name from ``part_id`` on, over the sorted case names. Each name is in exactly one part
    (cases sharing a name stay together, so the batch reports the clash), and the assignment depends on the
    list of names only, so machines that list the same folder agree.

    Raises:
        InputError: ``num_parts`` < 1 or ``part_id`` outside 0 .. ``num_parts`` - 1.
    """
    if num_parts < 1:
        raise InputError(f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise InputError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts} (counting from 0, as "
                         f"nnU-Net's -part_id), got {part_id}")
    names = sorted({c.name for c in cases})
    mine = set(names[part_id::num_parts])
    return [c for c in sorted(cases, key=lambda c: (c.name, str(c.path))) if c.name in mine]


def dicom_series(folder: str | os.PathLike) -> list[dict]:
    """The DICOM series of a folder: uid, description, modality and number of files of each."""
    import SimpleITK as sitk

    folder = Path(folder)
    out = []
    for uid in _has_dicom_series(folder):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        meta = _file_tags(files[0]) if files else {}
        out.append({"uid": uid, "description": meta.get(_TAG_DESCRIPTION, "").strip(),
                    "modality": meta.get(_TAG_MODALITY, "").strip(), "n_files": len(files)})
    return out


def _file_tags(filename: str) -> dict[str, str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(filename)
    reader.LoadPrivateTagsOn()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}


def _read_dicom(case: CaseInput):
    import SimpleITK as sitk

    folder = case.path
    series = dicom_series(folder)
    if not series:
        raise InputError(f"{folder}: no DICOM series in this folder")
    if case.series is not None:
        chosen = [s for s in series if s["uid"] == case.series]
        if not chosen:
            raise InputError(f"{folder}: no DICOM series {case.series}; it holds: "
                             + "; ".join(_describe_series(s) for s in series))
        chosen = chosen[0]
    elif len(series) > 1:
        raise InputError(f"{folder}: {len(series)} DICOM series (mixed series); choose one with --series UID: "
                         + "; ".join(_describe_series(s) for s in series))
    else:
        chosen = series[0]
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), chosen["uid"])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOn()
    where = f"{folder} (series {chosen['uid']})"
    try:
        with quiet_itk():
            image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{where}: cannot read the DICOM series ({itk_message(e)})") from None
    n = len(files)

    def tag(i: int, key: str) -> str | None:
        return reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else None

    modalities = {tag(i, _TAG_MODALITY) for i in range(n)}
    if modalities != {"CT"}:
        found = ", ".join(sorted(str(m) for m in modalities))
        raise InputError(f"{where}: modality {found}, not CT (DICOM tag 0008,0060)")
    lacking = [os.path.basename(files[i]) for i in range(n)
               if tag(i, _TAG_INTERCEPT) is None or tag(i, _TAG_SLOPE) is None]
    if lacking:
        raise InputError(f"{where}: {len(lacking)} of {n} file(s) lack RescaleSlope/RescaleIntercept "
                         f"(0028,1053 / 0028,1052), so the stored values are not Hounsfield units: "
                         f"{', '.join(lacking[:3])}{', ...' if len(lacking) > 3 else ''}")
    orientations = {tag(i, _TAG_ORIENTATION) for i in range(n)}
    if len(orientations) > 1:
        raise InputError(f"{where}: the slices have {len(orientations)} different orientations "
                         f"(ImageOrientationPatient): mixed series")
    if n > 2 and None not in orientations:
        _check_slice_positions(where, [tag(i, _TAG_POSITION) for i in range(n)], orientations.pop())
    rescale = sorted({(tag(i, _TAG_SLOPE), tag(i, _TAG_INTERCEPT)) for i in range(n)})
    info = {"format": "DICOM", "series_uid": chosen["uid"], "series_description": chosen["description"],
            "n_files": n, "rescale": "; ".join(f"slope {s} intercept {b}" for s, b in rescale[:3])}
    return image, info


def _describe_series(s: dict) -> str:
    desc = f" '{s['description']}'" if s["description"] else ""
    return f"{s['uid']} ({s['modality'] or 'no modality'}{desc}, {s['n_files']} files)"


def _check_slice_positions(where: str, positions: list[str | None], orientation: str) -> None:
    """Equal steps between slices along their normal: a gap or a duplicate means missing or mixed slices."""
    if any(p is None for p in positions):
        return
    try:
        pos = np.array([[float(v) for v in p.split("\\")] for p in positions])
        row_col = np.array([float(v) for v in orientation.split("\\")]).reshape(2, 3)
    except ValueError:
        return
    normal = np.cross(row_col[0], row_col[1])
    steps = np.diff(np.sort(pos @ normal))
    if steps.size == 0:
        return
    if steps.min() < 1e-3:
        raise InputError(f"{where}: two slices at the same position: mixed series or duplicate files")
    if steps.max() - steps.min() > max(0.01 * np.median(steps), 1e-2):
        raise InputError(f"{where}: slice spacing varies from {steps.min():.3g} to {steps.max():.3g} mm (missing "
                         f"slices or mixed series); one volume needs equally spaced slices")


def check_ct(image, where: str, array: np.ndarray | None = None, *, rescale: str = "") -> np.ndarray:
    """Check that a SimpleITK image is a 3D CT volume in Hounsfield units; return its (z, y, x) float32 array.

    Args:
        rescale: the DICOM rescale tags, named when the intensities overflow.

    Raises:
        InputError: 2D or 4D image, several components per voxel, a zero-length axis or a single slice, bad
            spacing, a direction matrix that is not orthonormal, or voxels that cannot be HU (see
            :func:`nnunet_liver.data.images.ct_array`).
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{where}: {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector "
                         f"image), not a CT")
    if image.GetDimension() != 3:
        raise InputError(f"{where}: a {image.GetDimension()}D image (size "
                         f"{' x '.join(map(str, image.GetSize()))}); a CT volume is 3D")
    size = image.GetSize()
    if min(size) == 0:
        raise InputError(f"{where}: a zero-length axis (size {' x '.join(map(str, size))}): no voxels")
    if min(size) < 2:
        raise InputError(f"{where}: size {size} is a single slice (2D image); a CT volume needs several slices")
    spacing = np.asarray(image.GetSpacing())
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise InputError(f"{where}: invalid voxel spacing {tuple(spacing)}")
    d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1) > ORTHONORMAL_TOL \
            or not np.allclose(d.T @ d, np.eye(3), atol=ORTHONORMAL_TOL):
        raise InputError(f"{where}: direction matrix {tuple(round(v, 4) for v in d.ravel())} is not orthonormal "
                         f"(skewed or degenerate orientation metadata)")
    try:
        return ct_array(array if array is not None else image, where, rescale=rescale)
    except ImageError as e:
        raise InputError(str(e)) from None


def read_case(case: CaseInput) -> CTVolume:
    """Read and check one case.

    Raises:
        InputError: see :func:`check_ct` and the DICOM checks in the module docstring.
    """
    import time

    from nnunet_liver.data.images import read_image

    t0 = time.perf_counter()
    if case.kind == "dicom":
        image, info = _read_dicom(case)
        where = f"{case.path} (series {info['series_uid']})"
    else:
        try:
            image = read_image(case.path, "CT")
        except ImageError as e:
            raise InputError(str(e)) from None
        info = {"format": _format_name(case.path)}
        where = str(case.path)
    array = check_ct(image, where, rescale=info.get("rescale", ""))
    info.update(size=list(image.GetSize()), spacing=list(image.GetSpacing()), origin=list(image.GetOrigin()),
                direction=list(image.GetDirection()), pixel_type=image.GetPixelIDTypeAsString())
    return CTVolume(image=image, array=array, source=case, info=info, read_seconds=time.perf_counter() - t0)


def _format_name(path: Path) -> str:
    low = path.name.lower()
    if low.endswith((".nii.gz", ".nii")):
        return "NIfTI"
    if low.endswith((".nrrd", ".nhdr")):
        return "NRRD"
    return "MetaImage"
