"""Merge nnU-Net raw liver data sets into one, without the same scan twice, with folds that keep patients whole.

Case ids become ``<source name>_<case id>`` (``LiTS_lits_003``, ``3DIRCADb_ircadb_001``). Near-duplicates
(the same scan re-exported: flipped or permuted axes, another data type, a constant HU offset, a few
slices cropped or padded, resampled or noisy; :mod:`nnunet_liver.data.duplicates`) are found across and
within the sources. By default the first copy met, in the order the sources are given, is kept (a labelled
training copy before an unlabelled test copy) and every other copy is dropped; with ``keep_duplicates``
all copies stay, grouped. Each copy after the first is
listed in ``duplicates.csv`` (and the ``duplicates`` entry of ``case_mapping.json``) with its evidence: the
similarity score, the transform found, the HU offset, and whether the labels agree (Dice after alignment).

Folds: ``splits_final.json`` (nnU-Net's format, 5 folds) is written into the merged data set, where
nnU-Net's planner picks it up, and into ``<preprocessed_root>/DatasetXXX_<name>/`` when given; every group
of copies of one scan, and every group of cases of one patient where a source records a ``patient_id``
(:func:`nnunet_liver.data.splits.patient_ids`), lies in one fold.

Files are copied byte for byte; ``lesions.csv`` tables of the sources are concatenated (ids renamed, a
``source_dataset`` column added, the union of the columns kept). Writing, re-runs and ``overwrite`` as the
converters (:func:`nnunet_liver.data.converters.write_cases`); fingerprints and verifications are cached in
the merged data set (``merge_fingerprints.npz``, ``case_mapping.json``), so a re-run only reads new files.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nnunet_liver.data import fingerprint as fpr
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
from nnunet_liver.data.duplicates import (
    EVIDENCE_COLUMNS,
    Item,
    Pair,
    evidence_against,
    find_duplicates,
    fingerprint_all,
)
from nnunet_liver.data.io import DATASET_RE, datasets_with_id, staged_file
from nnunet_liver.data.splits import (
    SPLITS_FILE,
    SplitsError,
    check_splits_writable,
    grouped_folds,
    patient_ids,
    union_groups,
    write_splits,
)

KIND = "merge"
DUPLICATE_COLUMNS = ("case_id", "source_dataset", "source_case", "duplicate_of", "same_label", "action",
                     *EVIDENCE_COLUMNS)
FILE_ENDING = ".nii.gz"
FINGERPRINT_CACHE = "merge_fingerprints.npz"


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

    @property
    def key(self) -> str:
        return f"{self.dataset.name}/{self.image.relative_to(self.dataset).as_posix()}"


@dataclass
class MergeResult(ConversionResult):
    duplicates: list[dict]
    splits: list[dict] | None = None
    split_files: list[Path] | None = None  # where splits_final.json now is
    notes: list[str] | None = None


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
    and spacing (:func:`nnunet_liver.data.fingerprint.array_digest`)."""
    import SimpleITK as sitk

    image = read_image(path)
    return fpr.array_digest(sitk.GetArrayViewFromImage(image), image.GetSpacing())


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
    """Rows of every source's lesions.csv whose case is kept, with the merged case id (and a ``patient_id``
    prefixed with the source folder, as in the case records)."""
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
                    if (row.get("patient_id") or "").strip():  # patient ids are per source, as in the records
                        rows[-1]["patient_id"] = f"{src.name}:{row['patient_id'].strip()}"
    return columns, rows


def _lesion_rows_of(sources: list[Path], cases: set[tuple[str, str]]) -> int:
    """How many rows the sources' lesions.csv tables hold for ``cases`` ((source name, case id))."""
    count = 0
    for src in sources:
        table = src / "lesions.csv"
        if cases and table.is_file():
            with open(table, encoding="utf-8", newline="") as f:
                count += sum((dataset_name(src), row.get("case_id", "")) in cases for row in csv.DictReader(f))
    return count


def _source_patients(folders: list[Path]) -> dict[tuple[str, str], str]:
    """(source name, case id) -> ``<source folder>:<patient id>`` where a source records one."""
    out = {}
    for f in folders:
        try:
            ids = patient_ids(f)
        except SplitsError as e:
            raise ConversionError(str(e)) from None
        out.update({(dataset_name(f), case): f"{f.name}:{pid}" for case, pid in ids.items()})
    return out


