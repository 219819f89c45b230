"""``nnunet-liver report`` on results made by the real producers (see conftest.py): every table and figure is
there, the page is self-contained, the numbers equal those recomputed from summary.json and table2.json, and
missing sections are named with the command that produces them."""
from __future__ import annotations

import base64
import json
import math
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nnunet_liver.cli import main as cli_main
from nnunet_liver.evaluation.report.build import (
    fmt_ci,
    fmt_delta,
    fmt_int,
    fmt_mean_std,
    fmt_num,
    fmt_p,
    fmt_ratio,
    fmt_seconds,
    fmt_si,
)

TABLES = ("table1-metrics", "table1-tests", "ablation-metrics", "ablation-tests", "cost-table", "table2-folds",
          "table2-pooled", "table2-tests", "real-ct-metrics", "real-ct-lesions")
FIGURES = {"figure3": "figure3_qualitative.png", "figure4": "figure4_segmentation_metrics.png",
           "figure5": "figure5_attention.png", "figure6": "figure6_classification_metrics.png",
           "figure7": "figure7_roc.png", "real_ct": "real_ct_contours.png"}
SEG = [(s, k) for s in ("liver", "tumour") for k in ("dice", "iou", "sensitivity", "specificity")]
CLS = ("accuracy", "sensitivity", "specificity", "auc", "ppv", "f1")


