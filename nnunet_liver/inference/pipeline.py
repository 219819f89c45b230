"""One CT in, a findings report out: read -> segment (nnU-Net) -> postprocess -> lesions -> classify -> write.

Each case's files are built in a temporary folder beside the output folder and moved into place when all are
written, so a failed or interrupted case leaves nothing behind (a killed process leaves a hidden
``.<case>.partial-*`` folder, removed when the case is run again); an existing output folder is replaced only
with ``overwrite``. In batch mode a case whose folder holds ``findings.json`` (written last, moved into place
with everything else) is finished: a rerun skips it when it was made with the same models. Output folder::

    segmentation.nii.gz   labels (0 background, 1 liver, 2 tumour as in the model's dataset.json) on the input's
                          exact grid (size, spacing, origin, direction)
    lesions.csv           one row per lesion (report.LESION_COLUMNS)
    findings.json         case, input, models, device, postprocessing, volumes, lesions, timings, warnings
    lesion_<id>.png       axial slice through each lesion's centroid with its contour and probability
    summary.png           axial and coronal views with every contour, and the lesion table
    segmentation.dcm      DICOM input only: DICOM-SEG of the liver and of each lesion on the source series' frames
    findings_sr.dcm       DICOM input only: TID 1500 measurement report, one group per lesion (dicom_outputs.py)
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nnunet_liver.inference.inputs import CaseInput, CTVolume, InputError, read_case

__all__ = ["BatchResult", "CaseAnalysis", "CasePredictor", "analyse_segmentation", "finished_findings",
           "model_signature", "software_versions"]


@dataclass
class CaseAnalysis:
    """Everything computed for one case, before anything is written."""

    segmentation: np.ndarray  # (z, y, x) uint8, postprocessed
    labelled: np.ndarray  # (z, y, x) int32 lesion ids
    lesions: list  # LesionMeasurement
    probabilities: dict[int, float] | None
    postprocessing: dict
    liver_ml: float
    tumour_ml: float
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def analyse_segmentation(volume: CTVolume, segmentation: np.ndarray, *, tumour_label: int, postprocessing,
                         classifier=None, preprocessed: np.ndarray | None = None,
                         preprocessed_spacing: Sequence[float] | None = None, properties: dict | None = None,
                         transpose_forward: Sequence[int] = (0, 1, 2)) -> CaseAnalysis:
    """Postprocess a label map on the input grid, find and measure its lesions and classify them.

    Args:
        volume: the CT.
        segmentation: (z, y, x) labels on the CT's grid.
        tumour_label: tumour value.
        postprocessing: a ``postprocess.Postprocessing``.
        classifier: a ``classifier.LesionClassifier`` or None.
        preprocessed, preprocessed_spacing, properties, transpose_forward: nnU-Net's preprocessed case (needed
            with a classifier): (channels, *spatial) data, its spacing, the case properties and the plans'
            transpose.
    """
    from nnunet_liver.classification.lesions import raw_to_preprocessed, raw_to_preprocessed_grid
    from nnunet_liver.inference.lesions import label_lesions, measure_lesions

    timings, warnings = {}, []
    spacing_zyx = np.asarray(volume.image.GetSpacing(), dtype=np.float64)[::-1]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    t0 = time.perf_counter()
    seg, counts = postprocessing.apply(np.asarray(segmentation), tumour_label, voxel_ml)
    timings["postprocess"] = time.perf_counter() - t0
    pp = {**postprocessing.describe(), **counts}
    if counts["tumour_voxels_dropped"]:
        warnings.append(f"postprocessing dropped {counts['tumour_voxels_dropped']} tumour voxel(s) "
                        f"({counts['tumour_ml_dropped']:.2f} ml) outside the kept liver component")

    t0 = time.perf_counter()
    labelled, n = label_lesions(seg, tumour_label)
    lesions = measure_lesions(labelled, n, volume.array, volume.image)
    timings["lesions"] = time.perf_counter() - t0

    probabilities = None
    if classifier is not None:
        t0 = time.perf_counter()
        if preprocessed is None or properties is None or preprocessed_spacing is None:
            raise ValueError("a classifier needs the preprocessed case")
        shape = preprocessed.shape[1:]
        instances = raw_to_preprocessed_grid(labelled, properties, transpose_forward, shape).astype(np.int32)
        ids = [les.lesion_id for les in lesions]
        cents = raw_to_preprocessed(np.array([les.centroid_index[::-1] for les in lesions]).reshape(-1, 3),
                                    properties, transpose_forward, shape)
        fallback_c = {lid: tuple(float(v) for v in c) for lid, c in zip(ids, cents, strict=True)}
        fallback_d = {les.lesion_id: (6 * les.volume_ml * 1000 / math.pi) ** (1 / 3) for les in lesions}
        image = np.asarray(preprocessed[classifier.spec.channel], dtype=np.float32)
        probabilities, notes = classifier.classify(image, preprocessed_spacing, instances, ids, fallback_c, fallback_d)
        warnings.extend(notes)
        timings["classify"] = time.perf_counter() - t0
    return CaseAnalysis(segmentation=seg, labelled=labelled, lesions=lesions, probabilities=probabilities,
                        postprocessing=pp, liver_ml=float(np.count_nonzero(seg >= 1)) * voxel_ml,
                        tumour_ml=float(np.count_nonzero(seg == tumour_label)) * voxel_ml, warnings=warnings,
                        timings=timings)


def software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nnunet-liver", "nnunetv2", "torch", "SimpleITK"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class BatchResult:
    """Outcome of several cases: ``done`` {name: output folder}, ``skipped`` {name: output folder finished by an
    earlier run}, ``failed`` {name: message}."""

    done: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


FINDINGS = "findings.json"


def finished_findings(folder: str | os.PathLike) -> dict | None:
    """The findings of a finished case folder (None if ``folder`` holds no ``findings.json``).

    Raises:
        ValueError: ``findings.json`` exists but is not readable JSON (edited or damaged by hand: the pipeline
            moves it into place whole).
    """
    import json

    path = Path(folder) / FINDINGS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None


def model_signature(models: dict) -> dict:
    """What identifies the models of a findings' ``models`` entry across machines (not the folders' paths):
    data set, trainer, plans, configuration, folds, checkpoint, and the classifier's run and checkpoint."""
    seg = models.get("segmentation") or {}
    clf = models.get("classifier")
    return {
        "segmentation": {k: seg.get(k) for k in ("dataset", "trainer", "plans", "configuration", "folds",
                                                   "checkpoint")},
        "classifier": None if not clf else {"model": clf.get("model"), "preset": clf.get("preset"),
                                            "checkpoint": "/".join(Path(str(clf.get("checkpoint"))).parts[-3:])},
    }


