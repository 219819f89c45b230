"""LiTS (Liver Tumor Segmentation Challenge) to an nnU-Net raw data set.

Source: ``volume-N.nii`` / ``segmentation-N.nii`` (training) and ``test-volume-N.nii`` (test), ``.nii`` or
``.nii.gz``, in one folder or in any sub-folders (the release's ``Training Batch 1`` / ``Training Batch 2``).
Output (``<raw>/Dataset501_LiTS``)::

    imagesTr/lits_003_0000.nii.gz        volume-3, geometry and voxels unchanged
    labelsTr/lits_003.nii.gz             segmentation-3 as uint8 0/1/2 (float-stored labels must be integers)
    imagesTs/lits_test_007_0000.nii.gz   test-volume-7
    case_mapping.json                    case id -> source file and LiTS name (``submit`` maps back with it)
    dataset.json

Case ids come from the LiTS number, so they do not change when a batch is added later.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from nnunet_liver.data.converters import (
    CaseJob,
    ConversionError,
    ConversionResult,
    check_image_values,
    check_not_inside,
    fingerprint,
    geometry_difference,
    label_image,
    output_folder,
    read_header,
    read_image,
    write_cases,
)

FILE_RE = re.compile(r"^(volume|segmentation|test-volume)-(\d+)\.nii(\.gz)?$")
KIND = "convert lits"


def train_case_id(number: int) -> str:
    return f"lits_{number:03d}"


def test_case_id(number: int) -> str:
    return f"lits_test_{number:03d}"


def find_files(source: str | os.PathLike) -> dict[str, dict[int, Path]]:
    """``{"volume": {N: path}, "segmentation": {...}, "test-volume": {...}}`` under ``source`` (any depth).

    Raises:
        ConversionError: a LiTS number found twice, or no LiTS file at all.
    """
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: not a folder")
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}, "test-volume": {}}
    zips = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            m = FILE_RE.match(name)
            if m is None:
                if name.lower().endswith(".zip"):
                    zips.append(name)
                continue
            kind, number, path = m.group(1), int(m.group(2)), Path(dirpath) / name
            if number in found[kind]:
                raise ConversionError(f"{path}: {kind}-{number} found twice (also {found[kind][number]})")
            found[kind][number] = path
    if not any(found.values()):
        hint = f" (unpack {', '.join(zips[:3])} first)" if zips else ""
        raise ConversionError(f"{source}: no LiTS files (volume-N.nii, segmentation-N.nii, test-volume-N.nii, "
                              f".nii or .nii.gz) in it or its sub-folders{hint}")
    return found


def plan_cases(source: str | os.PathLike) -> list[CaseJob]:
    """Pair the files and check every header (partner present, same shape and geometry) before writing."""
    source = Path(source)
    found = find_files(source)
    volumes, segmentations, tests = found["volume"], found["segmentation"], found["test-volume"]
    for n, path in sorted(volumes.items()):
        if n not in segmentations:
            raise ConversionError(f"{path}: no partner segmentation-{n}.nii(.gz) found")
    for n, path in sorted(segmentations.items()):
        if n not in volumes:
            raise ConversionError(f"{path}: no partner volume-{n}.nii(.gz) found")
    jobs = []
    for n in sorted(volumes):
        image, label = volumes[n], segmentations[n]
        problem = geometry_difference(read_header(label, "segmentation"), read_header(image))
        if problem:
            raise ConversionError(f"{label}: {problem} of {image.name}")
        jobs.append(CaseJob(
            case_id=train_case_id(n), split="train", fingerprint=fingerprint([image, label], source),
            record={"lits_name": f"volume-{n}", "source": {"image": os.path.relpath(image, source),
                                                           "label": os.path.relpath(label, source)}},
            payload=(str(image), str(label))))
    for n in sorted(tests):
        image = tests[n]
        read_header(image)
        jobs.append(CaseJob(
            case_id=test_case_id(n), split="test", fingerprint=fingerprint([image], source),
            record={"lits_name": f"test-volume-{n}", "source": {"image": os.path.relpath(image, source)}},
            payload=(str(image), None)))
    return jobs


def write_case(job: CaseJob, staging: Path) -> dict:
    """Write one case (``job.payload`` = (image path, label path or None)) into ``staging``."""
    from nnunet_liver.data.io import copy_case

    image_path, label_path = job.payload
    image = read_image(image_path)
    check_image_values(image, image_path)
    label = None
    if label_path is not None:
        label = label_image(read_image(label_path, "segmentation"), label_path)
        problem = geometry_difference(label, image)  # checked on the headers already; the files may have changed
        if problem:
            raise ConversionError(f"{label_path}: {problem} of {Path(image_path).name}")
    copy_case(image, label, staging, job.case_id, job.split)
    return {}


def convert_lits(source: str | os.PathLike, raw_root: str | os.PathLike, *, dataset_id: int = 501,
                 name: str = "LiTS", overwrite: bool = False, num_processes: int = 1,
                 progress: bool = True) -> ConversionResult:
    """Convert a LiTS release into ``<raw_root>/DatasetXXX_<name>`` (resumes; see :func:`write_cases`).

    Raises:
        ConversionError: bad layout or data; the message names the file.
        OutputExistsError: the output exists and was not written by this converter (without ``overwrite``),
            or the id is used by another data set.
    """
    source = Path(source)
    final = output_folder(raw_root, dataset_id, name)
    check_not_inside(final, source)
    jobs = plan_cases(source)
    n_train = sum(j.split == "train" for j in jobs)
    return write_cases(
        final, jobs, write_case, kind=KIND, header={"source": str(source.resolve())},
        dataset_json=dict(
            name=name,
            description=(f"LiTS (Liver Tumor Segmentation Challenge, Bilic et al. 2023) converted by nnunet-liver "
                         f"from {source.name}: {n_train} training volumes, {len(jobs) - n_train} test volumes "
                         f"(imagesTs, no labels). Voxels and geometry unchanged; labels 0 background, 1 liver, "
                         f"2 tumour. case_mapping.json maps case ids to LiTS names. License: as the LiTS release."),
            extra={"nnunet_liver": {"converter": "lits"}},
        ),
        overwrite=overwrite, num_processes=num_processes, progress=progress)