class Page(HTMLParser):
    """Tables (by id: header rows and body rows of (text, sub-text) cells), images, links, ids, tags."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.images: list[dict] = []
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()
        self.notes: list[str] = []
        self._table = self._cell = self._row = None
        self._in_sub = self._in_head = False
        self._note_depth = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            assert a["id"] not in self.ids, f"duplicate id {a['id']}"
            self.ids.add(a["id"])
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id"), {"head": [], "body": []})
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table["head" if self._in_head else "body"].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ["", ""]
        elif tag == "span" and a.get("class") == "sub":
            self._in_sub = True
        elif tag == "img":
            self.images.append(a)
        elif tag == "a":
            self.hrefs.append(a.get("href", ""))
        elif tag == "div" and "note" in (a.get("class") or ""):
            self.notes.append("")
            self._note_depth = 1
        elif tag == "div" and self._note_depth:
            self._note_depth += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append((self._cell[0].strip(), self._cell[1].strip()))
            self._cell = None
        elif tag == "span":
            self._in_sub = False
        elif tag == "div" and self._note_depth:
            self._note_depth -= 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1 if self._in_sub else 0] += data
        if self._note_depth:
            self.notes[-1] += data

    def body(self, table: str) -> dict[str, list[tuple[str, str]]]:
        """Body rows by the text of their first cell."""
        return {row[0][0]: row for row in self.tables[table]["body"]}


def run(*argv) -> int:
    return cli_main.main(["report", *map(str, argv)])


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(results_source, tmp_path_factory):
    """The full report of the results folder, written with -o (the source folder is not modified)."""
    out = tmp_path_factory.mktemp("report") / "report"
    assert run(results_source, "-o", out) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    return dict(out=out, html=html, page=Page(html), md=(out / "report.md").read_text(encoding="utf-8"),
                data=json.loads((out / "report_data.json").read_text(encoding="utf-8"),
                                parse_constant=lambda c: pytest.fail(f"{c} in report_data.json")))


def summaries(root: Path) -> dict[str, dict]:
    manifest = json.loads((root / "results.json").read_text(encoding="utf-8"))
    return {(m["label"], m["group"]): json.loads((root / m["evaluation"]).read_text(encoding="utf-8"))
            for m in manifest["segmentation"]["models"]}


def per_case(summary: dict, s: str, k: str) -> dict[str, float]:
    return {c: (math.nan if v[s][k] is None else v[s][k]) for c, v in summary["cases"].items()}


def expected_stat(values) -> tuple[float, float]:
    v = np.array(list(values), dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()), float(v.std())


def test_every_table_and_figure_in_html_and_markdown(report, results_source):
    page, md, out = report["page"], report["md"], report["out"]
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "report.md", "report_data.json"]
    for table in TABLES:
        assert table in page.tables and page.tables[table]["body"], table
    for heading in ("Table 1: Segmentation performance", "Ablation study", "Figure 3: Qualitative comparison",
                    "Figure 4: Segmentation metrics", "Cost table", "Table 2: Classification performance",
                    "Figure 5: Attention", "Figure 6: Classification metrics", "Figure 7: ROC curves",
                    "Phantom to real: one real CT", "What this shows and what it does not",
                    "Inputs and the commands that produced them"):
        assert heading in report["html"] and f" {heading}" in md, heading
    # every figure: embedded in the page, beside the markdown, and the same PNG in both
    assert len(page.images) == len(FIGURES)
    embedded = {img["alt"]: base64.b64decode(img["src"].split(",", 1)[1]) for img in page.images}
    for key, name in FIGURES.items():
        assert f"{key}-image" in page.ids
        assert f"](figures/{name})" in md
        data = (out / "figures" / name).read_bytes()
        width, height = png_size(data)
        assert width > 300 and height > 200 and len(data) > 5000
        assert data in embedded.values(), name
        assert report["data"]["figures"][key]["file"] == f"figures/{name}"
    assert report["data"]["missing"] == []
    # the attention figure and the ROC curves are the classify evaluate PNGs
    src = results_source / "cls/classification/evaluation"
    assert (out / "figures" / FIGURES["figure5"]).read_bytes() == (src / "attention.png").read_bytes()
    assert (out / "figures" / FIGURES["figure7"]).read_bytes() == (src / "roc.png").read_bytes()


def test_page_is_self_contained(report):
    html, page = report["html"], report["page"]
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
    assert all(h.startswith("#") and h[1:] in page.ids for h in page.hrefs)
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "video", "audio", "source"}
    lowered = html.lower()
    for needle in ("http://", "https://", "//cdn", "url(", "@import", "src=\"file", "src='"):
        assert needle not in lowered, needle
    assert lowered.count(" src=") == len(page.images)


def test_provenance_and_synthetic_note_on_top(report):
    html = report["html"]
    banner = html.index("Demo numbers on synthetic phantoms, not LiTS results.")
    assert banner < html.index('id="segmentation"')
    for text in ("synthetic phantoms (Dataset990_LiverPhantom): 1 training / 3 test cases",
                 "no training: perturbed reference labels", "2026-11-27T04:00:00Z", "threads 1"):
        assert text in html[:html.index('id="segmentation"')]
    assert "Demo numbers on synthetic phantoms, not LiTS results." in report["md"].split("## Segmentation")[0]


def test_table1_numbers_equal_summaries(report, results_source):
    data, page = report["data"], report["page"]
    sums = summaries(results_source)
    rows = page.body("table1-metrics")
    ref = sums[("DualStream", "table1")]
    assert data["table1"]["reference"] == "DualStream"
    assert [r["label"] for r in data["table1"]["rows"]] == ["2D U-Net", "3D U-Net", "DualStream"]
    for r in data["table1"]["rows"]:
        summary = sums[(r["label"], "table1")]
        assert r["n_cases"] == len(summary["cases"]) == 3
        cells = rows[r["label"]]
        assert cells[1][0] == "3"
        for i, (s, k) in enumerate(SEG):
            mean, std = expected_stat(per_case(summary, s, k).values())
            assert r["metrics"][s][k]["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-15)
            assert r["metrics"][s][k]["std"] == pytest.approx(std, rel=1e-12, abs=1e-15)
            # the producer's aggregate agrees (same rule: population std over defined cases)
            agg = summary["aggregate"][s]["metrics"][k]
            assert (agg["mean"], agg["std"]) == pytest.approx((mean, std), rel=1e-12, abs=1e-15)
            assert cells[2 + i][0] == fmt_mean_std({"mean": mean, "std": std}), (r["label"], s, k)
        # paired tests against the reference, recomputed with scipy on the per-case Dice
        tests = page.body("table1-tests")[r["label"]]
        if r["label"] == "DualStream":
            assert r["tests"] is None and tests[1][0] == "reference"
            continue
        assert tests[1][0] == "3"
        for j, s in enumerate(("tumour", "liver")):
            a, b = per_case(summary, s, "dice"), per_case(ref, s, "dice")
            common = [c for c in a if c in b]
            x, y = np.array([a[c] for c in common]), np.array([b[c] for c in common])
            t = r["tests"][f"{s}_dice"]
            assert t["n"] == len(common) == 3
            assert t["mean_difference"] == pytest.approx(float((x - y).mean()))
            assert t["t_pvalue"] == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-9)
            assert t["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(x, y).pvalue, rel=1e-9)
            assert [c[0] for c in tests[2 + 3 * j: 5 + 3 * j]] == [
                fmt_delta(t["mean_difference"]), fmt_p(t["t_pvalue"]), fmt_p(t["wilcoxon_pvalue"])]
    # the markdown holds the same cells
    dual = data["table1"]["rows"][2]["metrics"]["tumour"]["dice"]
    assert fmt_mean_std(dual) in report["md"]


def test_ablation_rows_in_order_with_change_vs_previous_row(report, results_source):
    data, page = report["data"], report["page"]
    sums = summaries(results_source)
    labels = ["Spatial stream", "+ RWA", "+ attention gates", "DualStream"]
    assert [r["label"] for r in data["ablation"]["rows"]] == labels
    body = page.tables["ablation-metrics"]["body"]
    assert [row[0][0] for row in body] == labels
    previous = None
    for r, cells in zip(data["ablation"]["rows"], body, strict=True):
        summary = sums[(r["label"], "ablation")]
        for i, (s, k) in enumerate(SEG):
            mean, std = expected_stat(per_case(summary, s, k).values())
            assert cells[2 + i][0] == fmt_mean_std({"mean": mean, "std": std})
            if previous is None:
                assert r["delta"] is None and not cells[2 + i][1].startswith("Δ")
            else:
                prev_mean, _ = expected_stat(per_case(previous, s, k).values())
                assert r["delta"][s][k] == pytest.approx(mean - prev_mean)
                assert cells[2 + i][1].startswith("Δ " + fmt_delta(mean - prev_mean))
        if previous is not None:
            a, b = per_case(summary, "tumour", "dice"), per_case(previous, "tumour", "dice")
            x, y = np.array([a[c] for c in a]), np.array([b[c] for c in a])
            assert r["step_tests"]["tumour_dice"]["t_pvalue"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
            row = page.body("ablation-tests")[r["label"]]
            assert row[3][0] == fmt_p(stats.ttest_rel(x, y).pvalue)
        previous = summary


def test_table2_numbers_equal_table2_json(report, results_source):
    data, page = report["data"], report["page"]
    t2 = json.loads((results_source / "cls/classification/evaluation/table2.json").read_text(encoding="utf-8"))
    assert data["table2"]["reference"] == t2["reference"] == "hybrid3d"
    assert [r["model"] for r in data["table2"]["rows"]] == ["resnet50_2d", "densenet121_2d", "hybrid3d"]
    folds, pooled, tests = page.body("table2-folds"), page.body("table2-pooled"), page.body("table2-tests")
    for r in data["table2"]["rows"]:
        src = t2["models"][r["model"]]
        for i, k in enumerate(CLS):
            assert r["mean"][k] == src["mean"][k] and r["std"][k] == src["std"][k]
            assert r["pooled"][k] == src["pooled"][k] and r["pooled_ci"][k] == src["pooled_ci"][k]
            assert folds[r["name"]][1 + i][0] == fmt_mean_std({"mean": src["mean"][k], "std": src["std"][k]})
            assert pooled[r["name"]][1 + i][0] == fmt_ci(src["pooled"][k], src["pooled_ci"][k])
        assert folds[r["name"]][0][1].endswith(f"{src['n_lesions']} lesions ({src['n_malignant']} malignant)")
        if r["model"] == "hybrid3d":
            assert r["tests"] is None and r["name"] not in tests
            continue
        c = t2["comparisons"][r["model"]]
        row = tests[r["name"]]
        assert r["tests"]["auc_ttest"]["p"] == c["auc_ttest"]["p"]
        assert r["tests"]["delong"]["p"] == c["delong"]["p"]
        assert [x[0] for x in row[1:6]] == [str(len(c["folds"])), fmt_delta(c["auc_ttest"]["mean_diff"]),
                                             fmt_p(c["auc_ttest"]["p"]), fmt_delta(c["accuracy_ttest"]["mean_diff"]),
                                             fmt_p(c["accuracy_ttest"]["p"])]
        assert row[7][0] == fmt_p(c["delong"]["p"])


def test_cost_table_with_ratios_to_the_3d_unet(report, results_source):
    data, page = report["data"], report["page"]
    manifest = json.loads((results_source / "results.json").read_text(encoding="utf-8"))
    given = {m["label"]: m.get("cost", {}) for m in manifest["segmentation"]["models"] if m["group"] == "table1"}
    base = given["3D U-Net"]
    assert data["cost"]["baseline"] == "3D U-Net"
    rows = page.body("cost-table")
    # one row per model label (DualStream is in both groups), Table 1 models first
    assert list(rows) == ["2D U-Net", "3D U-Net", "DualStream", "Spatial stream", "+ RWA", "+ attention gates"]
    for r in data["cost"]["rows"]:
        cost = given.get(r["label"], {})
        cells = rows[r["label"]]
        for i, (key, fmt) in enumerate((("params", fmt_int), ("flops_per_voxel", fmt_si),
                                        ("seconds_per_case", fmt_seconds), ("train_seconds", fmt_seconds))):
            assert r[key] == cost.get(key)
            if key not in cost:
                assert cells[1 + i] == ("—", "")
                continue
            assert cells[1 + i][0] == fmt(cost[key])
            assert r["ratio"][key] == pytest.approx(cost[key] / base[key])
            assert cells[1 + i][1] == f"{fmt_ratio(cost[key] / base[key])} 3D U-Net"
    assert rows["DualStream"][4] == ("—", "")  # no training seconds given
    assert rows["2D U-Net"][6][0] == "48 × 48" and rows["3D U-Net"][5][0] == "8"


def test_figure3_slices_and_dice_labels(report, results_source):
    import SimpleITK as sitk

    info = report["data"]["figures"]["figure3"]
    # every model once; the ablation entries name no predictions folder, their summary.json's files are used
    assert info["columns"] == ["CT", "Ground truth", "2D U-Net", "3D U-Net", "DualStream", "Spatial stream",
                               "+ RWA", "+ attention gates"]
    labels = results_source / "nnunet/nnUNet_raw/Dataset990_LiverPhantom/labelsTs"
    assert [c["case"] for c in info["cases"]] == sorted(p.name[:-7] for p in labels.glob("*.nii.gz"))[:4]
    sums = summaries(results_source)
    for c in info["cases"]:
        lab = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(labels / f"{c['case']}.nii.gz")), "LPS"))
        area = (lab == 2).sum(axis=(1, 2))
        assert c["chosen_by"] == "tumour" and c["slice"] == int(np.argmax(area))
        assert set(c["dice"]) == set(info["columns"][2:])
        for model, d in c["dice"].items():
            group = "table1" if (model, "table1") in sums else "ablation"
            assert d["tumour"] == sums[(model, group)]["cases"][c["case"]]["tumour"]["dice"]


def test_missing_sections_say_what_is_missing_and_which_command_makes_it(results_source, tmp_path, capsys):
    # one Table 1 model only: no provenance, no dataset, no predictions, no ablation, no cost, no classification
    full = json.loads((results_source / "results.json").read_text(encoding="utf-8"))
    model = dict(full["segmentation"]["models"][2])
    model["evaluation"] = str(results_source / model["evaluation"])
    for key in ("predictions", "cost"):
        model.pop(key)
    (tmp_path / "results.json").write_text(json.dumps(
        {"format": "nnunet_liver.results/1", "segmentation": {"models": [model]}}), encoding="utf-8")
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    report = tmp_path / "report"
    data = json.loads((report / "report_data.json").read_text(encoding="utf-8"))
    html = (report / "report.html").read_text(encoding="utf-8")
    md = (report / "report.md").read_text(encoding="utf-8")
    page = Page(html)
    missing = {m["section"]: m for m in data["missing"]}
    assert sorted(missing) == ["ablation", "classification", "cost", "figure3", "provenance", "real_ct"]
    commands = {"classification": "nnunet-liver classify evaluate", "ablation": "DualStreamAblationBaseTrainer",
                "figure3": "dataset.images", "cost": "segmentation.models[].cost", "provenance": "nnunet-liver demo",
                "real_ct": "nnunet-liver predict -i CT"}
    for section, m in missing.items():
        assert commands[section] in m["command"]
        assert m["message"] in out
        assert any(m["message"].split("`")[0] in n and "Produce it with" in n for n in page.notes), section
        assert m["message"].split("`")[0] in md
    assert "Demo numbers on synthetic phantoms" not in html
    assert data["table2"] is None and data["ablation"] is None and data["cost"] is None and data["real_ct"] is None
    assert {k for k, v in data["figures"].items() if v} == {"figure4"}
    # what is there is still rendered: Table 1 with its only model as the reference, Figure 4
    assert data["table1"]["reference"] == "DualStream" and not data["table1"]["reference_given"]
    assert set(page.tables) == {"table1-metrics", "table1-tests", "table1-extent"}
    assert len(page.images) == 1 and (report / "figures" / FIGURES["figure4"]).is_file()
    assert "results.json names no reference" in html

    # no segmentation at all: still a page, with the note
    (tmp_path / "results.json").write_text(json.dumps({"format": "nnunet_liver.results/1", "title": "empty"}),
                                           encoding="utf-8")
    assert run(tmp_path, "--overwrite") == 0
    data = json.loads((report / "report_data.json").read_text(encoding="utf-8"))
    assert {m["section"] for m in data["missing"]} == {"provenance", "segmentation", "real_ct", "classification"}
    assert "nnunet-liver evaluate LABELS PRED" in (report / "report.html").read_text(encoding="utf-8")


def test_refuses_to_overwrite_and_replaces_with_overwrite(results, capsys):
    assert run(results) == 0
    report = results / "report"
    (report / "mine.txt").write_text("keep", encoding="utf-8")
    capsys.readouterr()
    assert run(results / "results.json") == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-liver report: error: ") and "exists (use --overwrite to replace it)" in err
    assert (report / "mine.txt").read_text(encoding="utf-8") == "keep"
    assert run(results, "--overwrite") == 0
    assert not (report / "mine.txt").exists() and (report / "report.html").is_file()
    assert not [p for p in results.iterdir() if p.name.startswith(".report")]  # no temporary folder left


def test_output_folder_holding_inputs_is_refused(results, capsys):
    assert run(results, "-o", results, "--overwrite") == 2
    assert "holds the input" in capsys.readouterr().err
    assert run(results, "-o", results / "evaluation", "--overwrite") == 2
    assert "holds the input" in capsys.readouterr().err
    assert (results / "results.json").is_file() and (results / "evaluation").is_dir()
    # a bad manifest: one line, exit 2, nothing written
    (results / "results.json").write_text("{}", encoding="utf-8")
    assert run(results) == 2
    err = capsys.readouterr().err
    assert "results.json: format: missing" in err and len(err.strip().splitlines()) == 1
    assert not (results / "report").exists()


def test_help_lists_the_command(capsys):
    with pytest.raises(SystemExit):
        cli_main.main(["--help"])
    assert "report" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main.main(["report", "--help"])
    out = capsys.readouterr().out
    assert "nnunet_liver.results/1" in out and "--overwrite" in out


def test_figure3_uses_the_largest_liver_slice_without_tumour(results, tmp_path):
    import SimpleITK as sitk

    labels = results / "nnunet/nnUNet_raw/Dataset990_LiverPhantom/labelsTs"
    path = labels / "liver_001.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[arr == 2] = 1
    no_tumour = sitk.GetImageFromArray(arr)
    no_tumour.CopyInformation(img)
    sitk.WriteImage(no_tumour, str(path), useCompression=True)
    assert run(results, "-o", tmp_path / "out") == 0
    data = json.loads((tmp_path / "out" / "report_data.json").read_text(encoding="utf-8"))
    cases = data["figures"]["figure3"]["cases"]
    lps = sitk.GetArrayFromImage(sitk.DICOMOrient(no_tumour, "LPS"))
    assert cases[0]["case"] == "liver_001" and cases[0]["chosen_by"] == "liver"
    assert cases[0]["slice"] == int(np.argmax((lps > 0).sum(axis=(1, 2))))


def test_a_corrupt_image_leaves_figure3_out_with_the_file_named(results, tmp_path):
    """A truncated test CT: the report still renders, Figure 3 is listed as missing with the file named."""
    images = results / "nnunet/nnUNet_raw/Dataset990_LiverPhantom/imagesTs"
    bad = sorted(images.glob("*_0000.nii.gz"))[0]
    bad.write_bytes(bad.read_bytes()[:200])
    assert run(results, "-o", tmp_path / "out") == 0
    data = json.loads((tmp_path / "out" / "report_data.json").read_text(encoding="utf-8"))
    assert any(bad.name in json.dumps(m) for m in data["missing"]), data["missing"]
    assert "Table 1" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------------
# Phantom to real: the real CT section


def real_ct_summary(root: Path) -> dict:
    return json.loads((root / "real_ct/evaluation/summary.json").read_text(encoding="utf-8"))


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end, text.index(start))]


def test_real_ct_section_shows_the_numbers_of_its_summary(report, results_source):
    import SimpleITK as sitk

    from nnunet_liver.data.real_ct import CRLM_SEG

    data, page = report["data"], report["page"]
    case = real_ct_summary(results_source)["cases"]["crlm_liver_ct"]
    r = data["real_ct"]
    assert r["case"] == "crlm_liver_ct" and r["model"] == "DualStream"
    rows = page.body("real-ct-metrics")
    assert list(rows) == ["Liver", "Tumour"]
    # volumes checked against the radiologist's mask itself, not only against summary.json
    seg = sitk.ReadImage(str(CRLM_SEG))
    arr, voxel_ml = sitk.GetArrayFromImage(seg), float(np.prod(seg.GetSpacing())) / 1000
    for s, mask in (("liver", arr > 0), ("tumour", arr == 2)):
        for i, k in enumerate(("dice", "iou", "sensitivity", "specificity")):
            assert r[s][k] == case[s][k]
            assert rows[s.capitalize()][1 + i][0] == fmt_num(case[s][k])
        assert r[s]["reference_ml"] == pytest.approx(int(mask.sum()) * voxel_ml, rel=1e-12)
        assert r[s]["prediction_ml"] == pytest.approx(case[s]["prediction_voxels"] * voxel_ml, rel=1e-12)
        assert rows[s.capitalize()][5][0] == f"{int(mask.sum()) * voxel_ml:,.1f}"
        assert rows[s.capitalize()][7][0] == f"{case[s]['rvd'] * 100:+.1f}%"
    # the radiologist's mask: about 3,400 ml of liver and one metastasis of about 45 ml
    assert 2000 < r["liver"]["reference_ml"] < 5000 and 30 < r["tumour"]["reference_ml"] < 60
    dice = case["liver"]["dice"]
    assert r["target"] == {"metric": "liver dice", "threshold": 0.85, "met": dice >= 0.85}
    verdict = "met" if dice >= 0.85 else "not met"
    for text in (report["html"], report["md"]):
        part = section(text, "Phantom to real: one real CT", "Lesion classification")
        assert f"Target: liver Dice ≥ 0.85: {verdict}" in part and f"(liver Dice {fmt_num(dice)})" in part
        for words in ("One real CT, crlm_liver_ct (TCIA CRLM, radiologist mask), with a reference liver",
                      "trained on synthetic phantoms only", "never trained or tuned on this CT",
                      "One lesion cannot estimate tumour performance", "This is not a LiTS result"):
            assert words in part, words
    # lesion detection: the counts of summary.json per threshold
    lesions = page.body("real-ct-lesions")
    assert list(lesions) == ["IoU > 0", "IoU > 0.5"]
    for key, row in zip(("iou>0", "iou>0.5"), lesions.values(), strict=True):
        c = case["lesions"]["detection"][key]
        assert [x[0] for x in row[1:]] == [str(case["lesions"]["n_reference"]), str(case["lesions"]["n_prediction"]),
                                           str(c["tp"]), str(c["fn"]), str(c["fp"])]
    assert case["lesions"]["n_reference"] == 1
    # the section sits between segmentation and classification, and is in the table of contents
    html = report["html"]
    assert html.index('id="cost"') < html.index('id="real-ct"') < html.index('id="classification"')
    assert '<a href="#real-ct">Real CT</a>' in html
    assert any(i["what"] == "real CT evaluation" for i in data["inputs"])


def test_real_ct_figure_slices_and_orientation(report, results_source, tmp_path):
    """Slices chosen from the reference (tumour's largest axial area, its centroid row for the coronal), in the
    radiological view; the same CT stored with a flipped direction matrix gives the same figure."""
    import SimpleITK as sitk

    from nnunet_liver.data.real_ct import CRLM_CT, CRLM_SEG
    from nnunet_liver.evaluation.report import figures, load_manifest

    info = report["data"]["figures"]["real_ct"]
    lab = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(CRLM_SEG)), "LPS"))
    tumour = np.argwhere(lab == 2)
    assert info["tumour_slice"] == int(np.argmax((lab == 2).sum(axis=(1, 2)))) and info["tumour_slice"] in info["axial"]
    assert len(info["axial"]) == 3 and info["axial"] == sorted(info["axial"], reverse=True)  # superior first
    assert info["coronal"] == int(round(tumour[:, 1].mean()))
    # radiological view: the liver (patient's right) fills the left half of the axial slices
    liver_columns = np.argwhere(lab > 0)[:, 2]
    assert liver_columns.mean() < lab.shape[2] / 2

    # every file of the section stored under direction diag(-1, -1, 1) (arrays flipped to match)
    def flipped(src, dst):
        img = sitk.ReadImage(str(src))
        out = sitk.GetImageFromArray(sitk.GetArrayFromImage(img)[:, ::-1, ::-1].copy())
        out.SetSpacing(img.GetSpacing())
        out.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        size = np.array(img.GetSize()) - 1
        out.SetOrigin(tuple(np.array(img.GetOrigin()) + np.array(img.GetSpacing()) * size * [1, 1, 0]))
        sitk.WriteImage(out, str(dst), useCompression=True)
        return dst

    rct = load_manifest(results_source).real_ct
    rct.image = flipped(CRLM_CT, tmp_path / "ct.nii.gz")
    rct.reference = flipped(rct.reference, tmp_path / "ref.nii.gz")
    rct.prediction = flipped(rct.prediction, tmp_path / "pred.nii.gz")
    again = figures.real_ct_figure(rct, tmp_path / "fig.png", title="crlm_liver_ct")
    assert {k: again[k] for k in ("axial", "coronal", "tumour_slice")} == {
        k: info[k] for k in ("axial", "coronal", "tumour_slice")}
    original = load_manifest(results_source).real_ct
    figures.real_ct_figure(original, tmp_path / "fig0.png", title="crlm_liver_ct")
    assert (tmp_path / "fig.png").read_bytes() == (tmp_path / "fig0.png").read_bytes()


def test_real_ct_target_not_met_and_figure_without_image(results, tmp_path):
    """A liver Dice under 0.85 says so; without the image the numbers stay and the figure is named missing."""
    path = results / "real_ct/evaluation/summary.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary["cases"]["crlm_liver_ct"]["liver"]["dice"] = 0.612
    path.write_text(json.dumps(summary), encoding="utf-8")
    manifest = json.loads((results / "results.json").read_text(encoding="utf-8"))
    del manifest["real_ct"]["image"]
    (results / "results.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert run(results, "-o", tmp_path / "out") == 0
    data = json.loads((tmp_path / "out" / "report_data.json").read_text(encoding="utf-8"))
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert data["real_ct"]["target"]["met"] is False and data["real_ct"]["liver"]["dice"] == 0.612
    assert "Target: liver Dice ≥ 0.85: not met</strong> (liver Dice 0.612)" in html
    assert "here it does not" in html
    assert data["figures"]["real_ct"] is None
    missing = {m["section"]: m for m in data["missing"]}
    assert "results.json names no real_ct.image" in missing["real_ct_figure"]["message"]
    assert not (tmp_path / "out" / "figures" / "real_ct_contours.png").exists()


def test_extent_table_shows_global_dice_lesions_found_and_liver_beyond_from_the_cases(report, results_source):
    """The whole-test-set table recomputed from each summary's cases: global Dice over the summed voxels, lesions
    found by equivalent diameter, and the most slices of liver beyond the reference liver."""
    from nnunet_liver.evaluation.lits import equivalent_diameter_mm

    rows = report["page"].body("table1-extent")
    data = {r["label"]: r for r in report["data"]["table1_extent"]}
    assert list(data) == ["2D U-Net", "3D U-Net", "DualStream"]
    for label, r in data.items():
        cases = summaries(results_source)[(label, "table1")]["cases"].values()
        cells = [c[0] for c in rows[label]]
        for i, s in enumerate(("liver", "tumour")):
            inter = sum(c[s]["intersection_voxels"] for c in cases)
            total = sum(c[s]["reference_voxels"] + c[s]["prediction_voxels"] for c in cases)
            assert r[f"{s}_dice_global"] == pytest.approx(2 * inter / total)
            assert cells[1 + i] == fmt_num(2 * inter / total)
        large = [(found, n) for c in cases for n, found in zip(c["lesions"]["reference_lesion_voxels"],
                                                              c["lesions"]["reference_lesion_found"])
                 if equivalent_diameter_mm(n, c["spacing"]) >= 10]
        found = sum(bool(f) for f, _ in large)
        assert (r["lesions"]["large"]["found"], r["lesions"]["large"]["n"]) == (found, len(large))
        assert cells[3] == (f"{found}/{len(large)} ({found / len(large):.0%})" if large else "none")
        beyond = [c["liver_extent"]["slices_beyond"] for c in cases]
        assert cells[5] == str(max(beyond)) and cells[6] == f"{sum(b >= 2 for b in beyond)}/{len(beyond)}"
    assert "Liver slices beyond the liver (max)" in report["md"]
