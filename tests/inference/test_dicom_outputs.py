"""DICOM-SEG and TID 1500 SR of ``nnunet-liver predict``, read back with highdicom and checked against what they
were made from: the SEG's pixels against the label map on the source grid (found from each source file's
ImagePositionPatient, not through the writer's own mapping), its frames against the source series' geometry,
the SR's values against findings.json; ``dciodvfy`` (Debian's dicom3tools) on both where it is installed.

The fast tests build the outputs from a hand-made label map on synthetic series (identity, reversed slice order,
rotated and flipped axes); the slow ones run ``predict`` with the phantom-trained model."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy import ndimage

from nnunet_liver.inference import dicom_outputs as dcm
from nnunet_liver.inference.inputs import CaseInput, read_case
from nnunet_liver.inference.lesions import label_lesions, measure_lesions
from nnunet_liver.inference.report import lesion_rows
from tests.inference.helpers import lesion_region, write_dicom_series

TUMOUR = 2
DCIODVFY = shutil.which("dciodvfy")
DCENTVFY = shutil.which("dcentvfy")


def ct_series(image: sitk.Image, folder: Path) -> str:
    """``image`` as a CT series with what a scanner's series has and GDCM leaves out: a frame of reference, a study
    of its own (GDCM's helper series reuse the first instance's UID), patient and study identifiers, the same
    study date and time in every file. Returns the series UID."""
    uid = write_dicom_series(image, folder)
    study, frame = generate_uid(), generate_uid()
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = study, frame, ""
        ds.PatientID, ds.PatientName, ds.StudyID, ds.AccessionNumber = "PHANTOM-1", "Phantom^Liver", "1", "A1"
        ds.StudyDate, ds.StudyTime, ds.SeriesNumber = "20240102", "101500", 3
        ds.save_as(f)
    return uid


def synthetic_ct(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=(7, 22, 26), seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0)
    hu[:, 3:19, 4:23] = rng.normal(60, 15, (shape[0], 16, 19))
    image = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((12.5, -40.25, 300.0))
    image.SetDirection(direction)
    return image


def synthetic_labels(shape) -> np.ndarray:
    """Liver with three lesions, none symmetric in z (a reversed slice order would show)."""
    seg = np.zeros(shape, np.uint8)
    seg[:, 5:17, 6:21] = 1
    seg[0:3, 6:9, 7:10] = TUMOUR  # lesion 1: slices 0-2
    seg[4, 10:13, 12:17] = TUMOUR  # lesion 2: one slice
    seg[5:7, 13:16, 7:9] = TUMOUR  # lesion 3
    return seg


def synthetic_case(tmp_path: Path, direction, probabilities=True):
    """(volume read as predict reads it, label map on its grid, labelled lesions, findings)."""
    folder = tmp_path / "series"
    ct_series(synthetic_ct(direction), folder)
    volume = read_case(CaseInput("case", folder, "dicom"))
    seg = synthetic_labels(volume.array.shape)
    labelled, n = label_lesions(seg, TUMOUR)
    lesions = measure_lesions(labelled, n, volume.array, volume.image)
    probs = {les.lesion_id: 0.1 + 0.2 * les.lesion_id for les in lesions} if probabilities else None
    voxel_ml = float(np.prod(volume.image.GetSpacing())) / 1000
    findings = {"case": "case", "lesions": lesion_rows("case", lesions, probs), "warnings": [],
                "liver_volume_ml": round(float((seg >= 1).sum()) * voxel_ml, 3),
                "tumour_volume_ml": round(float((seg == TUMOUR).sum()) * voxel_ml, 3),
                "software": {"nnunet-liver": "0.1.0"},
                "models": {"segmentation": {"trainer": "T", "plans": "P", "configuration": "3d_fullres"}}}
    return volume, seg, labelled, findings


def write_nifti(seg: np.ndarray, reference: sitk.Image, path: Path) -> Path:
    img = sitk.GetImageFromArray(seg)
    img.CopyInformation(reference)
    sitk.WriteImage(img, str(path))
    return path


# ------------------------------------------------------------------------------------------------------------
# independent checks of the files


def source_files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.glob("*.dcm"))]


def source_slices(img: sitk.Image, sources: list[pydicom.Dataset]) -> np.ndarray:
    """For each source file, the slice of ``img`` whose first voxel lies at the file's ImagePositionPatient
    (within 1 micrometre)."""
    corners = np.array([img.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(img.GetDepth())])
    out = []
    for ds in sources:
        dist = np.linalg.norm(corners - np.array([float(v) for v in ds.ImagePositionPatient]), axis=1)
        assert dist.min() < 1e-3, dist.min()
        out.append(int(dist.argmin()))
    return np.array(out)


def check_seg(seg_path: Path, nifti: Path, source_folder: Path, findings: dict):
    """The SEG against segmentation.nii.gz and the source series; returns the parsed SEG."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    seg = hd.seg.segread(seg_path)
    sources = source_files(source_folder)
    src = sources[0]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.PatientID == src.PatientID and seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [src.SeriesInstanceUID]
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == set(by_uid)

    # frame geometry: the source's pixel spacing, orientation, and each frame at its source image's position
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in src.PixelSpacing]
    assert float(measures.SliceThickness) == float(src.SliceThickness)
    steps = np.diff(np.sort([float(np.dot(ds.ImagePositionPatient, np.cross(
        [float(v) for v in src.ImageOrientationPatient[:3]], [float(v) for v in src.ImageOrientationPatient[3:]])))
        for ds in sources]))
    assert float(measures.SpacingBetweenSlices) == pytest.approx(steps.mean(), abs=1e-4)
    # highdicom rebuilds a regular volume from the frames (it refuses one whose spacing and positions disagree)
    assert seg.get_volume().spacing[0] == pytest.approx(steps.mean(), abs=1e-4)
    assert np.allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                       [float(v) for v in src.ImageOrientationPatient], atol=1e-6)
    assert (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in by_uid[ref].ImagePositionPatient], atol=1e-4)

    # pixels, segment by segment, exactly the label map's: (n_sources, rows, columns) in the sources' order
    img = sitk.ReadImage(str(nifti))
    slices = source_slices(img, sources)
    label_map = sitk.GetArrayFromImage(img)
    labels = label_map[slices]
    numbers = list(seg.segment_numbers)
    lesions = findings["lesions"]
    assert numbers == list(range(1, 2 + len(lesions)))
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources], segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True)
    assert np.array_equal(pixels[..., 0], (labels >= 1) & (labels != TUMOUR))
    components, n = ndimage.label(label_map == TUMOUR)  # the lesion ids of findings.json
    assert n == len(lesions)
    components = components[slices]
    for k, row in enumerate(lesions):
        assert np.array_equal(pixels[..., 1 + k], components == row["lesion_id"]), row["lesion_id"]
    assert np.array_equal(pixels[..., 1:].any(axis=-1), labels == TUMOUR)

    liver = seg.get_segment_description(1)
    assert liver.segment_label == "Liver"
    assert liver.segmented_property_category == codes.SCT.AnatomicalStructure
    assert liver.segmented_property_type == codes.SCT.Liver
    for k, row in enumerate(lesions):
        d = seg.get_segment_description(2 + k)
        assert d.segment_label == d.tracking_id == f"Lesion {row['lesion_id']}"
        assert d.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
        assert d.segmented_property_type == codes.SCT.Neoplasm
        assert [r.value for r in d.anatomic_regions] == [codes.SCT.Liver.value]
    return seg


