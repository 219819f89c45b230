"""DICOM outputs of ``nnunet-liver predict`` for a DICOM series: a Segmentation (SEG) and a TID 1500 report (SR).

Both join the source series' study and are written with highdicom:

``segmentation.dcm``  DICOM-SEG (BINARY) on the source series' frame geometry: a frame per segment and source
                      slice it is on, each frame referencing that slice's instance. Segments:

                      1        "Liver": the liver without its tumours (every label >= 1 except the tumour
                               label), SCT Anatomical Structure / Liver;
                      1 + k    "Lesion <id>": the k-th lesion of findings.json (one 3D connected component of
                               the tumour label), SCT Morphologically Abnormal Structure / Neoplasm, site Liver,
                               with the lesion's tracking identifier and tracking UID.

                      The segments do not overlap (the segmentation is passed as one label map, so memory stays
                      one volume whatever the number of lesions): the whole liver (findings.json's
                      liver_volume_ml) is segment 1 with every lesion segment, the tumour label is the union of
                      the lesion segments.

``findings_sr.dcm``   Comprehensive 3D SR, TID 1500 Imaging Measurement Report, observer: the nnunet-liver
                      device. One TID 1411 volumetric group per lesion, referencing the lesion's segment of the
                      SEG, with the lesion's tracking identifier/UID and the values of findings.json (rounded as
                      there): volume (SCT Volume, ml), longest axial diameter (SCT Long Axis, mm), mean and
                      standard deviation of the HU (DCM Attenuation Coefficient with the derivation Mean /
                      Standard Deviation, [hnsf'U]), and with a classifier P(malignant) (DCM Probability of
                      cancer, unit 1). Two TID 1501 groups without an image region hold the liver and tumour
                      volumes of findings.json.

Verification flag UNVERIFIED: an algorithm's findings, not a signed report. A NIfTI, NRRD or MetaImage input has
no study or series to reference, so nothing DICOM is written for it (:data:`NOT_DICOM_NOTE`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["NOT_DICOM_NOTE", "SEG_FILE", "SR_FILE", "DicomOutputError", "build_report", "build_segmentation",
           "console_note", "read_source_series", "write_case_dicom", "write_dicom_outputs"]

SEG_FILE = "segmentation.dcm"
SR_FILE = "findings_sr.dcm"
NOT_DICOM_NOTE = "no DICOM SEG/SR: the input is not a DICOM series, so there is no study/series to reference"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 901, 902
POSITION_TOL = 0.01  # in voxels: DICOM positions are decimal strings (up to 16 characters)
ORIENTATION_TOL = 1e-4
LIVER_RGB, LESION_RGB = (60, 220, 60), (255, 40, 40)  # the figures' contour colours


class DicomOutputError(ValueError):
    """The source series cannot carry a SEG/SR (missing frame of reference, geometry that does not match)."""


def _codes():
    """The coded concepts (imported on use: highdicom loads its standard tables on import)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return {
        "anatomical_structure": codes.SCT.AnatomicalStructure,  # 91723000
        "abnormal_structure": codes.SCT.MorphologicallyAbnormalStructure,  # 49755003
        "liver": codes.SCT.Liver,  # 10200004
        "neoplasm": codes.SCT.Neoplasm,  # 108369006
        "volume": codes.SCT.Volume,  # 118565006
        "long_axis": codes.SCT.LongAxis,  # 103339001
        "attenuation": codes.DCM.AttenuationCoefficient,  # 112031
        "mean": codes.SCT.Mean,  # 373098007
        "std": codes.SCT.StandardDeviation,  # 386136009
        "p_cancer": codes.DCM.ProbabilityOfCancer,  # 111047
        "ml": hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter"),
        "mm": codes.UCUM.Millimeter,
        "hu": codes.UCUM.HounsfieldUnit,  # [hnsf'U]
        "unitless": codes.UCUM.NoUnits,  # 1
        "ai": codes.DCM.ArtificialIntelligence,  # 123110
        "device": codes.DCM.Device,  # 121007
        "ct_procedure": codes.LN.CTUnspecifiedBodyRegion,  # 25045-6, CID 100
    }