def _cached_state(final: Path, overwrite: bool) -> tuple[dict, dict, dict]:
    """What an earlier merge into ``final`` computed: fingerprints (key -> (image version, Fingerprint)),
    verified pairs ((a, b) -> (versions of a and b, Pair)) and its mapping."""
    if overwrite or not final.exists():
        return {}, {}, {}
    previous = load_mapping(final) or {}
    if previous.get("written_by") != KIND:
        return {}, {}, previous
    verified = {}
    for d in previous.get("verified", []):
        try:
            verified[(d["a"], d["b"])] = (d["versions"], Pair.from_json(d))
        except (KeyError, TypeError, ValueError):
            continue  # written by another version: verified again
    return fpr.load_cache(final / FINGERPRINT_CACHE), verified, previous


def merge_datasets(raw_root: str | os.PathLike, sources: list[str], *, dataset_id: int, name: str | None = None,
                   keep_duplicates: bool = False, preprocessed_root: str | os.PathLike | None = None,
                   overwrite: bool = False, num_processes: int = 1, progress: bool = True) -> MergeResult:
    """Merge the raw data sets ``sources`` (ids, folder names or paths) into ``<raw_root>/DatasetXXX_<name>``.

    Args:
        name: default: the source names joined by "_".
        keep_duplicates: keep every copy of a scan (grouped in one fold) instead of the first only.
        preprocessed_root: also write ``splits_final.json`` into ``<preprocessed_root>/DatasetXXX_<name>/``
            (an existing file with other folds is refused unless ``overwrite``).

    Raises:
        ConversionError: a source that is missing, not a liver data set, named like another source, or with
            an unreadable image (the message names the file).
        OutputExistsError: as the converters; or a different splits file in ``preprocessed_root``.
    """
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
    patients = _source_patients(folders)

    # near-duplicates
    cache, verified, _ = _cached_state(final, overwrite)
    versions = {c.key: fingerprint([c.image] + ([c.label] if c.label else []), c.dataset) for c in cases}
    image_versions = {c.key: fingerprint([c.image], c.dataset) for c in cases}
    items = [Item(c.key, c.image, c.label, image_versions[c.key]) for c in cases]
    fingerprints = fingerprint_all(items, cache, num_processes=num_processes, progress=progress)
    verified = {k: p for k, (v, p) in verified.items() if v == [versions.get(k[0]), versions.get(k[1])]}
    search = find_duplicates(items, fingerprints, verified=verified, progress=progress)
    by_key = {c.key: c for c in cases}
    item_by_key = {it.key: it for it in items}
    # the first copy in source order is kept, but a labelled training copy before an unlabelled test copy
    position = {c.key: i for i, c in enumerate(cases)}
    groups = [sorted(g, key=lambda k: (by_key[k].label is None, position[k])) for g in search.groups]
    first_of = {m: g[0] for g in groups for m in g[1:]}

    duplicates, evidence_pairs = [], []
    for g in groups:
        for member in g[1:]:
            pair = evidence_against(search, g[0], member, item_by_key, fingerprints)
            evidence_pairs.append(pair)
            c, kept = by_key[member], by_key[g[0]]
            same = "" if pair.evidence.same_label is None else str(pair.evidence.same_label)
            duplicates.append({"case_id": c.new_id, "source_dataset": c.dataset.name, "source_case": c.case,
                               "duplicate_of": kept.new_id, "same_label": same,
                               "action": "kept" if keep_duplicates else "dropped", **pair.evidence_row()})

    kept_cases = [c for c in cases if keep_duplicates or c.key not in first_of]
    new_ids = {c.key: c.new_id for c in cases}
    links = [[new_ids[k] for k in g] for g in groups]
    by_patient: dict[str, list[str]] = {}
    for c in cases:
        pid = patients.get((c.name, c.case))
        if pid is not None:
            by_patient.setdefault(pid, []).append(c.new_id)
    links += [v for v in by_patient.values() if len(v) > 1]
    kept_ids = [c.new_id for c in kept_cases]
    split_groups = [g for g in union_groups(kept_ids, links) if len(g) > 1]
    group_of = {cid: g[0] for g in split_groups for cid in g}
    train_ids = [c.new_id for c in kept_cases if c.split == "train"]
    notes = []
    try:
        splits = grouped_folds(train_ids, split_groups)
    except SplitsError as e:
        splits = None
        notes.append(f"{SPLITS_FILE} not written: {e}")
    pre_splits = None
    if preprocessed_root is not None and splits is not None:
        pre_splits = Path(preprocessed_root) / final.name / SPLITS_FILE
        check_splits_writable(pre_splits, splits, overwrite=overwrite)  # before the long copy

    jobs = []
    for c in kept_cases:
        img_dir, lbl_dir = ("imagesTr", "labelsTr") if c.split == "train" else ("imagesTs", "labelsTs")
        files = [(c.image, f"{img_dir}/{c.new_id}_0000{FILE_ENDING}")]
        if c.label is not None:
            files.append((c.label, f"{lbl_dir}/{c.new_id}{FILE_ENDING}"))
        src_record = ((load_mapping(c.dataset) or {}).get("cases", {}).get(c.case, {})
                      if (c.dataset / MAPPING_FILE).is_file() else {})
        record = {"source_dataset": c.dataset.name, "source_case": c.case,
                  "image_digest": fingerprints[c.key].digest}
        if "lits_name" in src_record:
            record["lits_name"] = src_record["lits_name"]
        if (c.name, c.case) in patients:
            record["patient_id"] = patients[(c.name, c.case)]
        if c.new_id in group_of:
            record["group"] = group_of[c.new_id]
        jobs.append(CaseJob(case_id=c.new_id, split=c.split,
                            fingerprint=fingerprint([f for f, _ in files], c.dataset),
                            record=record, payload=[(str(f), rel) for f, rel in files]))
    kept_names = {(c.name, c.case): c.new_id for c in kept_cases}
    if search.highest_other is not None:
        score, a, b = search.highest_other
        notes.append(f"closest pair that is not a duplicate: {new_ids[a]} ~ {new_ids[b]}, score {score:.3f} "
                     f"(a duplicate needs {fpr.CANDIDATE_SCORE} and a detail NCC of {fpr.DUPLICATE_DETAIL_NCC})")
    dropped_rows = _lesion_rows_of(folders, {(c.name, c.case) for c in cases} - set(kept_names))
    if dropped_rows:
        notes.append(f"{dropped_rows} lesions.csv row(s) of dropped copies left out (their lesion ids and voxel "
                     f"centroids refer to the dropped copy's label); give that source first to keep them")
    search_summary = {
        "pairs_scored": search.compared, "pairs_without_alignment": search.skipped,
        "candidate_score": fpr.CANDIDATE_SCORE, "duplicate_detail_ncc": fpr.DUPLICATE_DETAIL_NCC,
        "highest_other": (None if search.highest_other is None else
                          {"score": search.highest_other[0], "a": new_ids[search.highest_other[1]],
                           "b": new_ids[search.highest_other[2]]}),
    }

    def finish(folder: Path, records: dict) -> None:
        _write_csv(folder / "duplicates.csv", DUPLICATE_COLUMNS, duplicates)
        columns, rows = merge_lesion_tables(folders, kept_names)
        if columns:
            _write_csv(folder / "lesions.csv", columns, rows)
        if splits is not None:
            write_splits(folder / SPLITS_FILE, splits, overwrite=True)
        else:
            (folder / SPLITS_FILE).unlink(missing_ok=True)
        fpr.save_cache(folder / FINGERPRINT_CACHE, {k: (image_versions[k], fingerprints[k]) for k in fingerprints})

    verified_pairs = list({(p.a, p.b): p for p in search.pairs + evidence_pairs}.values())
    action = "kept, grouped in one fold" if keep_duplicates else "dropped"
    result = write_cases(
        final, jobs, copy_case_files, kind=KIND,
        header={"sources": [str(f.resolve()) for f in folders], "keep_duplicates": keep_duplicates,
                "duplicates": duplicates, "split_groups": split_groups, "near_duplicate_search": search_summary,
                "verified": [p.to_json(versions) for p in verified_pairs]},
        dataset_json=dict(
            name=final.name.split("_", 1)[1],
            description=(f"Merged by nnunet-liver from {', '.join(f.name for f in folders)}: case ids prefixed "
                         f"with the source name; {len(duplicates)} near-duplicate image(s) {action} (see "
                         f"duplicates.csv); splits_final.json keeps copies of a scan and cases of a patient in "
                         f"one fold. Licenses: those of the sources."),
            extra={"nnunet_liver": {"merged_from": [f.name for f in folders]}},
        ),
        finish=finish, overwrite=overwrite, num_processes=num_processes, progress=progress)
    split_files = []
    if splits is not None:
        split_files.append(result.folder / SPLITS_FILE)
        if pre_splits is not None:
            write_splits(pre_splits, splits, overwrite=overwrite)
            split_files.append(pre_splits)
    return MergeResult(result.folder, result.converted, result.skipped, result.records, duplicates, splits,
                       split_files, notes)
