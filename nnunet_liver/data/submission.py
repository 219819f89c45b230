"""LiTS challenge submissions: build the zip from predictions, and check an existing one.

A submission holds one ``test-segmentation-N.nii`` per ``test-volume-N.nii``: plain (not gzipped) NIfTI,
uint8, labels 0/1/2, shape, spacing, origin and direction those of the test volume, all at the top of one
zip. Predictions may be named ``test-volume-N``/``test-segmentation-N`` (``.nii`` or ``.nii.gz``) or by
the converter's case ids (``lits_test_007``), mapped back to N with its ``case_mapping.json``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nnunet_liver.data.converters import (
    MAPPING_FILE,
    ConversionError,
    geometry_difference,
    label_array,
    read_header,
    read_image,
)
from nnunet_liver.data.io import staged_file

TEST_VOLUME_RE = re.compile(r"^test-volume-(\d+)\.nii(\.gz)?$")
PREDICTION_RE = re.compile(r"^test-(?:volume|segmentation)-(\d+)$")
ENTRY_RE = re.compile(r"^test-segmentation-(\d+)\.nii(\.gz)?$")
# NIfTI keeps geometry as float32 and direction as a quaternion: two files written from the same values agree
# to ~1e-7; anything above this is another grid.
IDENTICAL = dict(rtol=1e-6, atol=1e-5)


def entry_name(number: int) -> str:
    return f"test-segmentation-{number}.nii"


def list_test_volumes(folder: str | os.PathLike) -> dict[int, Path]:
    """N -> ``test-volume-N.nii(.gz)`` directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: not a folder (--test-images)")
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = TEST_VOLUME_RE.match(p.name)
        if m:
            n = int(m.group(1))
            if n in found:
                raise ConversionError(f"{p}: test-volume-{n} found twice (also {found[n].name})")
            found[n] = p
    if not found:
        raise ConversionError(f"{folder}: no test-volume-N.nii(.gz) files (--test-images)")
    return found