def read_source_series(folder: str | os.PathLike, series_uid: str, image) -> tuple[list, list[int]]:
    """The source series' datasets (no pixel data) and, for each, its slice index in the SimpleITK image.

    Args:
        folder: the DICOM folder the case was read from.
        series_uid: the series read.
        image: the SimpleITK image read from it (its geometry is the segmentation's).

    Raises:
        DicomOutputError: a file's orientation, size or position does not match a slice of ``image``, two files
            are the same slice, or the series has no FrameOfReferenceUID.
    """
    import pydicom
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    where = f"{folder} (series {series_uid})"
    if any("FrameOfReferenceUID" not in ds for ds in datasets):
        raise DicomOutputError(f"{where}: no FrameOfReferenceUID (0020,0052), which a SEG must share with its "
                               "source images")
    d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    expected_orientation = np.concatenate([d[:, 0], d[:, 1]])  # DICOM: row direction, then column direction
    width, height, depth = image.GetSize()
    slices = []
    for f, ds in zip(files, datasets, strict=True):
        name = os.path.basename(f)
        if (int(ds.Rows), int(ds.Columns)) != (height, width):
            raise DicomOutputError(f"{where}: {name} is {ds.Rows}x{ds.Columns}, the volume {height}x{width}")
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(orientation, expected_orientation, atol=ORIENTATION_TOL):
            raise DicomOutputError(f"{where}: {name}'s ImageOrientationPatient differs from the volume's direction")
        index = np.asarray(image.TransformPhysicalPointToContinuousIndex(
            [float(v) for v in ds.ImagePositionPatient]))
        k = int(round(index[2]))
        if np.abs(index - [0, 0, k]).max() > POSITION_TOL or not 0 <= k < depth:
            raise DicomOutputError(f"{where}: {name}'s ImagePositionPatient is not at a slice of the volume "
                                   f"(continuous index {tuple(round(v, 3) for v in index)})")
        slices.append(k)
    if sorted(slices) != list(range(depth)):
        raise DicomOutputError(f"{where}: {len(files)} file(s) for {depth} slice(s), or two files at one slice")
    return datasets, slices


def _software(findings: dict) -> tuple[str, str]:
    version = (findings.get("software") or {}).get("nnunet-liver") or "unknown"
    seg = (findings.get("models") or {}).get("segmentation") or {}
    model = "__".join(str(seg.get(k)) for k in ("trainer", "plans", "configuration") if seg.get(k)) or "nnU-Net"
    return version, model


def build_segmentation(sources: Sequence, slices: Sequence[int], segmentation: np.ndarray, labelled: np.ndarray,
                       lesion_ids: Sequence[int], tracking_uids: Sequence[str], *, tumour_label: int,
                       findings: dict):
    """The SEG (see the module docstring) of a case.

    Args:
        sources: the source datasets in file order; ``slices[i]`` is the array slice of ``sources[i]``. Their
            SpacingBetweenSlices is removed (in memory) so that highdicom derives the SEG's from the slice
            positions: some writers get the tag wrong (GDCM writes 1 for slices of a volume stored head first),
            and a SEG whose spacing disagrees with its frames' positions is not a volume to its readers.
        segmentation: (z, y, x) labels on the source grid (SimpleITK's array order).
        labelled: (z, y, x) lesion ids (0 background).
        lesion_ids: the lesions, in findings.json's order; lesion ``lesion_ids[k]`` becomes segment ``2 + k``.
        tracking_uids: one tracking UID per lesion (shared with the SR).
        tumour_label: the tumour value of ``segmentation``.
        findings: the case's findings (software and model names).
    """
    import highdicom as hd

    c = _codes()
    version, model = _software(findings)
    n_segments = 1 + len(lesion_ids)
    if n_segments > np.iinfo(np.uint16).max:
        raise DicomOutputError(f"{len(lesion_ids)} lesions: more than a SEG's 65535 segments")
    dtype = np.uint8 if n_segments <= np.iinfo(np.uint8).max else np.uint16
    label_map = np.zeros(segmentation.shape, dtype=dtype)
    label_map[(segmentation >= 1) & (segmentation != tumour_label)] = 1
    value = np.zeros(int(labelled.max(initial=0)) + 1, dtype=dtype)
    value[np.asarray(lesion_ids, dtype=np.int64)] = np.arange(2, 2 + len(lesion_ids), dtype=dtype)
    lesion_voxels = labelled > 0
    label_map[lesion_voxels] = value[labelled[lesion_voxels]]
    # frame i of the SEG's input is the slice of source image i (highdicom pairs them by position in the list)
    pixel_array = label_map[np.asarray(slices, dtype=np.int64)]

    algorithm = hd.AlgorithmIdentificationSequence(name="nnunet-liver", family=c["ai"], version=version,
                                                   parameters={"model": model})
    descriptions = [hd.seg.SegmentDescription(
        segment_number=1, segment_label="Liver", segmented_property_category=c["anatomical_structure"],
        segmented_property_type=c["liver"], algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id="Liver",
        display_color=hd.color.CIELabColor.from_rgb(*LIVER_RGB))]
    for k, (lesion_id, uid) in enumerate(zip(lesion_ids, tracking_uids, strict=True)):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=2 + k, segment_label=f"Lesion {lesion_id}",
            segmented_property_category=c["abnormal_structure"], segmented_property_type=c["neoplasm"],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=uid, tracking_id=f"Lesion {lesion_id}", anatomic_regions=[c["liver"]],
            display_color=hd.color.CIELabColor.from_rgb(*LESION_RGB)))
    for ds in sources:
        if "SpacingBetweenSlices" in ds:
            del ds.SpacingBetweenSlices
    return hd.seg.Segmentation(
        source_images=list(sources), pixel_array=pixel_array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnunet-liver",
        manufacturer_model_name=model[:64], software_versions=version, device_serial_number="none",
        content_label="LIVER_SEG", content_description="nnunet-liver predict: liver and lesions",
        series_description="nnunet-liver segmentation")