def check_sr(sr_path: Path, seg, findings: dict, voxel_ml: float):
    """The SR's groups against findings.json and the SEG's segments."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == seg.StudyInstanceUID and sr.PatientID == seg.PatientID
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    assert sr.content[0].ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    assert sr.content[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"

    def values(group) -> dict:
        out = {}
        for m in group.get_measurements():
            key = (m.name.value, None if m.derivation is None else m.derivation.value)
            out[key] = (m.value, m.unit.value)
        return out

    overall = {g.tracking_identifier: values(g) for g in report.get_image_measurement_groups()}
    volume = (codes.SCT.Volume.value, None)
    assert overall == {"Liver": {volume: (findings["liver_volume_ml"], "ml")},
                       "Tumour (all lesions)": {volume: (findings["tumour_volume_ml"], "ml")}}

    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(findings["lesions"])
    frames = seg.PerFrameFunctionalGroupsSequence
    hu = codes.DCM.AttenuationCoefficient.value
    for group, row in zip(groups, findings["lesions"], strict=True):
        name = f"Lesion {row['lesion_id']}"
        assert group.tracking_identifier == name
        ref = group.referenced_segment[0]
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        (number,) = ref.referenced_segment_numbers
        description = seg.get_segment_description(number)
        assert description.segment_label == name and description.tracking_uid == group.tracking_uid
        expected = {volume: (row["volume_ml"], "ml"),
                    (codes.SCT.LongAxis.value, None): (row["axial_diameter_mm"], "mm"),
                    (hu, codes.SCT.Mean.value): (row["mean_hu"], "[hnsf'U]"),
                    (hu, codes.SCT.StandardDeviation.value): (row["std_hu"], "[hnsf'U]")}
        if row["malignancy_prob"] is not None:
            expected[(codes.DCM.ProbabilityOfCancer.value, None)] = (row["malignancy_prob"], "1")
        assert values(group) == expected, name  # exact: the values findings.json holds
        # the volume is that of the referenced segment (its frames' pixels, counted here)
        voxels = sum(int(np.count_nonzero(seg.pixel_array[i])) for i, f in enumerate(frames)
                     if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == number)
        assert row["volume_ml"] == pytest.approx(voxels * voxel_ml, abs=5e-5)
    return sr


def dicom3tools_errors(*paths: Path) -> tuple[list[str], str]:
    """dciodvfy's error lines for each file (``Error - ...``) and its whole output."""
    errors, text = [], ""
    for p in paths:
        run = subprocess.run([DCIODVFY, str(p)], capture_output=True, text=True, check=False)
        out = run.stdout + run.stderr
        text += f"--- dciodvfy {p.name}\n{out}"
        errors += [f"{p.name}: {line}" for line in out.splitlines() if line.startswith("Error")]
    return errors, text


