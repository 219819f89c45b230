"""results.json validation: every problem stops with a message naming the file, the key and the problem."""
from __future__ import annotations

import copy
import json

import pytest

from nnunet_liver.evaluation.report import ManifestError, load_manifest


@pytest.fixture
def good(results_source) -> dict:
    """The test manifest with absolute paths, so it can be written anywhere."""
    m = json.loads((results_source / "results.json").read_text(encoding="utf-8"))
    for entry in m["segmentation"]["models"]:
        for key in ("predictions", "evaluation"):
            if key in entry:
                entry[key] = str(results_source / entry[key])
    m["dataset"] = {k: str(results_source / v) for k, v in m["dataset"].items()}
    m["classification"]["evaluation"] = str(results_source / m["classification"]["evaluation"])
    for key in ("reference", "prediction", "evaluation"):
        m["real_ct"][key] = str(results_source / m["real_ct"][key])
    return m


def write(tmp_path, manifest, name="results.json"):
    p = tmp_path / name
    p.write_text(json.dumps(manifest) if not isinstance(manifest, str) else manifest, encoding="utf-8")
    return p


def test_good_manifest_loads_from_file_or_folder(good, tmp_path, results_source):
    m = load_manifest(write(tmp_path, good))
    assert [x.label for x in m.group("table1")] == ["2D U-Net", "3D U-Net", "DualStream"]
    assert [x.label for x in m.group("ablation")] == ["Spatial stream", "+ RWA", "+ attention gates", "DualStream"]
    assert m.reference == "DualStream" and m.reference_given and m.cost_baseline == "3D U-Net"
    assert m.table2["reference"] == "hybrid3d" and m.provenance["synthetic"] is True
    assert m.real_ct.case == "crlm_liver_ct" and m.real_ct.model == "DualStream"
    assert m.real_ct.reference == results_source / "real_ct/reference/crlm_liver_ct.nii.gz"
    # relative paths resolve against the manifest's folder
    rel = load_manifest(results_source)
    assert rel.path == (results_source / "results.json").resolve()
    assert rel.models[0].evaluation == results_source / "evaluation/LiverUNetTrainer_CPU__2d/summary.json"
    # an evaluation folder instead of its summary.json; no reference: the first Table 1 model
    good["segmentation"]["models"][0]["evaluation"] = str(rel.models[0].evaluation.parent)
    del good["segmentation"]["reference"]
    m = load_manifest(write(tmp_path, good))
    assert m.models[0].evaluation.name == "summary.json" and m.reference == "2D U-Net" and not m.reference_given


def set_path(m, path, value):
    *head, last = path
    for k in head:
        m = m[k]
    if value is KeyError:
        del m[last]
    else:
        m[last] = value


CASES = [
    (("format",), "nnunet_liver.results/2", "format: expected 'nnunet_liver.results/1', got 'nnunet_liver.results/2'"),
    (("format",), KeyError, "format: missing"),
    (("segmentaion",), {}, "unknown key 'segmentaion'"),
    (("provenance", "synthetic"), "yes", "provenance.synthetic: must be true or false"),
    (("provenance", "date"), "2026", "provenance: unknown key 'date'"),
    (("provenance", "data"), 3, "provenance.data: must be a non-empty string"),
    (("dataset", "images"), "/nonexistent/imagesTs", "dataset.images: /nonexistent/imagesTs is not a folder"),
    (("segmentation", "models"), [], "segmentation.models: must be a non-empty list"),
    (("segmentation", "models", 1, "group"), "table 1", "segmentation.models[1].group: must be 'table1' or 'ablation'"),
    (("segmentation", "models", 1, "label"), "2D U-Net", "segmentation.models[1].label: '2D U-Net' appears twice"),
    (("segmentation", "models", 0, "evaluaton"), "x", "segmentation.models[0]: unknown key 'evaluaton'"),
    (("segmentation", "models", 0, "evaluation"), KeyError, "segmentation.models[0].evaluation: missing"),
    (("segmentation", "models", 0, "evaluation"), "nothing/summary.json",
     "segmentation.models[0].evaluation: nothing/summary.json does not exist"),
    (("segmentation", "models", 0, "predictions"), "nothing",
     "segmentation.models[0].predictions: nothing is not a folder"),
    (("segmentation", "models", 0, "cost", "params"), -1, "segmentation.models[0].cost.params: must not be negative"),
    (("segmentation", "models", 0, "cost", "seconds_per_case"), "fast",
     "segmentation.models[0].cost.seconds_per_case: must be a finite number or null"),
    (("segmentation", "models", 0, "cost", "patch_size"), [8, 0],
     "cost.patch_size: must be a list of positive integers"),
    (("segmentation", "models", 0, "cost", "gpu_hours"), 1, "cost: unknown key 'gpu_hours'"),
    (("segmentation", "reference"), "Dual Stream", "segmentation.reference: 'Dual Stream' is not the label of a model"),
    (("segmentation", "cost_baseline"), "UNet", "segmentation.cost_baseline: 'UNet' is not the label of a model"),
    (("classification", "evaluation"), KeyError, "classification.evaluation: missing"),
    (("classification", "preset"), 1, "classification.preset: must be a non-empty string"),
    (("real_ct",), [], "real_ct: must be an object, got a list"),
    (("real_ct", "imgae"), "ct.nii.gz", "real_ct: unknown key 'imgae'"),
    (("real_ct", "evaluation"), KeyError, "real_ct.evaluation: missing"),
    (("real_ct", "evaluation"), "nothing/summary.json", "real_ct.evaluation: nothing/summary.json does not exist"),
    (("real_ct", "image"), "nothing/ct.nii.gz", "real_ct.image: nothing/ct.nii.gz does not exist"),
    (("real_ct", "reference"), "nothing/seg.nii.gz", "real_ct.reference: nothing/seg.nii.gz does not exist"),
    (("real_ct", "prediction"), "nothing/seg.nii.gz", "real_ct.prediction: nothing/seg.nii.gz does not exist"),
    (("real_ct", "model_folder"), "nothing", "real_ct.model_folder: nothing is not a folder"),
    (("real_ct", "label"), 3, "real_ct.label: must be a non-empty string"),
]