def _tracking(identifier: str, uid: str):
    import highdicom as hd

    return hd.sr.TrackingIdentifier(uid=uid, identifier=identifier)


def build_report(seg, sources: Sequence, findings: dict, tracking_uids: Sequence[str]):
    """The TID 1500 report (see the module docstring) of a case whose SEG is ``seg``.

    Args:
        seg: the case's SEG (lesion ``findings["lesions"][k]`` is its segment ``2 + k``).
        sources: the source datasets (recorded as evidence with the SEG).
        findings: the case's findings.
        tracking_uids: the lesions' tracking UIDs (those of the SEG's lesion segments).
    """
    import highdicom as hd

    c = _codes()
    version, model = _software(findings)
    algorithm = hd.sr.AlgorithmIdentification(name="nnunet-liver", version=version, parameters=[model])
    liver_site = [hd.sr.FindingSite(anatomic_location=c["liver"])]
    source_series = hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID)

    def measurement(name, value, unit, derivation=None):
        # the algorithm is named once per group (TID 1411/1501), not again in each measurement
        return hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation)

    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking("Liver", hd.UID()), finding_type=c["liver"],
            finding_category=c["anatomical_structure"], algorithm_id=algorithm, finding_sites=liver_site,
            measurements=[measurement(c["volume"], findings["liver_volume_ml"], c["ml"])]),
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking("Tumour (all lesions)", hd.UID()), finding_type=c["neoplasm"],
            finding_category=c["abnormal_structure"], algorithm_id=algorithm, finding_sites=liver_site,
            measurements=[measurement(c["volume"], findings["tumour_volume_ml"], c["ml"])]),
    ]
    for k, (row, uid) in enumerate(zip(findings["lesions"], tracking_uids, strict=True)):
        values = [measurement(c["volume"], row["volume_ml"], c["ml"]),
                  measurement(c["long_axis"], row["axial_diameter_mm"], c["mm"]),
                  measurement(c["attenuation"], row["mean_hu"], c["hu"], derivation=c["mean"]),
                  measurement(c["attenuation"], row["std_hu"], c["hu"], derivation=c["std"])]
        if row.get("malignancy_prob") is not None:
            values.append(measurement(c["p_cancer"], row["malignancy_prob"], c["unitless"]))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(f"Lesion {row['lesion_id']}", uid),
            referenced_segment=hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID,
                                                       sop_instance_uid=seg.SOPInstanceUID, segment_number=2 + k,
                                                       source_series=source_series),
            finding_type=c["neoplasm"], finding_category=c["abnormal_structure"], algorithm_id=algorithm,
            finding_sites=liver_site, measurements=values))
    observer = hd.sr.ObserverContext(
        observer_type=c["device"],
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="nnunet-liver", manufacturer_name="nnunet-liver", model_name=model[:64]))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=c["ct_procedure"], imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg], content=report[0], series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnunet-liver", is_complete=True,
        is_final=False, is_verified=False, series_description="nnunet-liver findings")


