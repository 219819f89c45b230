"""Cohort scale: parts over machines (``--num-parts/--part-id``), reruns that skip finished cases, interrupted
cases that leave nothing, and the merged cohort tables."""
from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pytest

from nnunet_liver.cli import main as cli_main
from nnunet_liver.inference.inputs import CaseInput, InputError, select_part


def cases(names) -> list[CaseInput]:
    return [CaseInput(n, Path(f"/data/{n}_0000.nii.gz"), "file") for n in names]


@pytest.mark.parametrize("num_parts", [1, 2, 3, 7, 12])
def test_parts_cover_every_case_once(num_parts):
    names = [f"case_{i:03d}" for i in range(11)] + ["case_005"]  # one name twice (e.g. .nii.gz and .mha)
    shuffled = cases(names)
    random.Random(num_parts).shuffle(shuffled)  # another machine may list the folder in another order
    parts = [select_part(cases(names), num_parts, k) for k in range(num_parts)]
    again = [select_part(shuffled, num_parts, k) for k in range(num_parts)]
    assert [[c.name for c in p] for p in parts] == [[c.name for c in p] for p in again]
    ids = [{c.name for c in p} for p in parts]
    assert set().union(*ids) == set(names)
    for a in range(num_parts):
        for b in range(a + 1, num_parts):
            assert not ids[a] & ids[b]
    assert sum(len(p) for p in parts) == len(names)  # nothing lost, nothing doubled (the twin stays together)
    assert max(len(i) for i in ids) - min(len(i) for i in ids) <= 1  # nnU-Net's round robin
    assert [c.name for c in parts[0]][:2] == sorted(set(names))[:num_parts * 2:num_parts]


@pytest.mark.parametrize("num_parts, part_id, message", [(0, 0, "at least 1"), (2, 2, "must be in 0..1"),
                                                        (3, -1, "must be in 0..2")])
def test_part_numbers_are_checked(num_parts, part_id, message):
    with pytest.raises(InputError, match=message):
        select_part(cases(["a", "b"]), num_parts, part_id)


@pytest.fixture
def env(predict_models, monkeypatch):
    for k, v in predict_models["env"].items():
        monkeypatch.setenv(k, v)
    return predict_models


