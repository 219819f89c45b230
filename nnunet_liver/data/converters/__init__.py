"""Converters from public liver-CT releases to nnU-Net raw data sets, and the case-by-case writer they share.

Each converter (``lits``, ``ircadb``; ``nnunet_liver.data.merge`` too) turns its source into a list of
:class:`CaseJob` and a writer function, and :func:`write_cases` does the rest:

- the source is only read; every output lands under ``<raw_root>/DatasetXXX_<name>``;
- each case is written into a hidden staging folder beside the data set and moved into place when complete;
- ``case_mapping.json`` records every finished case (its source files, a fingerprint of their sizes, times
  and the options, and what the converter reported about it), rewritten after each case. A re-run skips
  the cases whose fingerprint is unchanged and whose files exist, so an interrupted run resumes;
- ``dataset.json`` is written last and removed before any case is (re)written, so a folder without it is
  an unfinished conversion (nnU-Net refuses it) and one with it is complete;
- ``overwrite=True`` rebuilds the whole data set in a staging folder that replaces the old one only on
  success.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from nnunet_liver.data.io import (
    OutputExistsError,
    check_writable_dir,
    dataset_output_folder,
    staged_dir,
    staged_file,
    write_dataset_json,
)

MAPPING_FILE = "case_mapping.json"
LABELS = {0: "background", 1: "liver", 2: "tumour"}
PARTIAL = ".partial-"
SPLIT_FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}


class ConversionError(ValueError):
    """Bad source data or layout; the message names the file or folder and the problem."""


@dataclass(frozen=True)
class CaseJob:
    """One output case.

    Attributes:
        case_id: nnU-Net case identifier.
        split: "train" (imagesTr/labelsTr) or "test" (imagesTs, labelsTs when labelled).
        fingerprint: changes whenever the source files or the options that shape the output change.
        record: what ``case_mapping.json`` keeps about the case (JSON-able: source paths, source names).
        payload: what the writer needs (paths, options); must pickle.
    """

    case_id: str
    split: str
    fingerprint: str
    record: dict = field(default_factory=dict)
    payload: Any = None


@dataclass
class ConversionResult:
    folder: Path
    converted: list[str]
    skipped: list[str]
    records: dict[str, dict]


# ------------------------------------------------------------------------------------------------------
# Small helpers shared by the converters


def fingerprint(files: Iterable[Path], root: Path, options: dict | None = None) -> str:
    """Digest of the files' paths (relative to ``root``), sizes and modification times, and ``options``."""
    items = []
    for f in sorted(Path(p) for p in files):
        st = f.stat()
        items.append([os.path.relpath(f, root), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"files": items, "options": options or {}}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def read_image(path: str | os.PathLike, what: str = "image"):
    """A 3D scalar image through the shared reader (:func:`nnunet_liver.data.images.read_image`: empty,
    truncated and corrupt files, zero-length axes, 4D images, NIfTI NaN and infinities are refused), with a
    one-line error naming the file."""
    from nnunet_liver.data.images import ImageError
    from nnunet_liver.data.images import read_image as _read

    try:
        return _read(path, what)
    except ImageError as e:
        raise ConversionError(str(e)) from None


def read_header(path: str | os.PathLike, what: str = "image"):
    """An ``sitk.ImageFileReader`` with the header read (size, spacing, origin, direction); no voxels."""
    from nnunet_liver.data.images import ImageError
    from nnunet_liver.data.images import read_header as _read_header

    try:
        return _read_header(path, what)
    except ImageError as e:
        raise ConversionError(str(e)) from None


def geometry_difference(a, b, *, rtol: float = 1e-4, atol: float = 1e-3) -> str | None:
    """How ``a``'s grid differs from ``b``'s (anything with GetSize/GetSpacing/GetOrigin/GetDirection), or None.

    The default tolerances are :func:`nnunet_liver.data.io.copy_case`'s.
    """
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return f"shape {tuple(a.GetSize())} differs from {tuple(b.GetSize())}"
    for what, x, y in (("spacing", a.GetSpacing(), b.GetSpacing()), ("origin", a.GetOrigin(), b.GetOrigin()),
                       ("direction", a.GetDirection(), b.GetDirection())):
        if not np.allclose(x, y, rtol=rtol, atol=atol):
            return f"{what} {tuple(round(v, 4) for v in x)} differs from {tuple(round(v, 4) for v in y)}"
    return None


def check_image_values(image, path, rescale: str = "") -> None:
    """Refuse voxels that cannot be Hounsfield units: NaN or infinite values, values beyond the 16-bit HU
    range (an overflowing DICOM rescale), a label map given as the CT. No air is required: a source may be
    cropped to the body."""
    from nnunet_liver.data.images import ImageError, ct_array

    try:
        ct_array(image, str(path), require_air=False, rescale=rescale)
    except ImageError as e:
        raise ConversionError(str(e)) from None


def label_array(image, path) -> np.ndarray:
    """Voxels of a label image as uint8 0/1/2, (z, y, x).

    Float-stored labels are accepted when every value is an exact integer; NaN, fractions and values other
    than 0, 1, 2 are refused with a message naming ``path``.
    """
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ConversionError(f"{path}: label image has NaN values")
        if not np.array_equal(arr, np.round(arr)):
            raise ConversionError(f"{path}: label image has non-integer values")
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        bad = np.unique(arr[(arr < 0) | (arr > 2)])
        shown = ", ".join(str(int(v)) if np.isfinite(v) else str(v) for v in bad[:8])
        hint = "; a CT given as a label map?" if bad.min() < -255 or bad.max() > 255 else ""
        raise ConversionError(f"{path}: unknown label value(s) {shown} (expected 0 background, 1 liver, "
                              f"2 tumour{hint})")
    return arr.astype(np.uint8)


def label_image(image, path):
    """``image`` as a uint8 0/1/2 SimpleITK image with the same geometry (see :func:`label_array`)."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(label_array(image, path))
    out.CopyInformation(image)
    return out


# ------------------------------------------------------------------------------------------------------
# Output folder and the case-by-case writer


def output_folder(raw_root: str | os.PathLike, dataset_id: int, name: str) -> Path:
    """``<raw_root>/DatasetXXX_<name>`` (see :func:`nnunet_liver.data.io.dataset_output_folder`)."""
    return dataset_output_folder(raw_root, dataset_id, name)


def check_not_inside(output: Path, source: Path) -> None:
    """Refuse an output folder inside the source tree (the source is never written to), or a source inside
    the output folder (``overwrite`` replaces that folder, and would delete the source with it)."""
    out, src = Path(output).resolve(), Path(source).resolve()
    if out == src or src in out.parents:
        raise ConversionError(f"{output}: the output must not be inside the source folder {source}")
    if out in src.parents:
        raise ConversionError(f"{source}: the source must not be inside the output folder {output} (move it out)")


def load_mapping(folder: Path) -> dict | None:
    path = Path(folder) / MAPPING_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: unreadable ({e})") from None


def _write_json(path: Path, data: dict) -> None:
    with staged_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _case_done(folder: Path, job: CaseJob, previous: dict | None) -> bool:
    return (previous is not None and previous.get("fingerprint") == job.fingerprint
            and previous.get("split") == job.split
            and all((folder / f).is_file() for f in previous.get("files", ())))


def _remove_partials(root: Path, name: str) -> None:
    """Remove staging leftovers of an earlier interrupted run (hidden names with ``.partial-``)."""
    candidates = list(root.glob(f".{name}{PARTIAL}*")) if root.is_dir() else []
    folder = root / name
    if folder.is_dir():
        candidates += [p for p in folder.iterdir() if p.name.startswith(".") and PARTIAL in p.name]
    for p in candidates:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _stage_case(writer: Callable[[CaseJob, Path], dict | None], job: CaseJob, staging_root: str,
                prefix: str) -> tuple[str, str, dict]:
    """Run ``writer`` into a fresh staging folder; returns (case id, staging folder, writer's record)."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=staging_root))
    try:
        extra = writer(job, staging) or {}
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return job.case_id, str(staging), extra


def _move_into_place(staging: Path, folder: Path) -> list[str]:
    """Move the case's files (everything in the split folders) from ``staging`` into ``folder``."""
    moved = []
    for sub in sorted({s for pair in SPLIT_FOLDERS.values() for s in pair}):
        for f in sorted((staging / sub).glob("*")) if (staging / sub).is_dir() else ():
            (folder / sub).mkdir(parents=True, exist_ok=True)
            os.replace(f, folder / sub / f.name)
            moved.append(f"{sub}/{f.name}")
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def write_cases(final: str | os.PathLike, jobs: Sequence[CaseJob], writer: Callable[[CaseJob, Path], dict | None],
                *, kind: str, header: dict, dataset_json: dict,
                finish: Callable[[Path, dict[str, dict]], None] | None = None, overwrite: bool = False,
                num_processes: int = 1, progress: bool = True) -> ConversionResult:
    """Write ``jobs`` into the data set folder ``final``, resuming an earlier run.

    Args:
        writer: module-level function ``writer(job, staging)`` that writes the case's files into
            ``staging/imagesTr`` etc. (``staging/scratch`` is free for temporary files) and returns extra
            JSON-able facts for its ``case_mapping.json`` record. Runs in worker processes when
            ``num_processes > 1``.
        kind: what writes the data set ("convert lits", ...); a folder written by something else is refused
            unless ``overwrite``.
        header: top-level facts stored in ``case_mapping.json`` (source folder, options).
        dataset_json: keyword arguments of :func:`nnunet_liver.data.io.write_dataset_json` except
            ``num_training``.
        finish: ``finish(folder, records)`` writes tables derived from every case's record (lesions.csv);
            runs before ``dataset.json`` is written.

    Raises:
        ConversionError: bad source data (from the writer) or a folder that holds cases not in ``jobs``.
        OutputExistsError: ``final`` exists but was not written by ``kind`` and ``overwrite`` is off.
    """
    final = Path(final)
    ids = [j.case_id for j in jobs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConversionError(f"case id(s) {', '.join(dup)} would be written twice")
    check_writable_dir(final.parent)
    _remove_partials(final.parent, final.name)

    if overwrite and final.exists():
        with staged_dir(final, overwrite=True) as tmp:
            return _write_all(tmp, final, jobs, writer, kind=kind, header=header, dataset_json=dataset_json,
                              finish=finish, previous={}, num_processes=num_processes, progress=progress)

    previous: dict = {}
    if final.exists():
        state = load_mapping(final)
        if state is None or state.get("written_by") != kind:
            by = f"by {state.get('written_by')!r}" if state else f"without {MAPPING_FILE}"
            raise OutputExistsError(f"{final} exists, written {by} (use --overwrite to replace it)")
        previous = state.get("cases", {})
        stale = sorted(set(previous) - set(ids))
        if stale:
            raise ConversionError(f"{final} holds case(s) not in this source ({', '.join(stale[:5])}"
                                  f"{', ...' if len(stale) > 5 else ''}); use --overwrite to rebuild it")
    return _write_all(final, final, jobs, writer, kind=kind, header=header, dataset_json=dataset_json,
                      finish=finish, previous=previous, num_processes=num_processes, progress=progress)


def _write_all(folder: Path, final: Path, jobs: Sequence[CaseJob], writer, *, kind: str, header: dict,
               dataset_json: dict, finish, previous: dict, num_processes: int, progress: bool
               ) -> ConversionResult:
    """Write the unfinished ``jobs`` into ``folder`` (``final`` itself, or its staging folder)."""
    from tqdm import tqdm

    todo = [j for j in jobs if not _case_done(folder, j, previous.get(j.case_id))]
    done_ids = {j.case_id for j in jobs} - {j.case_id for j in todo}
    records = {cid: previous[cid] for cid in done_ids}
    state = {"written_by": kind, **header, "cases": {}}

    def save_state() -> None:
        order = {j.case_id: i for i, j in enumerate(jobs)}
        state["cases"] = {cid: records[cid] for cid in sorted(records, key=order.__getitem__)}
        _write_json(folder / MAPPING_FILE, state)

    if not todo and previous and (folder / "dataset.json").is_file():
        saved = load_mapping(folder) or {}
        if all(saved.get(k) == v for k, v in state.items() if k != "cases"):
            return ConversionResult(final, [], sorted(done_ids), records)  # nothing to do, nothing touched

    (folder / "dataset.json").unlink(missing_ok=True)  # from here on the folder is unfinished
    prefix = f".{final.name}{PARTIAL}"
    staging_root = str(folder.parent if folder == final else folder)
    bar = tqdm(total=len(todo), desc=f"{kind} -> {final.name}", unit="case", disable=not progress)
    by_id = {j.case_id: j for j in todo}

    def accept(case_id: str, staging: str, extra: dict) -> None:
        job = by_id[case_id]
        files = _move_into_place(Path(staging), folder)
        for f in set(previous.get(case_id, {}).get("files", ())) - set(files):
            (folder / f).unlink(missing_ok=True)  # the case was redone with other outputs
        records[case_id] = {**job.record, "split": job.split, "fingerprint": job.fingerprint, "files": files,
                            **extra}
        save_state()
        bar.update()

    try:
        if num_processes > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(num_processes, len(todo))) as pool:
                futures = [pool.submit(_stage_case, writer, j, staging_root, prefix) for j in todo]
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        if fut.exception() is not None:
                            for other in pending:
                                other.cancel()
                            raise fut.exception()
                        accept(*fut.result())
        else:
            for j in todo:
                accept(*_stage_case(writer, j, staging_root, prefix))
    finally:
        bar.close()
        _remove_partials(Path(staging_root), final.name)
    save_state()
    if finish is not None:
        finish(folder, records)
    num_training = sum(1 for r in records.values() if r["split"] == "train")
    tmp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    try:  # dataset.json appears in one rename: its presence means the data set is complete
        write_dataset_json(tmp_dir, num_training=num_training, **dataset_json)
        os.replace(tmp_dir / "dataset.json", folder / "dataset.json")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ConversionResult(final, [j.case_id for j in todo], sorted(done_ids), records)
