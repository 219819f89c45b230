"""Tiny LiTS- and 3D-IRCADb-shaped sources written by the tests (no real data needed)."""
from __future__ import annotations

import hashlib
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (8, 16, 16)  # z, y, x
LITS_SPACING = (0.75, 0.75, 2.0)
LITS_ORIGIN = (-12.0, 30.5, 100.0)
LITS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def tree_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``folder`` (plus each folder, as "dir")."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_nifti(arr: np.ndarray, path: Path, spacing=LITS_SPACING, origin=LITS_ORIGIN,
                direction=LITS_DIRECTION) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=str(path).endswith(".gz"))


def lits_label(seed: int, dtype=np.uint8) -> np.ndarray:
    """A liver block with one or two tumours."""
    lab = np.zeros(SHAPE, dtype=dtype)
    lab[1:7, 3:13, 2:12] = 1
    lab[2:4, 5:7, 4:6] = 2
    if seed % 2:
        lab[5:6, 9:11, 8:10] = 2
    return lab


def lits_volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, SHAPE).astype(np.int16)


def make_lits(root: Path, *, batches: bool = True, tests: int = 1) -> Path:
    """A LiTS-shaped source: cases 0..3 (two batch folders or one folder), .nii and .nii.gz mixed,
    segmentation-2 stored as float32, and ``tests`` test volumes at the top."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(4):
        folder = root / (f"Training Batch {1 + n // 2}" if batches else "")
        ext = ".nii.gz" if n == 1 else ".nii"
        write_nifti(lits_volume(n), folder / f"volume-{n}{ext}")
        write_nifti(lits_label(n, np.float32 if n == 2 else np.uint8), folder / f"segmentation-{n}{ext}")
    for n in range(tests):
        write_nifti(lits_volume(100 + n), root / f"test-volume-{n}.nii")
    return root


# ------------------------------------------------------------------------------------------------------
# DICOM

IRCADB_SPACING = (0.8, 0.6, 2.5)  # x, y, z: anisotropic
IRCADB_ORIGIN = (-100.5, 20.25, 300.0)
_C, _S = math.cos(0.3), math.sin(0.3)
IRCADB_DIRECTION = (1.0, 0.0, 0.0, 0.0, _C, -_S, 0.0, _S, _C)  # gantry-tilt-like rotation about x
IRCADB_SHAPE = (6, 12, 16)


def write_dicom_series(arr: np.ndarray, folder: Path, series_uid: str, *, hu: bool = True,
                       spacing=IRCADB_SPACING, origin=IRCADB_ORIGIN, direction=IRCADB_DIRECTION) -> None:
    """One DICOM file per slice (``image_0``, ``image_1``, ..., no extension) with position, orientation,
    spacing, series UID and modality; ``hu``: stored with rescale intercept -1024 so HU round-trip."""
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.KeepOriginalImageUIDOn()
    d = direction
    for i in range(img.GetDepth()):
        s = img[:, :, i]
        tags = [("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"), ("0020|000e", series_uid),
                ("0008|0018", f"{series_uid}.{i + 1}"), ("0020|0013", str(i + 1)),
                ("0020|0037", "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
                ("0020|0032", "\\".join(f"{v:.10g}" for v in img.TransformIndexToPhysicalPoint((0, 0, i)))),
                ("0028|0030", f"{spacing[1]:.10g}\\{spacing[0]:.10g}"), ("0018|0050", f"{spacing[2]:.10g}")]
        if hu:
            tags += [("0028|1052", "-1024"), ("0028|1053", "1")]
        for k, v in tags:
            s.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"image_{i}"))
        writer.Execute(s)


def ircadb_masks() -> dict[str, np.ndarray]:
    """liver, two tumour masks (livertumor01 with two components) and a cyst, as 0/255 uint8."""
    z, y, x = IRCADB_SHAPE
    liver = np.zeros(IRCADB_SHAPE, np.uint8)
    liver[1:5, 2:10, 2:13] = 255
    t1 = np.zeros_like(liver)
    t1[2:4, 3:5, 3:5] = 255
    t1[4, 8, 11] = 255  # a second, detached component
    t1[1, 8, 12] = 255  # partly outside the liver mask: the liver label must still cover it
    liver[1, 8, 12] = 0
    t2 = np.zeros_like(liver)
    t2[2:4, 6:8, 8:11] = 255
    cyst = np.zeros_like(liver)
    cyst[3:5, 3:5, 9:12] = 255
    bone = np.zeros_like(liver)
    bone[:, 10:12, 0:2] = 255
    return {"liver": liver, "livertumor01": t1, "livertumor02": t2, "liverkyst": cyst, "bone": bone}


def ircadb_ct(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1200, IRCADB_SHAPE).astype(np.int16)


def make_ircadb_patient(patient: Path, *, zipped: bool = False, seed: int = 0, masks: dict | None = None,
                        masks_with_intercept: bool = False) -> Path:
    """``patient``/PATIENT_DICOM and MASKS_DICOM/<structure> (or the two as zip files holding the folders).

    ``masks_with_intercept``: the masks carry the CT's rescale intercept (-1024), so background reads -1024.
    """
    patient.mkdir(parents=True, exist_ok=True)
    uid = f"1.2.826.0.1.3680043.2.1125.{seed + 10}"
    write_dicom_series(ircadb_ct(seed), patient / "PATIENT_DICOM", uid + ".1")
    for k, (name, arr) in enumerate((masks or ircadb_masks()).items()):
        # with the intercept, the stored values are still 0/255, read back as -1024/-769
        values = arr.astype(np.int16) - (1024 if masks_with_intercept else 0)
        write_dicom_series(values, patient / "MASKS_DICOM" / name, f"{uid}.{k + 2}", hu=masks_with_intercept)
    (patient / "LABELLED_DICOM").mkdir()
    if zipped:
        for sub in ("PATIENT_DICOM", "MASKS_DICOM"):
            with zipfile.ZipFile(patient / f"{sub}.zip", "w") as z:
                for f in sorted((patient / sub).rglob("*")):
                    z.write(f, f.relative_to(patient).as_posix())
            shutil.rmtree(patient / sub)
    return patient


def reference_ct(patient_dicom: Path) -> sitk.Image:
    """The series read straight with SimpleITK (the geometry the converter must keep)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(patient_dicom)))
    return reader.Execute()