class CasePredictor:
    """Runs cases with one loaded segmentation model (and optional classifier).

    Args:
        model: a ``segmentation.SegmentationModel``.
        classifier: a ``classifier.LesionClassifier`` or None.
        postprocessing: a ``postprocess.Postprocessing``.
        figures: write the PNG figures.
        log: where one line per case goes.
        load_seconds: model loading time, recorded in every findings.json.
        dicom: write the DICOM SEG and SR for DICOM input.
    """

    def __init__(self, model, classifier=None, postprocessing=None, *, figures: bool = True,
                 log: Callable[[str], None] = print, load_seconds: float | None = None, dicom: bool = True):
        from nnunet_liver.inference.postprocess import Postprocessing

        self.model = model
        self.classifier = classifier
        self.postprocessing = postprocessing or Postprocessing()
        self.figures = figures
        self.log = log
        self.load_seconds = load_seconds
        self.dicom = dicom
        self.notes: list[str] = []
        if classifier is not None:
            # the preprocessed grid's spacing is known per case for 2d models; 3d models have the plans' one
            spacing = [float(s) for s in model.configuration_manager.spacing]
            self.notes = classifier.check_model(model.normalization_schemes(), spacing)

    def run(self, case: CaseInput, out_dir: str | os.PathLike, *, overwrite: bool = False,
            volume: CTVolume | None = None) -> dict:
        """Predict one case and write its folder; returns the findings.

        Args:
            volume: the case already read with ``read_case`` (read here if None).

        Raises:
            InputError: the case is not a readable CT (nothing written).
            OutputExistsError: ``out_dir`` exists and ``overwrite`` is off (checked before any work).
        """
        from nnunet_liver.data.io import OutputExistsError

        out_dir = Path(out_dir)
        if out_dir.exists() and not overwrite:
            raise OutputExistsError(f"{out_dir} exists (use --overwrite to replace it)")
        # total time counts the read also when the caller read the case
        t_start = time.perf_counter() - (volume.read_seconds if volume is not None else 0.0)
        volume = read_case(case) if volume is None else volume
        timings = {"read": volume.read_seconds}
        geometry = {"spacing": volume.image.GetSpacing(), "origin": volume.image.GetOrigin(),
                    "direction": volume.image.GetDirection()}
        result = self.model.segment(volume.array, geometry)
        timings.update(result.timings)
        analysis = analyse_segmentation(
            volume, result.segmentation, tumour_label=self.model.tumour_label(), postprocessing=self.postprocessing,
            classifier=self.classifier, preprocessed=result.preprocessed,
            preprocessed_spacing=result.preprocessed_spacing, properties=result.properties,
            transpose_forward=self.model.transpose_forward)
        timings.update(analysis.timings)
        del result
        findings = self.findings(case, volume, analysis, timings)
        self.write(out_dir, volume, analysis, findings, overwrite=overwrite, t_start=t_start)
        return findings

    def findings(self, case: CaseInput, volume: CTVolume, analysis: CaseAnalysis, timings: dict) -> dict:
        from nnunet_liver.inference.report import lesion_rows

        rows = lesion_rows(case.name, analysis.lesions, analysis.probabilities)
        for row, les in zip(rows, analysis.lesions, strict=True):
            row["n_voxels"] = les.n_voxels
            row["axial_slice"] = les.axial_slice
        warnings = list(self.notes) + list(analysis.warnings)
        small = sum(1 for les in analysis.lesions if les.small)
        if small:
            warnings.append(f"{small} lesion(s) under 10 mm longest axial diameter: low confidence")
        return {
            "case": case.name,
            "input": {"path": str(case.path), **volume.info},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": {
                "segmentation": self.model.describe(),
                "classifier": self.classifier.describe() if self.classifier is not None else None,
                "load_seconds": self.load_seconds,
            },
            "device": self.model.device,
            "classification": ("malignancy probability from the lesion classifier" if self.classifier is not None
                               else "not computed: no --classifier given (malignancy_prob is empty)"),
            "postprocessing": analysis.postprocessing,
            "labels": {"liver": "every label >= 1", "tumour": self.model.tumour_label()},
            "liver_volume_ml": round(analysis.liver_ml, 3),
            "tumour_volume_ml": round(analysis.tumour_ml, 3),
            "n_lesions": len(analysis.lesions),
            "lesion_definition": "3D connected components of the tumour label (face connectivity); centroid voxel "
                                 "as SimpleITK index (x, y, z), centroid mm in patient LPS; axial diameter between "
                                 "voxel centres; small = axial diameter < 10 mm (low confidence)",
            "lesions": rows,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "warnings": warnings,
            "software": software_versions(),
        }

    def write(self, out_dir: Path, volume: CTVolume, analysis: CaseAnalysis, findings: dict, *, overwrite: bool,
              t_start: float) -> None:
        import SimpleITK as sitk

        from nnunet_liver.data.io import staged_dir
        from nnunet_liver.inference.dicom_outputs import write_case_dicom
        from nnunet_liver.inference.report import (
            lesion_rows,
            write_findings,
            write_lesion_csv,
            write_lesion_overlay,
            write_summary_figure,
        )

        t0 = time.perf_counter()
        tumour_label = self.model.tumour_label()
        with staged_dir(out_dir, overwrite=overwrite) as tmp:
            seg_img = sitk.GetImageFromArray(analysis.segmentation.astype(np.uint8, copy=False))
            seg_img.CopyInformation(volume.image)
            sitk.WriteImage(seg_img, str(tmp / "segmentation.nii.gz"), useCompression=True)
            write_lesion_csv(tmp / "lesions.csv", lesion_rows(findings["case"], analysis.lesions,
                                                               analysis.probabilities))
            if self.figures:
                spacing_zyx = list(volume.image.GetSpacing())[::-1]
                direction = volume.image.GetDirection()
                common = dict(case=findings["case"], image=volume.array, seg=analysis.segmentation,
                              labelled=analysis.labelled, direction=direction, spacing_zyx=spacing_zyx,
                              tumour_label=tumour_label)
                for les in analysis.lesions:
                    p = None if analysis.probabilities is None else analysis.probabilities.get(les.lesion_id)
                    write_lesion_overlay(tmp / f"lesion_{les.lesion_id:03d}.png", lesion=les, probability=p, **common)
                write_summary_figure(tmp / "summary.png", lesions=analysis.lesions,
                                     probabilities=analysis.probabilities, liver_ml=analysis.liver_ml,
                                     tumour_ml=analysis.tumour_ml, **common)
            findings["dicom"] = write_case_dicom(tmp, volume=volume, segmentation=analysis.segmentation,
                                                 labelled=analysis.labelled, findings=findings,
                                                 tumour_label=tumour_label, enabled=self.dicom)
            findings["timings_s"]["write"] = round(time.perf_counter() - t0, 3)
            findings["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
            write_findings(tmp / "findings.json", findings)

    def signature(self) -> dict:
        """:func:`model_signature` of the loaded models."""
        return model_signature({"segmentation": self.model.describe(),
                                "classifier": self.classifier.describe() if self.classifier is not None else None})

    def run_many(self, cases: Sequence[CaseInput], out_root: str | os.PathLike, *, overwrite: bool = False,
                 progress: bool = True) -> BatchResult:
        """Batch mode: each case into ``out_root/<name>``; a failing case is reported and skipped.

        Without ``overwrite`` a case already finished (see :func:`finished_findings`) with the same models is
        skipped; one finished with other models, or a folder that is not a finished case, fails.
        """
        from tqdm import tqdm

        out_root = Path(out_root)
        result = BatchResult()
        seen: dict[str, CaseInput] = {}
        mine = self.signature()
        bar = tqdm(cases, desc="predict", unit="case", disable=not progress)
        say = tqdm.write if progress else self.log  # one line per case, above the bar
        for case in bar:
            bar.set_postfix_str(case.name)
            if case.name in seen:
                result.failed[case.name + f" ({case.path.name})"] = (
                    f"{case.path}: same case name as {seen[case.name].path}; rename one of them")
                continue
            seen[case.name] = case
            target = out_root / case.name
            if not overwrite and target.exists():
                try:
                    previous = finished_findings(target)
                except ValueError as e:
                    result.failed[case.name] = f"{e}; use --overwrite to predict the case again"
                    say(f"FAILED {case.name}: {result.failed[case.name]}")
                    continue
                if previous is not None and model_signature(previous.get("models", {})) == mine:
                    result.skipped[case.name] = target
                    continue
                why = ("was predicted with other models" if previous is not None
                       else "exists but is not a finished case (no findings.json)")
                result.failed[case.name] = f"{target} {why} (use --overwrite to replace it)"
                say(f"FAILED {case.name}: {result.failed[case.name]}")
                continue
            _remove_partials(out_root, case.name)
            t0 = time.perf_counter()
            try:
                findings = self.run(case, target, overwrite=overwrite)
            except InputError as e:
                result.failed[case.name] = str(e)
            except FileExistsError as e:
                result.failed[case.name] = str(e)
            except Exception as e:  # the batch goes on; the summary names the case and the error
                result.failed[case.name] = f"{case.path}: {type(e).__name__}: {e}"
            else:
                result.done[case.name] = out_root / case.name
                say(summary_line(findings, out_root / case.name, time.perf_counter() - t0))
                continue
            say(f"FAILED {case.name}: {result.failed[case.name]}")
        bar.close()
        return result


def _remove_partials(out_root: Path, name: str) -> None:
    """Staging folders of ``name`` left by a killed run (``staged_dir`` removes its own on any exception)."""
    import glob
    import shutil

    if out_root.is_dir():
        for p in out_root.glob(f".{glob.escape(name)}.partial-*"):
            shutil.rmtree(p, ignore_errors=True)


def summary_line(findings: dict, out_dir: Path, seconds: float) -> str:
    lesions = findings["lesions"]
    n_small = sum(1 for r in lesions if r["small"])
    probs = [r["malignancy_prob"] for r in lesions if r["malignancy_prob"] is not None]
    mal = f", {sum(p >= 0.5 for p in probs)} with P(malignant) >= 0.5" if probs else ""
    return (f"{findings['case']}: {len(lesions)} lesion(s) ({n_small} under 10 mm){mal}; liver "
            f"{findings['liver_volume_ml']:.0f} ml, tumour {findings['tumour_volume_ml']:.1f} ml -> {out_dir} "
            f"({seconds:.1f} s)")
