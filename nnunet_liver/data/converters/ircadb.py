"""3D-IRCADb-01 (IRCAD, 20 patients, DICOM) to an nnU-Net raw data set with a lesion table.

Source: patient folders ``3Dircadb1.N`` with ``PATIENT_DICOM`` (CT slices ``image_0``, ``image_1``, ... without
extension) and ``MASKS_DICOM/<structure>/`` (one series per structure), either as folders or as
``PATIENT_DICOM.zip`` / ``MASKS_DICOM.zip`` holding those folders. Output (``<raw>/Dataset502_3DIRCADb``)::

    imagesTr/ircadb_001_0000.nii.gz   CT in HU, DICOM geometry (spacing, origin, direction) kept
    labelsTr/ircadb_001.nii.gz        0 background, 1 liver (liver + lesion masks), 2 tumour
    lesions.csv                       one row per connected component of each tumour and cyst mask
    case_mapping.json, dataset.json

Tumour masks are malignant (3D-IRCADb's tumours are mostly metastases and HCC), cysts benign. Cysts are
labelled liver (1) unless ``cysts_as_tumour``; they are always listed in ``lesions.csv``.
"""
from __future__ import annotations

import csv
import os
import re
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from nnunet_liver.data.converters import (
    CaseJob,
    ConversionError,
    ConversionResult,
    check_image_values,
    check_not_inside,
    fingerprint,
    geometry_difference,
    output_folder,
    write_cases,
)
from nnunet_liver.data.io import staged_file

KIND = "convert ircadb"
PATIENT_RE = re.compile(r"^3Dircadb1\.(\d+)$")
LIVER_RE = re.compile(r"^liver$", re.IGNORECASE)
TUMOUR_RE = re.compile(r"^liver[ _-]?tumou?rs?[ _-]?\d*$", re.IGNORECASE)
CYST_RE = re.compile(r"^liver[ _-]?(?:cyst|kyst|kyste)s?[ _-]?\d*$", re.IGNORECASE)
LESION_COLUMNS = (
    "case_id", "split", "lesion_id", "mask", "mask_component", "kind", "label", "segmentation_label",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "centroid_z_vox", "centroid_y_vox", "centroid_x_vox",
    "volume_ml", "voxels",
)
MALIGNANCY = {"tumour": "malignant", "cyst": "benign"}


def case_id(number: int) -> str:
    return f"ircadb_{number:03d}"


def structure_kind(name: str) -> str | None:
    """"liver", "tumour", "cyst" or None (vessels, bones, other organs) for a MASKS_DICOM folder name."""
    if LIVER_RE.match(name):
        return "liver"
    if TUMOUR_RE.match(name):
        return "tumour"
    if CYST_RE.match(name):
        return "cyst"
    return None


# ------------------------------------------------------------------------------------------------------
# Layout


def find_patients(source: str | os.PathLike) -> dict[int, Path]:
    """Patient number -> ``3Dircadb1.N`` folder, found at any depth below ``source`` (or ``source`` itself)."""
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: not a folder")
    found: dict[int, Path] = {}
    zips = []
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        m = PATIENT_RE.match(here.name)
        if m:
            n = int(m.group(1))
            if n in found:
                raise ConversionError(f"{here}: patient {n} found twice (also {found[n]})")
            found[n] = here
            dirnames[:] = []  # a patient's own folders are read by the converter
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        zips += [f for f in filenames if PATIENT_RE.match(f[:-4]) and f.endswith(".zip")]
    if not found:
        hint = f" (unpack {', '.join(sorted(zips)[:3])} first)" if zips else ""
        raise ConversionError(f"{source}: no 3D-IRCADb patient folders (3Dircadb1.N with PATIENT_DICOM and "
                              f"MASKS_DICOM) in it or its sub-folders{hint}")
    return found