def write_dicom_outputs(folder: str | os.PathLike, *, volume, segmentation: np.ndarray, labelled: np.ndarray,
                        findings: dict, tumour_label: int) -> dict:
    """Write ``segmentation.dcm`` and ``findings_sr.dcm`` into ``folder`` for a DICOM case.

    Args:
        folder: the case's (staging) folder.
        volume: the case's ``inputs.CTVolume``.
        segmentation: (z, y, x) labels written to segmentation.nii.gz.
        labelled: (z, y, x) lesion ids of findings.json's lesions.
        findings: the case's findings (lesion rows, volumes, software).
        tumour_label: the tumour value.

    Returns:
        What findings.json records under ``dicom``: the files and their UIDs, or, for an input that is not a
        DICOM series, ``NOT_DICOM_NOTE``.

    Raises:
        DicomOutputError: the source series cannot carry a SEG (see :func:`read_source_series`).
    """
    import highdicom as hd

    if volume.source.kind != "dicom":
        return {"written": False, "note": NOT_DICOM_NOTE}
    folder = Path(folder)
    sources, slices = read_source_series(volume.source.path, volume.info["series_uid"], volume.image)
    lesion_ids = [int(row["lesion_id"]) for row in findings["lesions"]]
    tracking_uids = [hd.UID() for _ in lesion_ids]
    seg = build_segmentation(sources, slices, segmentation, labelled, lesion_ids, tracking_uids,
                             tumour_label=tumour_label, findings=findings)
    seg.save_as(folder / SEG_FILE)
    sr = build_report(seg, sources, findings, tracking_uids)
    sr.save_as(folder / SR_FILE)
    return {
        "written": True,
        "seg": SEG_FILE, "sr": SR_FILE,
        "study_instance_uid": str(sources[0].StudyInstanceUID),
        "source_series_instance_uid": str(sources[0].SeriesInstanceUID),
        "seg_sop_instance_uid": str(seg.SOPInstanceUID), "sr_sop_instance_uid": str(sr.SOPInstanceUID),
        "segments": {"1": "Liver (labels >= 1 without the tumour label)",
                     **{str(2 + k): f"Lesion {lid}" for k, lid in enumerate(lesion_ids)}},
    }


def write_case_dicom(folder: str | os.PathLike, *, volume, segmentation: np.ndarray, labelled: np.ndarray,
                     findings: dict, tumour_label: int, enabled: bool = True) -> dict:
    """:func:`write_dicom_outputs` for ``predict``: a SEG/SR that cannot be written is a warning in
    ``findings["warnings"]`` (the case's other files are still written), never a failed case.

    Returns:
        What findings.json records under ``dicom``.
    """
    if not enabled:
        return {"written": False, "note": "skipped (--no-dicom)"}
    try:
        return write_dicom_outputs(folder, volume=volume, segmentation=segmentation, labelled=labelled,
                                   findings=findings, tumour_label=tumour_label)
    except Exception as e:  # highdicom refuses some source series (missing or malformed attributes)
        for name in (SEG_FILE, SR_FILE):
            Path(folder, name).unlink(missing_ok=True)
        message = f"DICOM SEG/SR not written: {e if isinstance(e, DicomOutputError) else f'{type(e).__name__}: {e}'}"
        findings["warnings"].append(message)
        return {"written": False, "note": message}


def console_note(cases: Sequence) -> str | None:
    """One line for the console when some cases are not DICOM series (None when all are)."""
    files = [c for c in cases if c.kind != "dicom"]
    if not files:
        return None
    if len(cases) == 1:
        return NOT_DICOM_NOTE
    return (f"no DICOM SEG/SR for {len(files)} of {len(cases)} case(s): they are image files, not DICOM series, "
            "so there is no study/series to reference")