# ------------------------------------------------------------------------------------------------------------
# fast: the writer on synthetic series

ROTATED = tuple((np.array([[np.cos(0.4), -np.sin(0.4), 0], [np.sin(0.4), np.cos(0.4), 0], [0, 0, 1]])
                 @ np.diag([-1, -1, 1])).ravel())
GEOMETRIES = {
    "identity": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    # slices written head to feet: GDCM reads them back in the other order, so the file order, the array's
    # slice order and the positions all differ
    "reversed_slices": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    "rotated_flipped": ROTATED,
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_seg_and_sr_on_the_source_grid(tmp_path, geometry):
    volume, seg, labelled, findings = synthetic_case(tmp_path, GEOMETRIES[geometry])
    out = tmp_path / "out"
    out.mkdir()
    info = dcm.write_case_dicom(out, volume=volume, segmentation=seg, labelled=labelled, findings=findings,
                                tumour_label=TUMOUR)
    assert info["written"] and findings["warnings"] == []
    assert sorted(p.name for p in out.iterdir()) == [dcm.SR_FILE, dcm.SEG_FILE]
    if geometry == "reversed_slices":  # the case this test exists for: the files run against the array
        positions = [float(ds.ImagePositionPatient[2]) for ds in source_files(tmp_path / "series")]
        assert positions[0] > positions[-1] and volume.image.GetDirection()[8] == 1
    nifti = write_nifti(seg, volume.image, tmp_path / "segmentation.nii.gz")
    seg_ds = check_seg(out / dcm.SEG_FILE, nifti, tmp_path / "series", findings)
    voxel_ml = float(np.prod(volume.image.GetSpacing())) / 1000
    check_sr(out / dcm.SR_FILE, seg_ds, findings, voxel_ml)
    assert info["seg_sop_instance_uid"] == seg_ds.SOPInstanceUID
    assert info["segments"]["1"].startswith("Liver") and len(info["segments"]) == 1 + len(findings["lesions"])


def test_no_lesions_and_no_classifier(tmp_path):
    volume, seg, labelled, findings = synthetic_case(tmp_path, GEOMETRIES["identity"], probabilities=False)
    seg[seg == TUMOUR] = 1
    labelled[:] = 0
    findings["lesions"], findings["tumour_volume_ml"] = [], 0.0
    out = tmp_path / "out"
    out.mkdir()
    assert dcm.write_case_dicom(out, volume=volume, segmentation=seg, labelled=labelled, findings=findings,
                                tumour_label=TUMOUR)["written"]
    seg_ds = check_seg(out / dcm.SEG_FILE, write_nifti(seg, volume.image, tmp_path / "s.nii.gz"),
                       tmp_path / "series", findings)
    check_sr(out / dcm.SR_FILE, seg_ds, findings, 1.0)


def test_series_without_frame_of_reference_is_a_warning(tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(synthetic_ct(), folder)  # GDCM writes no FrameOfReferenceUID
    volume = read_case(CaseInput("case", folder, "dicom"))
    seg = synthetic_labels(volume.array.shape)
    labelled, _ = label_lesions(seg, TUMOUR)
    findings = {"lesions": [], "warnings": [], "liver_volume_ml": 1.0, "tumour_volume_ml": 0.0}
    out = tmp_path / "out"
    out.mkdir()
    info = dcm.write_case_dicom(out, volume=volume, segmentation=seg, labelled=labelled, findings=findings,
                                tumour_label=TUMOUR)
    assert not info["written"] and "FrameOfReferenceUID" in info["note"]
    assert findings["warnings"] == [info["note"]] and str(folder) in info["note"]
    assert list(out.iterdir()) == []


def test_image_files_get_a_note_not_dicom(tmp_path):
    image = synthetic_ct()
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    volume = read_case(CaseInput("ct", tmp_path / "ct.nii.gz", "file"))
    findings = {"lesions": [], "warnings": []}
    info = dcm.write_case_dicom(tmp_path, volume=volume, segmentation=np.zeros(volume.array.shape, np.uint8),
                                labelled=np.zeros(volume.array.shape, np.int32), findings=findings, tumour_label=2)
    assert info == {"written": False, "note": dcm.NOT_DICOM_NOTE} and findings["warnings"] == []
    assert "not a DICOM series" in dcm.NOT_DICOM_NOTE and "study/series to reference" in dcm.NOT_DICOM_NOTE
    assert not list(tmp_path.glob("*.dcm"))
    files = [CaseInput("a", tmp_path / "a.nii.gz", "file"), CaseInput("b", tmp_path / "b", "dicom")]
    assert dcm.console_note(files[:1]) == dcm.NOT_DICOM_NOTE
    assert dcm.console_note(files[1:]) is None
    assert dcm.console_note(files).startswith("no DICOM SEG/SR for 1 of 2 case(s)")
    skipped = dcm.write_case_dicom(tmp_path, volume=volume, segmentation=None, labelled=None, findings=findings,
                                   tumour_label=2, enabled=False)
    assert skipped == {"written": False, "note": "skipped (--no-dicom)"}


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian: apt-get install dicom3tools)")
def test_dciodvfy_finds_no_errors(tmp_path):
    volume, seg, labelled, findings = synthetic_case(tmp_path, GEOMETRIES["rotated_flipped"])
    out = tmp_path / "out"
    out.mkdir()
    dcm.write_case_dicom(out, volume=volume, segmentation=seg, labelled=labelled, findings=findings,
                         tumour_label=TUMOUR)
    errors, text = dicom3tools_errors(out / dcm.SEG_FILE, out / dcm.SR_FILE)
    assert not errors, text
    if DCENTVFY is not None:  # patient, study and frame-of-reference attributes agree across source, SEG and SR
        run = subprocess.run([DCENTVFY, *map(str, sorted((tmp_path / "series").glob("*.dcm"))),
                              str(out / dcm.SEG_FILE), str(out / dcm.SR_FILE)], capture_output=True, text=True,
                             check=False)
        report = run.stdout + run.stderr
        assert not [line for line in report.splitlines() if line.startswith("Error")], report


# ------------------------------------------------------------------------------------------------------------
# slow: predict end to end


def predict(models, *argv) -> int:
    from nnunet_liver.cli import main as cli_main

    return cli_main.main(["predict", "-m", str(models["model"]), "--threads", "1", "--no-progress",
                          *map(str, argv)])


@pytest.fixture
def env(predict_models, monkeypatch):
    for k, v in predict_models["env"].items():
        monkeypatch.setenv(k, v)
    return predict_models


@pytest.fixture
def phantom(env, tmp_path) -> tuple[Path, Path]:
    """The test phantom's lesion region as NIfTI and as a CT series (see helpers.lesion_region)."""
    nii = tmp_path / "liver_005_0000.nii.gz"
    image = lesion_region(env["raw"] / "imagesTs" / "liver_005_0000.nii.gz",
                          env["raw"] / "labelsTs" / "liver_005.nii.gz", nii)
    folder = tmp_path / "dicom" / "liver_005"
    ct_series(image, folder)
    return nii, folder


@pytest.mark.slow
def test_predict_writes_seg_and_sr_for_dicom(env, phantom, tmp_path, capsys):
    _, folder = phantom
    out = tmp_path / "out"
    assert predict(env, "-i", folder, "-o", out, "--classifier", env["classifier"], "--no-figures") == 0
    err = capsys.readouterr().err
    assert "DICOM SEG/SR" not in err, err
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert findings["dicom"]["written"] and findings["dicom"]["seg"] == dcm.SEG_FILE
    assert {dcm.SEG_FILE, dcm.SR_FILE} <= {p.name for p in out.iterdir()}
    assert all(r["malignancy_prob"] is not None for r in findings["lesions"])
    seg = check_seg(out / dcm.SEG_FILE, out / "segmentation.nii.gz", folder, findings)
    spacing = sitk.ReadImage(str(out / "segmentation.nii.gz")).GetSpacing()
    check_sr(out / dcm.SR_FILE, seg, findings, float(np.prod(spacing)) / 1000)
    assert findings["dicom"]["source_series_instance_uid"] == findings["input"]["series_uid"]
    if DCIODVFY is not None:
        errors, text = dicom3tools_errors(out / dcm.SEG_FILE, out / dcm.SR_FILE)
        assert not errors, text

    # --no-dicom: the same case without them
    out2 = tmp_path / "out2"
    assert predict(env, "-i", folder, "-o", out2, "--no-figures", "--no-dicom") == 0
    assert not list(out2.glob("*.dcm"))
    assert json.loads((out2 / "findings.json").read_text(encoding="utf-8"))["dicom"]["note"] == \
        "skipped (--no-dicom)"


@pytest.mark.slow
def test_predict_says_why_nifti_gets_no_dicom(env, phantom, tmp_path, capsys):
    nii, _ = phantom
    out = tmp_path / "out"
    assert predict(env, "-i", nii, "-o", out, "--no-figures") == 0
    err = capsys.readouterr().err
    assert err.count(dcm.NOT_DICOM_NOTE) == 1, err
    assert not list(out.glob("*.dcm"))
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert findings["dicom"] == {"written": False, "note": dcm.NOT_DICOM_NOTE}
