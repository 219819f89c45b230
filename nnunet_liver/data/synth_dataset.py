"""Write the synthetic liver-CT phantoms as a complete nnU-Net raw data set.

Layout (``<raw>/Dataset990_LiverPhantom``)::

    imagesTr/liver_000_0000.nii.gz   labelsTr/liver_000.nii.gz
    imagesTs/liver_024_0000.nii.gz   labelsTs/liver_024.nii.gz
    imagesTs_shifted/...             same test anatomy under shifted contrast/window conditions
    lesions.csv                      one row per lesion (joins on case_id + lesion_id = connected component)
    cases.csv                        scan conditions per case (phase, noise, blur, spacing, ...)
    dataset.json
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nnunet_liver.data.io import (
    dataset_output_folder,
    staged_dir,
    write_dataset_json,
    write_image,
)

LESION_COLUMNS = (
    "case_id", "split", "lesion_id", "label", "subtype", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "centroid_z_vox", "centroid_y_vox", "centroid_x_vox", "volume_ml", "diameter_mm", "contrast_hu",
)
CASE_COLUMNS = (
    "case_id", "split", "variant", "phase", "noise_sd", "blur_sigma_mm", "hu_offset",
    "spacing_x", "spacing_y", "spacing_z", "size_x", "size_y", "size_z", "n_lesions",
)


FOVS = ("abdomen", "liver")
#: margin around the liver's bounding box of a "liver" field of view, (in-plane, z) mm: enough body wall,
#: stomach, kidney, lung base and heart around the liver that the network learns where the liver ends. The z
#: margin is a setting (``SynthSettings.z_margin_mm``); this is its default.
LIVER_MARGIN_MM = (25.0, 30.0)


@dataclass(frozen=True)
class SynthSettings:
    num_train: int = 24
    num_test: int = 8
    size: int = 128
    seed: int = 0
    #: "abdomen": the whole abdominal field of view; "liver": cropped to the liver's box + LIVER_MARGIN_MM
    fov: str = "abdomen"
    #: "liver" field of view: mm kept above and below the liver, as far as the abdomen's grid reaches (above the
    #: liver it can end first, at the dome). LiTS scans hold far more than the default's
    #: 30 mm: with 30 mm every slice beyond the liver is in almost every training patch, and models trained
    #: briefly paint liver over all of them
    z_margin_mm: float = LIVER_MARGIN_MM[1]

    @property
    def liver_margin_mm(self) -> tuple[float, float] | None:
        return (LIVER_MARGIN_MM[0], float(self.z_margin_mm)) if self.fov == "liver" else None

    def validate(self) -> None:
        if self.fov not in FOVS:
            raise ValueError(f"--fov must be one of {', '.join(FOVS)}, got {self.fov!r}")
        if self.num_train < 1:
            raise ValueError(f"--num-train must be positive, got {self.num_train}")
        if self.num_test < 0:
            raise ValueError(f"--num-test must be zero or positive, got {self.num_test}")
        if not 32 <= self.size <= 512:
            raise ValueError(f"--size must be between 32 and 512 voxels, got {self.size}")
        if not 0 <= self.z_margin_mm <= 300:
            raise ValueError(f"--z-margin-mm must be between 0 and 300 mm, got {self.z_margin_mm:g}")


def case_id(index: int) -> str:
    return f"liver_{index:03d}"


def _write_case(folder: Path, index: int, split: str, settings: SynthSettings) -> tuple[list[dict], list[dict]]:
    """Generate and write one case; returns its lesion rows and case rows."""
    from nnunet_liver.data.phantoms import generate_case, generate_shifted

    cid = case_id(index)
    anatomy, cond, image = generate_case(settings.seed, index, settings.size, settings.liver_margin_mm)
    img_dir, lbl_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    write_image(image, folder / img_dir / f"{cid}_0000.nii.gz", anatomy.spacing)
    write_image(anatomy.label, folder / lbl_dir / f"{cid}.nii.gz", anatomy.spacing)
    variants = [("normal", cond)]
    if split == "test":
        _, shifted_cond, shifted = generate_shifted(settings.seed, index, settings.size, settings.liver_margin_mm)
        write_image(shifted, folder / "imagesTs_shifted" / f"{cid}_0000.nii.gz", anatomy.spacing)
        variants.append(("shifted", shifted_cond))

    lesions = []
    for les in anatomy.lesions:
        cz, cy, cx = les["centroid_voxel"]
        mx, my, mz = les["centroid_mm"]
        lesions.append({
            "case_id": cid, "split": split, "lesion_id": les["lesion_id"], "label": les["label"],
            "subtype": les["subtype"], "centroid_x_mm": round(mx, 3), "centroid_y_mm": round(my, 3),
            "centroid_z_mm": round(mz, 3), "centroid_z_vox": round(cz, 3), "centroid_y_vox": round(cy, 3),
            "centroid_x_vox": round(cx, 3), "volume_ml": round(les["volume_ml"], 5),
            "diameter_mm": round(les["diameter_mm"], 3), "contrast_hu": round(les["contrast_hu"], 2),
        })
    nz, ny, nx = anatomy.label.shape
    cases = [{
        "case_id": cid, "split": split, "variant": variant, "phase": c.phase, "noise_sd": round(c.noise_sd, 3),
        "blur_sigma_mm": round(c.blur_sigma_mm, 3), "hu_offset": round(c.hu_offset, 3),
        "spacing_x": round(anatomy.spacing[0], 5), "spacing_y": round(anatomy.spacing[1], 5),
        "spacing_z": round(anatomy.spacing[2], 5), "size_x": nx, "size_y": ny, "size_z": nz,
        "n_lesions": len(anatomy.lesions),
    } for variant, c in variants]
    return lesions, cases


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def write_phantom_dataset(raw_root: str | os.PathLike, settings: SynthSettings, *, dataset_id: int = 990,
                          name: str = "LiverPhantom", overwrite: bool = False, num_processes: int = 1,
                          progress: bool = True) -> Path:
    """Generate the phantom data set into ``<raw_root>/DatasetXXX_<name>`` and return that folder.

    Raises:
        ValueError: bad settings.
        FileExistsError: the folder, or another data set with this id, exists (and ``overwrite`` is off
            or cannot apply because the name differs).
    """
    from tqdm import tqdm

    settings.validate()
    final = dataset_output_folder(raw_root, dataset_id, name)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists (use --overwrite to replace it)")

    jobs = [(i, "train") for i in range(settings.num_train)]
    jobs += [(settings.num_train + i, "test") for i in range(settings.num_test)]
    with staged_dir(final, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesTs_shifted"):
            (tmp / sub).mkdir()
        bar = tqdm(total=len(jobs), desc=f"synth {final.name}", unit="case", disable=not progress)
        results: dict[int, tuple[list[dict], list[dict]]] = {}
        if num_processes > 1:
            with ProcessPoolExecutor(num_processes) as pool:
                futures = {pool.submit(_write_case, tmp, i, split, settings): i for i, split in jobs}
                for fut in futures:
                    results[futures[fut]] = fut.result()
                    bar.update()
        else:
            for i, split in jobs:
                results[i] = _write_case(tmp, i, split, settings)
                bar.update()
        bar.close()
        lesion_rows = [r for i in sorted(results) for r in results[i][0]]
        case_rows = [r for i in sorted(results) for r in results[i][1]]
        _write_csv(tmp / "lesions.csv", LESION_COLUMNS, lesion_rows)
        _write_csv(tmp / "cases.csv", CASE_COLUMNS, case_rows)
        from nnunet_liver.data.phantoms import PHANTOM_VERSION

        margin = f", {settings.z_margin_mm:g} mm above and below the liver" if settings.fov == "liver" else ""
        write_dataset_json(
            tmp, num_training=settings.num_train, name=name,
            description=(f"Synthetic liver-CT phantoms from nnunet-liver (seed {settings.seed}, size "
                         f"{settings.size}, field of view {settings.fov}{margin}). Raw HU. Labels: 0 background, "
                         f"1 liver, 2 tumour; benign/malignant per lesion in lesions.csv. imagesTs_shifted: the test anatomy under shifted "
                         f"contrast/window conditions (robustness split). Synthetic data: not for clinical use."),
            extra={"nnunet_liver": {"generator": "phantoms", "generator_version": PHANTOM_VERSION,
                                    "seed": settings.seed, "size": settings.size,
                                    "fov": settings.fov, "num_test": settings.num_test,
                                    **({"z_margin_mm": settings.z_margin_mm} if settings.fov == "liver" else {})}},
        )
    return final