def _folder_or_zip(patient: Path, name: str) -> Path:
    if (patient / name).is_dir():
        return patient / name
    if (patient / f"{name}.zip").is_file():
        return patient / f"{name}.zip"
    raise ConversionError(f"{patient}: neither {name}/ nor {name}.zip found (unknown layout)")


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise ConversionError(f"{path}: cannot read the zip file ({e})") from None


def _zip_root(names: list[str], folder: str) -> str:
    """Prefix inside a zip under which ``folder``'s content lies ("PATIENT_DICOM/" or "")."""
    tops = {PurePosixPath(n).parts[0] for n in names if n.strip("/")}
    return f"{folder}/" if folder in tops else ""


def list_structures(masks: Path) -> dict[str, str]:
    """Structure name -> kind for the structures the converter uses (liver, tumour, cyst masks)."""
    if masks.is_dir():
        names = [p.name for p in masks.iterdir() if p.is_dir() and not p.name.startswith(".")]
    else:
        entries = _zip_names(masks)
        root = _zip_root(entries, "MASKS_DICOM")
        names = {PurePosixPath(n[len(root):]).parts[0] for n in entries
                 if n.startswith(root) and len(PurePosixPath(n[len(root):]).parts) > 1}
    used = {n: structure_kind(n) for n in sorted(names)}
    used = {n: k for n, k in used.items() if k is not None}
    if "liver" not in used.values():
        raise ConversionError(f"{masks}: no 'liver' mask (structures: {', '.join(sorted(names)) or 'none'})")
    return used


def plan_cases(source: str | os.PathLike, *, cysts_as_tumour: bool = False) -> list[CaseJob]:
    """One job per patient; checks the layout (folders or zips, liver mask present) before writing."""
    source = Path(source)
    jobs = []
    for n, patient in sorted(find_patients(source).items()):
        image = _folder_or_zip(patient, "PATIENT_DICOM")
        masks = _folder_or_zip(patient, "MASKS_DICOM")
        if image.suffix == ".zip":
            _zip_names(image)
        structures = list_structures(masks)
        inputs = [f for p in (image, masks) for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
        jobs.append(CaseJob(
            case_id=case_id(n), split="train",
            fingerprint=fingerprint(inputs, source, {"cysts_as_tumour": cysts_as_tumour}),
            record={"patient": os.path.relpath(patient, source), "structures": structures},
            payload=dict(image=str(image), masks=str(masks), structures=structures,
                         cysts_as_tumour=cysts_as_tumour)))
    return jobs


def _extract(path: Path, folder: str, dest: Path, keep=lambda rel: True) -> Path:
    """Unpack ``folder``'s content from the zip ``path`` into ``dest`` (no member may leave it)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            root = _zip_root(names, folder)
            for n in names:
                if not n.startswith(root) or n.endswith("/") or not keep(n[len(root):]):
                    continue
                target = (dest / n).resolve()
                if dest.resolve() not in target.parents:
                    raise ConversionError(f"{path}: member {n!r} points outside the folder it is unpacked to")
                z.extract(n, dest)
    except (OSError, zipfile.BadZipFile) as e:
        raise ConversionError(f"{path}: cannot unpack ({e})") from None
    return dest / root if root else dest


# ------------------------------------------------------------------------------------------------------
# DICOM


def read_series(folder: Path, what: str):
    """The one DICOM series in ``folder``, slices sorted by position (GDCM).

    Refuses: no series, several series UIDs, files that are not part of the series (corrupt or not DICOM),
    slices without a position, and uneven slice positions (a missing or repeated slice).
    """
    import SimpleITK as sitk

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConversionError(f"{folder}: no files ({what})")
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints its own; ours below say more
    try:
        reader = sitk.ImageSeriesReader()
        uids = reader.GetGDCMSeriesIDs(str(folder))
        if not uids:
            raise ConversionError(f"{folder}: no DICOM series found ({what})")
        if len(uids) > 1:
            raise ConversionError(f"{folder}: mixed DICOM series, {len(uids)} series UIDs in one folder "
                                  f"({', '.join(uids[:3])}) ({what})")
        names = reader.GetGDCMSeriesFileNames(str(folder), uids[0])
        strays = sorted({p.name for p in files} - {Path(n).name for n in names})
        if strays:
            raise ConversionError(f"{folder}: {len(strays)} file(s) not readable as part of the series "
                                  f"(corrupt or not DICOM): {', '.join(strays[:5])} ({what})")
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()
        try:
            image = reader.Execute()
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise ConversionError(f"{folder}: cannot read the series ({lines[-1] if lines else e}) ({what})"
                                  ) from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if len(names) > 1:
        normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
        heights = []
        for i, name in enumerate(names):
            if not reader.HasMetaDataKey(i, "0020|0032"):
                raise ConversionError(f"{name}: no Image Position (Patient) (0020,0032) ({what})")
            heights.append(float(np.dot([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")],
                                        normal)))
        steps = np.diff(heights)
        step = float(np.median(steps))
        if step <= 0 or np.abs(steps - step).max() > 0.01 * step + 1e-3:
            raise ConversionError(f"{folder}: slice positions are not evenly spaced (steps from "
                                  f"{steps.min():.3f} to {steps.max():.3f} mm: a missing or repeated slice?) "
                                  f"({what})")
    return image


def _ct_image(image):
    """HU as int16 when every value is an integer in range (the usual case), else float32."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind in "iu" and arr.size and -32768 <= arr.min() and arr.max() <= 32767:
        return sitk.Cast(image, sitk.sitkInt16)
    if arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)) and np.abs(arr).max() <= 32767:
        return sitk.Cast(image, sitk.sitkInt16)
    return image if arr.dtype.kind == "f" else sitk.Cast(image, sitk.sitkFloat32)