def load_test_mapping(path: str | os.PathLike) -> dict[str, int]:
    """Case id -> LiTS test number from a ``case_mapping.json`` (or the data set folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / MAPPING_FILE
    try:
        cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path}: not a readable {MAPPING_FILE} ({e})") from None
    mapping = {}
    for cid, rec in cases.items():
        m = re.fullmatch(r"test-volume-(\d+)", str(rec.get("lits_name", "")))
        if m:
            mapping[cid] = int(m.group(1))
    return mapping


def match_predictions(pred_dir: str | os.PathLike, tests: dict[int, Path],
                      mapping: dict[str, int] | None = None) -> dict[int, Path]:
    """N -> prediction file; every test volume needs exactly one prediction, and every prediction a volume."""
    from nnunet_liver.evaluation.lits import EvaluationInputError, list_cases

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ConversionError(f"{pred_dir}: not a folder (PRED_DIR)")
    try:
        files = list_cases(pred_dir)
    except EvaluationInputError as e:
        raise ConversionError(str(e)) from None
    found: dict[int, Path] = {}
    for name, path in files.items():
        m = PREDICTION_RE.match(name)
        if m:
            n = int(m.group(1))
        elif mapping is not None and name in mapping:
            n = mapping[name]
        else:
            hint = "" if mapping is not None else f"; pass --mapping with the converted data set's {MAPPING_FILE}"
            raise ConversionError(f"{path}: cannot tell which test volume this is (expected test-volume-N or "
                                  f"a test case id of the mapping){hint}")
        if n in found:
            raise ConversionError(f"{path}: a second prediction for test-volume-{n} (also {found[n].name})")
        if n not in tests:
            raise ConversionError(f"{path}: prediction for test-volume-{n}, which is not in the test images")
        found[n] = Path(path)
    missing = sorted(set(tests) - set(found))
    if missing:
        shown = ", ".join(f"test-volume-{n}" for n in missing[:5])
        raise ConversionError(f"{pred_dir}: no prediction for {shown}"
                              f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}")
    return found


def keep_largest_liver(labels: np.ndarray) -> np.ndarray:
    """Keep the largest connected component of labels >= 1 (face connectivity); everything outside it,
    tumour included, becomes background."""
    from scipy import ndimage

    components, n = ndimage.label(labels > 0)
    if n <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out = labels.copy()
    out[components != sizes.argmax()] = 0
    return out


def _segmentation_file(job: tuple) -> str:
    """Write ``test-segmentation-N.nii`` for one prediction into ``folder``; returns its path."""
    import SimpleITK as sitk

    number, prediction, test_volume, folder, largest = job
    pred = read_image(prediction, "prediction")
    labels = label_array(pred, prediction)
    test = read_header(test_volume, "test volume")
    problem = geometry_difference(pred, test)
    if problem:
        raise ConversionError(f"{prediction}: {problem} of {Path(test_volume).name}")
    if largest:
        labels = keep_largest_liver(labels)
    out = sitk.GetImageFromArray(labels)
    out.SetSpacing(test.GetSpacing())
    out.SetOrigin(test.GetOrigin())
    out.SetDirection(test.GetDirection())
    path = Path(folder) / entry_name(number)
    sitk.WriteImage(out, str(path), useCompression=False)
    written = read_header(path)  # verify the file as the scorer will read it
    problem = geometry_difference(written, test, **IDENTICAL)
    if problem or written.GetPixelID() != sitk.sitkUInt8:
        raise ConversionError(f"{path.name}: written file is not identical in grid and type to "
                              f"{Path(test_volume).name} ({problem or 'dtype'})")
    return str(path)


def write_submission(pred_dir: str | os.PathLike, test_images: str | os.PathLike, output: str | os.PathLike, *,
                     mapping: str | os.PathLike | None = None, largest_liver: bool = False,
                     compress: bool = True, overwrite: bool = False, num_processes: int = 1,
                     progress: bool = True) -> list[str]:
    """Build the submission zip; returns its entry names.

    Args:
        mapping: ``case_mapping.json`` (or its data set folder) for predictions named by case id.
        largest_liver: apply :func:`keep_largest_liver` to each prediction.
        compress: deflate the zip entries (the NIfTI files inside stay uncompressed ``.nii``).

    Raises:
        ConversionError: missing, extra or unreadable predictions, labels other than 0/1/2, or a prediction
            whose grid differs from its test volume.
        OutputExistsError: ``output`` exists and ``overwrite`` is off.
    """
    from tqdm import tqdm

    from nnunet_liver.data.io import OutputExistsError, check_writable_dir

    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists (use --overwrite to replace it)")
    tests = list_test_volumes(test_images)
    predictions = match_predictions(pred_dir, tests, load_test_mapping(mapping) if mapping else None)
    check_writable_dir(output.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        jobs = [(n, str(predictions[n]), str(tests[n]), str(work), largest_liver) for n in sorted(predictions)]
        bar = tqdm(total=len(jobs), desc="submission", unit="case", disable=not progress)
        if num_processes > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(num_processes, len(jobs))) as pool:
                for _ in pool.map(_segmentation_file, jobs):
                    bar.update()
        else:
            for job in jobs:
                _segmentation_file(job)
                bar.update()
        bar.close()
        names = [entry_name(n) for n in sorted(predictions)]
        with staged_file(output, overwrite=overwrite) as tmp:
            method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            with zipfile.ZipFile(tmp, "w", compression=method) as z:
                for name in names:
                    z.write(work / name, arcname=name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return names


def check_submission(zip_path: str | os.PathLike, test_images: str | os.PathLike) -> list[str]:
    """Every problem of an existing submission zip, one line each (empty: the zip is valid).

    Checked: readable zip; flat (no folders); one ``test-segmentation-N.nii`` per test volume, nothing else;
    plain NIfTI (not ``.nii.gz``, not gzipped); uint8; labels in 0/1/2; shape, spacing, origin and direction
    of ``test-volume-N``.
    """
    import SimpleITK as sitk

    zip_path = Path(zip_path)
    tests = list_test_volumes(test_images)
    try:
        z = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as e:
        return [f"{zip_path}: not a readable zip file ({e})"]
    problems: list[str] = []
    seen: dict[int, str] = {}
    with z, tempfile.TemporaryDirectory(prefix="nnunet-liver-check-") as work:
        for info in z.infolist():
            name = info.filename
            if info.is_dir():
                problems.append(f"{name}: folder inside the zip (the zip must be flat)")
                continue
            base = name.rsplit("/", 1)[-1]
            if "/" in name:
                problems.append(f"{name}: inside a folder (the zip must be flat)")
            m = ENTRY_RE.match(base)
            if m is None:
                problems.append(f"{name}: unexpected file (expected test-segmentation-N.nii)")
                continue
            n = int(m.group(1))
            if n in seen:
                problems.append(f"{name}: second file for test-volume-{n} (also {seen[n]})")
                continue
            seen[n] = name
            if n not in tests:
                problems.append(f"{name}: extra file, there is no test-volume-{n}")
                continue
            with z.open(info) as f:
                gzipped = f.read(2) == b"\x1f\x8b"
            if m.group(2):
                problems.append(f"{name}: compressed .nii.gz (must be an uncompressed .nii)")
            elif gzipped:
                problems.append(f"{name}: gzip-compressed content (must be an uncompressed .nii)")
            local = Path(work) / (f"{n}.nii.gz" if gzipped else f"{n}.nii")
            with z.open(info) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst)
            try:
                image = read_image(local, "segmentation")
            except ConversionError as e:
                problems.append(f"{name}: unreadable NIfTI ({str(e).split(' (', 1)[-1].rstrip(')')})")
                continue
            finally:
                local.unlink(missing_ok=True)
            if image.GetPixelID() != sitk.sitkUInt8:
                problems.append(f"{name}: voxel type {image.GetPixelIDTypeAsString()} (must be uint8)")
            arr = sitk.GetArrayViewFromImage(image)
            bad = (arr != 0) & (arr != 1) & (arr != 2)
            if bad.any():
                values = np.unique(arr[bad])
                problems.append(f"{name}: labels outside 0/1/2: {', '.join(f'{v:g}' for v in values[:8])}")
            test = read_header(tests[n], "test volume")
            if tuple(image.GetSize()) != tuple(test.GetSize()):
                problems.append(f"{name}: shape {tuple(image.GetSize())} differs from {tests[n].name} "
                                f"{tuple(test.GetSize())}")
            else:
                problem = geometry_difference(image, test, **IDENTICAL)
                if problem:
                    problems.append(f"{name}: {problem} of {tests[n].name}")
    for n in sorted(set(tests) - set(seen)):
        problems.append(f"{entry_name(n)}: missing (no segmentation for {tests[n].name})")
    return problems
