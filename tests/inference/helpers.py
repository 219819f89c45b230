"""Test inputs for ``nnunet-liver predict``: DICOM series written with SimpleITK, rotated copies, broken files."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# GDCM adds RescaleIntercept 0 / RescaleSlope 1 to CT (and secondary capture) files by itself; MR image
# storage has no rescale tags, so a "CT" file without them is written with that storage class
NO_RESCALE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


_FRESH = False


def write_dicom_series(image: sitk.Image, folder: Path, *, modality: str = "CT", rescale: bool = True,
                       series_uid: str | None = None, description: str = "phantom", skip: tuple[int, ...] = (),
                       prefix: str = "") -> str:
    """Write a 3D image as one DICOM file per slice (geometry in the position/orientation tags).

    With ``rescale`` the files carry RescaleIntercept -1024 / RescaleSlope 1: GDCM stores HU + 1024 and
    applies the tags when reading back; without, the tags are absent. Returns the series UID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if not rescale and not _FRESH:
        # GDCM keeps rescale state across writes within a process and would add the tags again: write in a
        # fresh interpreter
        import subprocess
        import sys

        src = folder / ".source.nrrd"
        sitk.WriteImage(image, str(src))
        code = ("import sys, SimpleITK as sitk; import tests.inference.helpers as h; h._FRESH = True; "
                f"print(h.write_dicom_series(sitk.ReadImage({str(src)!r}), h.Path({str(folder)!r}), "
                f"modality={modality!r}, rescale=False, series_uid={series_uid!r}, description={description!r}, "
                f"skip={tuple(skip)!r}, prefix={prefix!r}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2])
        src.unlink()
        return out.stdout.strip().splitlines()[-1]
    uid = series_uid or f"1.2.826.0.1.3680043.2.1125.{int(time.time() * 1e6) % 10**12}.{np.random.randint(10**6)}"
    hu = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (direction[0], direction[3], direction[6],
                                                  direction[1], direction[4], direction[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        if k in skip:
            continue
        sl = hu[:, :, k]
        position = "\\".join(f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        tags = {"0008|0060": modality, "0020|000e": uid, "0020|000d": uid + ".1", "0008|103e": description,
                "0020|0032": position, "0020|0037": orientation, "0020|0013": str(k + 1),
                "0008|0016": CT_STORAGE if rescale else NO_RESCALE_STORAGE, "0008|0018": f"{uid}.{k + 1}",
                "0018|0050": f"{image.GetSpacing()[2]:.6g}"}
        if rescale:
            tags.update({"0028|1052": "-1024", "0028|1053": "1", "0028|1054": "HU"})
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k:04d}.dcm"))
        writer.Execute(sl)
    return uid


def rotated_copy(path: Path, out: Path, degrees: float = 20.0, origin=(123.4, -56.7, 890.1)) -> sitk.Image:
    """The image with a non-identity direction (patient LPS axes flipped in x and y, rotated about z) and
    another origin, voxels unchanged."""
    img = sitk.ReadImage(str(path))
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([-1, -1, 1])
    img.SetDirection(rot.ravel().tolist())
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(out))
    return sitk.ReadImage(str(out))


def lesion_region(image_path: Path, label_path: Path, out_image: Path, out_label: Path | None = None,
                  tumour_label: int = 2) -> sitk.Image:
    """Crop a phantom to its lesions' slices and the in-plane columns from its lesions to the nearer image
    border (so air stays in the crop). A smoke-trained model marks specks everywhere, and every speck is
    classified and drawn: a smaller volume bounds a test's time whatever the model does."""
    image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
    where = np.argwhere(sitk.GetArrayViewFromImage(label) == tumour_label)
    assert where.size, f"{label_path} has no lesion"
    (z0, _, x0), (z1, _, x1) = where.min(axis=0), where.max(axis=0) + 1
    width = image.GetWidth()
    x0, x1 = (0, min(int(x1) + 3, width)) if x0 < width - x1 else (max(int(x0) - 3, 0), width)
    z0, z1 = max(int(z0) - 1, 0), min(int(z1) + 1, image.GetDepth())
    index, size = [x0, 0, z0], [x1 - x0, image.GetHeight(), z1 - z0]
    crop = sitk.RegionOfInterest(image, size, index)
    assert sitk.GetArrayViewFromImage(crop).min() <= -500  # still a CT with air
    sitk.WriteImage(crop, str(out_image))
    if out_label is not None:
        sitk.WriteImage(sitk.RegionOfInterest(label, size, index), str(out_label))
    return sitk.ReadImage(str(out_image))