def lesion_rows(case: str, image, label: np.ndarray, lesion_masks: list[tuple[str, str, np.ndarray]],
                lesion_labels: dict[str, int]) -> list[dict]:
    """One row per 3D connected component of each lesion mask (face connectivity, as the LiTS scorer).

    Args:
        image: SimpleITK image giving the geometry; ``label`` and the masks are its (z, y, x) arrays.
        lesion_masks: (mask name, kind, boolean mask).
        lesion_labels: kind -> the label value its voxels have in ``label``.
    """
    from scipy import ndimage

    tumour_components, _ = ndimage.label(label == 2)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    rows = []
    for mask_name, kind, mask in lesion_masks:
        components, n = ndimage.label(mask)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        counts = np.bincount(components.ravel(), minlength=n + 1)[1:]
        centroids = ndimage.center_of_mass(mask, components, index)
        for k, box, count, (cz, cy, cx) in zip(index, ndimage.find_objects(components), counts, centroids):
            lesion_id = ""
            if lesion_labels[kind] == 2:
                inside = components[box] == k
                lesion_id = int(tumour_components[box][inside][0])
            x, y, z = image.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), float(cz)))
            rows.append({
                "case_id": case, "split": "train", "lesion_id": lesion_id, "mask": mask_name,
                "mask_component": int(k), "kind": kind, "label": MALIGNANCY[kind],
                "segmentation_label": lesion_labels[kind], "centroid_x_mm": round(x, 3),
                "centroid_y_mm": round(y, 3), "centroid_z_mm": round(z, 3), "centroid_z_vox": round(float(cz), 3),
                "centroid_y_vox": round(float(cy), 3), "centroid_x_vox": round(float(cx), 3),
                "volume_ml": round(float(count) * voxel_ml, 5), "voxels": int(count),
            })
    return rows