@pytest.mark.parametrize("path, value, message", CASES, ids=[c[2][:40] for c in CASES])
def test_manifest_errors_name_the_file_and_key(good, tmp_path, path, value, message):
    bad = copy.deepcopy(good)
    set_path(bad, path, value)
    p = write(tmp_path, bad)
    with pytest.raises(ManifestError) as e:
        load_manifest(p)
    assert str(e.value).startswith(f"{p.resolve()}: ") and message in str(e.value)


def test_errors_in_the_files_it_names(good, tmp_path, results_source):
    # not JSON, not a summary.json, a folder without table2.json: the message names that file and the key
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    bad = copy.deepcopy(good)
    bad["segmentation"]["models"][2]["evaluation"] = str(tmp_path / "broken.json")
    with pytest.raises(ManifestError, match=r"broken.json: not valid JSON .* named by .*results.json "
                                            r"segmentation.models\[2\].evaluation"):
        load_manifest(write(tmp_path, bad))
    bad = copy.deepcopy(good)
    bad["segmentation"]["models"][2]["evaluation"] = good["classification"]["evaluation"] + "/table2.json"
    with pytest.raises(ManifestError, match=r"table2.json: not a summary.json of nnunet-liver evaluate"):
        load_manifest(write(tmp_path, bad))
    bad = copy.deepcopy(good)
    bad["classification"]["evaluation"] = str(results_source / "evaluation")
    with pytest.raises(ManifestError, match=r"classification.evaluation: .*/evaluation holds no table2.json"):
        load_manifest(write(tmp_path, bad))
    table2 = tmp_path / "cls_eval"
    table2.mkdir()
    (table2 / "table2.json").write_text(json.dumps({"models": {"hybrid3d": {"mean": {}}}}), encoding="utf-8")
    bad["classification"]["evaluation"] = str(table2)
    with pytest.raises(ManifestError, match=r"table2.json: not a table2.json of nnunet-liver classify evaluate "
                                            r"\(model 'hybrid3d' lacks mean/std/pooled\)"):
        load_manifest(write(tmp_path, bad))


def test_real_ct_evaluation_must_be_a_one_case_summary(good, tmp_path):
    bad = copy.deepcopy(good)
    bad["real_ct"]["evaluation"] = good["segmentation"]["models"][0]["evaluation"]  # 3 phantom cases
    with pytest.raises(ManifestError, match=r"summary.json: holds 3 cases \(liver_.*\); the real-CT section shows "
                                            r"one; named by .*results.json real_ct.evaluation"):
        load_manifest(write(tmp_path, bad))
    bad["real_ct"]["evaluation"] = good["classification"]["evaluation"] + "/table2.json"
    with pytest.raises(ManifestError, match=r"table2.json: not a summary.json of nnunet-liver evaluate .*"
                                            r"real_ct.evaluation"):
        load_manifest(write(tmp_path, bad))
    # an evaluation folder instead of its summary.json; no real_ct: none
    bad["real_ct"]["evaluation"] = str(tmp_path)
    with pytest.raises(ManifestError, match="real_ct.evaluation: .* holds no summary.json"):
        load_manifest(write(tmp_path, bad))
    del bad["real_ct"]
    assert load_manifest(write(tmp_path, bad)).real_ct is None


def test_not_a_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no results.json in this folder"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no such file or folder"):
        load_manifest(tmp_path / "missing.json")
    with pytest.raises(ManifestError, match=r"results.json: not valid JSON \(.* at line 1"):
        load_manifest(write(tmp_path, "[1, 2"))
    with pytest.raises(ManifestError, match=r"results.json: must be a JSON object, got a list$"):
        load_manifest(write(tmp_path, "[1, 2]"))