def predict(models, *argv) -> int:
    return cli_main.main(["predict", "-m", str(models["model"]), "--threads", "1", "--no-progress", "--no-figures",
                          *map(str, argv)])


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_parts_rerun_interruption_and_cohort_table(env, tmp_path, capsys, monkeypatch):
    from nnunet_liver.inference import report

    src = tmp_path / "cases"
    src.mkdir()
    for name, phantom in (("liver_005", "liver_005"), ("liver_006", "liver_006"), ("liver_007", "liver_005")):
        shutil.copy(env["raw"] / "imagesTs" / f"{phantom}_0000.nii.gz", src / f"{name}_0000.nii.gz")
    out = tmp_path / "out"
    # sorted names liver_005, liver_006, liver_007: part 0 of 2 runs 005 and 007, part 1 runs 006

    # part 0, first try: liver_007 fails while its files are written, then a Ctrl-C in the same place
    real_write = report.write_findings

    def write_failing(path, findings, error: BaseException | None = None):
        if findings["case"] == "liver_007":
            raise error or RuntimeError("disk full")
        real_write(path, findings)

    monkeypatch.setattr(report, "write_findings", write_failing)
    assert predict(env, "-i", src, "-o", out, "--num-parts", 2, "--part-id", 0) == 1
    captured = capsys.readouterr()
    assert "part 0 of 2 (0..1): 2 of 3 case(s)" in captured.err and "RuntimeError: disk full" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["liver_005"]  # nothing of liver_007, no staging folder
    monkeypatch.setattr(report, "write_findings",
                        lambda p, f: write_failing(p, f, KeyboardInterrupt()))
    assert predict(env, "-i", src, "-o", out, "-num_parts", 2, "-part_id", 0) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["liver_005"]
    monkeypatch.setattr(report, "write_findings", real_write)

    # a killed run (no Python cleanup) leaves a hidden staging folder: the rerun removes it and redoes the case
    (out / ".liver_007.partial-killed").mkdir()
    (out / ".liver_007.partial-killed" / "segmentation.nii.gz").write_bytes(b"half")
    # every case is in the input, part 1 has not run: the merge names what is missing and writes nothing
    assert cli_main.main(["cohort", str(out), "-o", str(tmp_path / "cohort.csv"), "-i", str(src)]) == 2
    err = capsys.readouterr().err
    assert "2 of 3 case(s)" in err and "liver_006, liver_007" in err and not (tmp_path / "cohort.csv").exists()

    first = (out / "liver_005" / "findings.json").read_bytes()
    assert predict(env, "-i", src, "-o", out, "--num-parts", 2, "--part-id", 0) == 0
    assert "1 of 2 case(s) written to" in (o := capsys.readouterr().out) and "1 finished before (skipped)" in o
    assert not list(out.glob(".*"))  # the killed run's staging folder is gone
    assert (out / "liver_005" / "findings.json").read_bytes() == first  # skipped, not redone
    assert predict(env, "-i", src, "-o", out, "--num-parts", 2, "--part-id", 1) == 0
    assert "part 1 of 2 (0..1): 1 of 3 case(s)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["liver_005", "liver_006", "liver_007"]

    # the merged tables hold exactly what the case folders hold
    assert cli_main.main(["cohort", str(out), "-o", str(tmp_path / "cohort.csv"), "-i", str(src)]) == 0
    assert "3 case(s)" in capsys.readouterr().out
    lesions, per_case = read_csv(tmp_path / "cohort.csv"), read_csv(tmp_path / "cohort_cases.csv")
    assert [r["case"] for r in per_case] == ["liver_005", "liver_006", "liver_007"]
    for row in per_case:
        findings = json.loads((out / row["case"] / "findings.json").read_text(encoding="utf-8"))
        mine = [r for r in lesions if r["case"] == row["case"]]
        assert int(row["n_lesions"]) == findings["n_lesions"] == len(findings["lesions"])
        assert len(mine) == max(findings["n_lesions"], 1)  # a case without lesions still has its row
        assert float(row["liver_volume_ml"]) == findings["liver_volume_ml"]
        assert float(row["tumour_burden"]) == pytest.approx(findings["tumour_volume_ml"] / findings["liver_volume_ml"],
                                                            abs=1e-6)
        assert row["trainer"] == "LiverSmokeTrainer" and row["folds"] == "0" and row["classifier"] == ""
        per_lesion = read_csv(out / row["case"] / "lesions.csv")
        assert [r["lesion_id"] for r in mine if r["lesion_id"]] == [r["lesion_id"] for r in per_lesion]
        for a, b in zip(mine, per_lesion):
            assert a["volume_ml"] == b["volume_ml"] and a["centroid_x_mm"] == b["centroid_x_mm"]
            assert a["n_lesions"] == row["n_lesions"] and a["tumour_burden"] == row["tumour_burden"]
    assert cli_main.main(["cohort", str(out), "-o", str(tmp_path / "cohort.csv")]) == 2  # exists: no --overwrite
    assert "exists (use --overwrite" in capsys.readouterr().err

    # a finished case made with other models is not taken as done
    findings = json.loads((out / "liver_005" / "findings.json").read_text(encoding="utf-8"))
    findings["models"]["segmentation"]["trainer"] = "OtherTrainer"
    (out / "liver_005" / "findings.json").write_text(json.dumps(findings), encoding="utf-8")
    assert predict(env, "-i", src, "-o", out, "--num-parts", 2, "--part-id", 0) == 1
    assert "liver_005 was predicted with other models (use --overwrite" in capsys.readouterr().err