def write_case(job: CaseJob, staging: Path) -> dict:
    """Read one patient's CT and masks, write image and label into ``staging``, return its lesion rows."""
    import SimpleITK as sitk

    from nnunet_liver.data.io import copy_case

    p = job.payload
    scratch = staging / "scratch"
    image_src, masks_src = Path(p["image"]), Path(p["masks"])
    structures: dict[str, str] = p["structures"]
    if image_src.suffix == ".zip":
        image_dir = _extract(image_src, "PATIENT_DICOM", scratch / "image")
    else:
        image_dir = image_src
    if masks_src.suffix == ".zip":
        masks_dir = _extract(masks_src, "MASKS_DICOM", scratch / "masks",
                             keep=lambda rel: PurePosixPath(rel).parts[0] in structures)
    else:
        masks_dir = masks_src
    ct = _ct_image(read_series(image_dir, f"CT of {job.case_id}"))
    check_image_values(ct, image_src)

    masks = {}
    for name in structures:
        folder = masks_dir / name
        mask = read_series(folder, f"mask {name} of {job.case_id}")
        problem = geometry_difference(mask, ct)
        if problem:
            raise ConversionError(f"{masks_src / name if masks_src.is_dir() else masks_src}: mask {name}: "
                                  f"{problem} of the CT series")
        values = sitk.GetArrayViewFromImage(mask)
        # foreground = above the background value, which is 0 unless a rescale intercept shifted it
        masks[name] = values > values.min() if values.size else values.astype(bool)

    kinds = {"tumour": 2, "cyst": 2 if p["cysts_as_tumour"] else 1}
    label = np.zeros(sitk.GetArrayViewFromImage(ct).shape, dtype=np.uint8)
    for name, kind in structures.items():
        label[masks[name]] = 1  # the liver includes its lesions
    for name, kind in structures.items():
        if kind != "liver" and kinds[kind] == 2:
            label[masks[name]] = 2
    lesion_masks = [(n, k, masks[n]) for n, k in structures.items() if k != "liver"]
    rows = lesion_rows(job.case_id, ct, label, lesion_masks, kinds)

    label_img = sitk.GetImageFromArray(label)
    label_img.CopyInformation(ct)
    copy_case(ct, label_img, staging, job.case_id, job.split)
    return {"lesions": rows, "geometry": {"size": list(ct.GetSize()), "spacing": list(ct.GetSpacing()),
                                          "origin": list(ct.GetOrigin()), "direction": list(ct.GetDirection())}}


def write_lesion_table(folder: Path, records: dict[str, dict]) -> None:
    rows = [r for cid in sorted(records) for r in records[cid].get("lesions", ())]
    with staged_file(folder / "lesions.csv", overwrite=True) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LESION_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def convert_ircadb(source: str | os.PathLike, raw_root: str | os.PathLike, *, dataset_id: int = 502,
                   name: str = "3DIRCADb", cysts_as_tumour: bool = False, overwrite: bool = False,
                   num_processes: int = 1, progress: bool = True) -> ConversionResult:
    """Convert 3D-IRCADb-01 into ``<raw_root>/DatasetXXX_<name>`` (resumes; see :func:`write_cases`).

    Raises:
        ConversionError: bad layout or data; the message names the file or folder.
        OutputExistsError: as :func:`nnunet_liver.data.converters.lits.convert_lits`.
    """
    source = Path(source)
    final = output_folder(raw_root, dataset_id, name)
    check_not_inside(final, source)
    jobs = plan_cases(source, cysts_as_tumour=cysts_as_tumour)
    cysts = "tumour (2)" if cysts_as_tumour else "liver (1)"
    return write_cases(
        final, jobs, write_case, kind=KIND,
        header={"source": str(source.resolve()), "cysts_as_tumour": cysts_as_tumour},
        dataset_json=dict(
            name=name,
            description=(f"3D-IRCADb-01 (IRCAD) converted by nnunet-liver from {source.name}: {len(jobs)} patients, "
                         f"CT in HU with the DICOM geometry. Labels 0 background, 1 liver (liver mask plus lesion "
                         f"masks), 2 tumour (tumour masks); cysts labelled {cysts}. lesions.csv lists every "
                         f"tumour (malignant) and cyst (benign) component. License: CC BY-NC-ND 3.0."),
            extra={"nnunet_liver": {"converter": "ircadb", "cysts_as_tumour": cysts_as_tumour}},
        ),
        finish=write_lesion_table, overwrite=overwrite, num_processes=num_processes, progress=progress)
