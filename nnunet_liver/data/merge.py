"""Merge nnU-Net raw liver data sets into one, without exact duplicates.

Case ids become ``<source name>_<case id>`` (``LiTS_lits_003``, ``3DIRCADb_ircadb_001``). Two cases are
duplicates when their images hold the same voxel values on the same grid size and spacing (a digest of the
values, whatever the stored type, plus shape and spacing); the first one met, in the order the sources are
given, is kept, and every dropped case is reported with the case it duplicates and whether their labels
agree (``duplicates.csv``, and the ``duplicates`` entry of ``case_mapping.json``). Files are copied byte for
byte; ``lesions.csv`` tables of the sources are concatenated (ids renamed, a ``source_dataset`` column
added, the union of the columns kept). Writing, re-runs and ``overwrite`` as the converters
(:func:`nnunet_liver.data.converters.write_cases`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_liver.data.converters import (
    CaseJob,
    ConversionError,
    ConversionResult,
    MAPPING_FILE,
    check_not_inside,
    fingerprint,
    load_mapping,
    output_folder,
    read_image,
    write_cases,
)
from nnunet_liver.data.io import DATASET_RE, datasets_with_id, staged_file

KIND = "merge"
DUPLICATE_COLUMNS = ("case_id", "source_dataset", "source_case", "duplicate_of", "same_label")
FILE_ENDING = ".nii.gz"


@dataclass(frozen=True)
class SourceCase:
    dataset: Path
    case: str
    split: str
    image: Path
    label: Path | None

    @property
    def name(self) -> str:
        return dataset_name(self.dataset)

    @property
    def new_id(self) -> str:
        return f"{self.name}_{self.case}"


@dataclass
class MergeResult(ConversionResult):
    duplicates: list[dict]


def dataset_name(folder: Path) -> str:
    m = DATASET_RE.match(Path(folder).name)
    return m.group(2) if m else Path(folder).name


def resolve_source(raw_root: Path, spec: str) -> Path:
    """A data set id (``501``), folder name in ``raw_root`` (``Dataset501_LiTS``) or path."""
    if spec.isdigit():
        found = datasets_with_id(raw_root, int(spec))
        if not found:
            raise ConversionError(f"no data set with id {spec} in {raw_root}")
        if len(found) > 1:
            raise ConversionError(f"id {spec} is ambiguous in {raw_root}: {', '.join(p.name for p in found)}")
        return found[0]
    for candidate in (raw_root / spec, Path(spec)):
        if candidate.is_dir():
            return candidate
    raise ConversionError(f"{spec}: neither a data set id, nor a data set folder in {raw_root}, nor a folder")


def list_cases(dataset: Path) -> list[SourceCase]:
    """The cases of a raw liver data set (one CT channel, labels 0/1/2, ``.nii.gz``)."""
    ds_json = dataset / "dataset.json"
    if not ds_json.is_file():
        raise ConversionError(f"{dataset}: no dataset.json (not an nnU-Net raw data set, or unfinished)")
    try:
        info = json.loads(ds_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{ds_json}: unreadable ({e})") from None
    channels = info.get("channel_names", info.get("modality", {}))
    if len(channels) != 1:
        raise ConversionError(f"{ds_json}: {len(channels)} channels; merge handles one CT channel")
    values = sorted(int(v) for v in info.get("labels", {}).values() if not isinstance(v, (list, tuple)))
    if values != [0, 1, 2] or info["labels"].get("background") != 0:
        raise ConversionError(f"{ds_json}: labels {info.get('labels')}; merge needs background 0, liver 1, "
                              f"tumour 2")
    if info.get("file_ending") != FILE_ENDING:
        raise ConversionError(f"{ds_json}: file_ending {info.get('file_ending')!r}; merge handles {FILE_ENDING}")
    cases = []
    for split, (img_dir, lbl_dir) in (("train", ("imagesTr", "labelsTr")), ("test", ("imagesTs", "labelsTs"))):
        suffix = "_0000" + FILE_ENDING
        for image in sorted((dataset / img_dir).glob("*" + suffix)):
            case = image.name[: -len(suffix)]
            label = dataset / lbl_dir / f"{case}{FILE_ENDING}"
            if split == "train" and not label.is_file():
                raise ConversionError(f"{image}: no label {label.name} in {lbl_dir}")
            cases.append(SourceCase(dataset, case, split, image, label if label.is_file() else None))
    if not cases:
        raise ConversionError(f"{dataset}: no cases in imagesTr or imagesTs")
    return cases


def image_digest(path: str | os.PathLike) -> str:
    """sha256 of an image's voxel values (integers compared as integers, whatever the stored type), shape
    and spacing (rounded to 1e-5 mm). Reads in slabs, so memory stays near one copy of the image."""
    import SimpleITK as sitk

    image = read_image(path)
    arr = sitk.GetArrayViewFromImage(image)
    h = hashlib.sha256(json.dumps({"shape": arr.shape, "spacing": [round(s, 5) for s in image.GetSpacing()]}
                                  ).encode())
    integral = arr.dtype.kind in "iub" or bool(np.all([np.array_equal(arr[i:i + 16], np.round(arr[i:i + 16]))
                                                       for i in range(0, arr.shape[0], 16)]))
    for i in range(0, arr.shape[0], 16):
        slab = arr[i:i + 16]
        h.update(np.ascontiguousarray(slab, dtype=np.int64 if integral else np.float64).tobytes())
    return h.hexdigest()


def _labels_equal(a: Path | None, b: Path | None) -> str:
    if a is None or b is None:
        return ""
    import SimpleITK as sitk

    return str(bool(np.array_equal(sitk.GetArrayFromImage(read_image(a, "label")),
                                   sitk.GetArrayFromImage(read_image(b, "label")))))


def copy_case_files(job: CaseJob, staging: Path) -> dict:
    """Writer for :func:`write_cases`: copy the source files under their new names."""
    for src, rel in job.payload:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, staging / rel)
    return {}


def _write_csv(path: Path, columns, rows) -> None:
    with staged_file(path, overwrite=True) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n", restval="")
            w.writeheader()
            w.writerows(rows)


def merge_lesion_tables(sources: list[Path], kept: dict[tuple[str, str], str]) -> tuple[list[str], list[dict]]:
    """Rows of every source's lesions.csv whose case is kept, with the merged case id."""
    columns: list[str] = []
    rows = []
    for src in sources:
        table = src / "lesions.csv"
        if not table.is_file():
            continue
        with open(table, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for c in ["source_dataset", *(reader.fieldnames or [])]:
                if c not in columns:
                    columns.append(c)
            for row in reader:
                new_id = kept.get((dataset_name(src), row.get("case_id", "")))
                if new_id is not None:
                    rows.append({**row, "case_id": new_id, "source_dataset": src.name})
    return columns, rows


def merge_datasets(raw_root: str | os.PathLike, sources: list[str], *, dataset_id: int, name: str | None = None,
                   overwrite: bool = False, num_processes: int = 1, progress: bool = True) -> MergeResult:
    """Merge the raw data sets ``sources`` (ids, folder names or paths) into ``<raw_root>/DatasetXXX_<name>``.

    Args:
        name: default: the source names joined by "_".

    Raises:
        ConversionError: a source that is missing, not a liver data set, or named like another source.
        OutputExistsError: as the converters.
    """
    from tqdm import tqdm

    raw_root = Path(raw_root)
    folders = [resolve_source(raw_root, s) for s in sources]
    names = [dataset_name(f) for f in folders]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConversionError(f"{folders[i]} and {folders[names.index(n)]} have the same name {n!r}: case "
                                  f"ids would collide")
    final = output_folder(raw_root, dataset_id, name or "_".join(names))
    for f in folders:
        if f.resolve() == final.resolve():
            raise ConversionError(f"{f}: the output cannot be one of the sources")
        check_not_inside(final, f)
    cases = [c for f in folders for c in list_cases(f)]

    previous = (load_mapping(final) or {}) if final.exists() and not overwrite else {}
    cache = previous.get("digests", {}) if previous.get("written_by") == KIND else {}
    digests, jobs_info = {}, []
    for c in tqdm(cases, desc="merge: image digests", unit="case", disable=not progress):
        key = f"{c.dataset.name}/{c.image.relative_to(c.dataset).as_posix()}"
        fp = fingerprint([c.image], c.dataset)
        digest = cache[key]["digest"] if cache.get(key, {}).get("fingerprint") == fp else image_digest(c.image)
        digests[key] = {"fingerprint": fp, "digest": digest}
        jobs_info.append((c, digest))

    first: dict[str, SourceCase] = {}
    duplicates, jobs = [], []
    for c, digest in jobs_info:
        if digest in first:
            kept = first[digest]
            duplicates.append({"case_id": c.new_id, "source_dataset": c.dataset.name, "source_case": c.case,
                               "duplicate_of": kept.new_id, "same_label": _labels_equal(c.label, kept.label)})
            continue
        first[digest] = c
        img_dir, lbl_dir = ("imagesTr", "labelsTr") if c.split == "train" else ("imagesTs", "labelsTs")
        files = [(c.image, f"{img_dir}/{c.new_id}_0000{FILE_ENDING}")]
        if c.label is not None:
            files.append((c.label, f"{lbl_dir}/{c.new_id}{FILE_ENDING}"))
        src_record = ((load_mapping(c.dataset) or {}).get("cases", {}).get(c.case, {})
                      if (c.dataset / MAPPING_FILE).is_file() else {})
        record = {"source_dataset": c.dataset.name, "source_case": c.case, "image_digest": digest}
        if "lits_name" in src_record:
            record["lits_name"] = src_record["lits_name"]
        jobs.append(CaseJob(case_id=c.new_id, split=c.split,
                            fingerprint=fingerprint([f for f, _ in files], c.dataset),
                            record=record, payload=[(str(f), rel) for f, rel in files]))
    kept_ids = {(dataset_name(c.dataset), c.case): c.new_id for c in first.values()}

    def finish(folder: Path, records: dict) -> None:
        _write_csv(folder / "duplicates.csv", DUPLICATE_COLUMNS, duplicates)
        columns, rows = merge_lesion_tables(folders, kept_ids)
        if columns:
            _write_csv(folder / "lesions.csv", columns, rows)

    result = write_cases(
        final, jobs, copy_case_files, kind=KIND,
        header={"sources": [str(f.resolve()) for f in folders], "duplicates": duplicates, "digests": digests},
        dataset_json=dict(
            name=final.name.split("_", 1)[1],
            description=(f"Merged by nnunet-liver from {', '.join(f.name for f in folders)}: case ids prefixed "
                         f"with the source name; {len(duplicates)} exact duplicate image(s) dropped (see "
                         f"duplicates.csv). Licenses: those of the sources."),
            extra={"nnunet_liver": {"merged_from": [f.name for f in folders]}},
        ),
        finish=finish, overwrite=overwrite, num_processes=num_processes, progress=progress)
    return MergeResult(result.folder, result.converted, result.skipped, result.records, duplicates)
