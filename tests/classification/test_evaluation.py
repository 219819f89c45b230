"""Table 2 metrics, paired tests and figures from synthetic fold predictions."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nnunet_liver.classification.evaluation import (
    EvaluationError,
    FoldPredictions,
    collect_runs,
    evaluate_classification,
    evaluate_runs,
    table2_markdown,
)
from nnunet_liver.classification.training import PREDICTION_COLUMNS
from tests.conftest import subprocess_env


def fold_preds(rng, n, quality, fold, pred_from_prob=True):
    y = np.array([i % 2 for i in range(n)])
    prob = np.clip(0.5 + quality * (y - 0.5) + rng.normal(0, 0.25, n), 0, 1)
    pred = (prob >= 0.5).astype(int) if pred_from_prob else 1 - y  # a model whose votes are all wrong
    keys = [f"case_{fold}_{i // 2}/{i % 2 + 1}" for i in range(n)]
    return FoldPredictions(keys, np.array([k.split("/")[0] for k in keys]), y, prob, pred)


def synthetic_runs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "hybrid3d": {k: fold_preds(rng, 40, 0.8, k) for k in range(3)},
        "resnet50_2d": {k: fold_preds(rng, 40, 0.2, k) for k in range(3)},
        "densenet121_2d": {k: fold_preds(rng, 40, 0.8, k, pred_from_prob=False) for k in range(3)},
    }


def test_metrics_tests_and_table():
    runs = synthetic_runs()
    res = evaluate_runs(runs, n_boot=200)
    hyb, res50, dense = (res["models"][m] for m in ("hybrid3d", "resnet50_2d", "densenet121_2d"))
    assert hyb["mean"]["auc"] > 0.9 and res50["mean"]["auc"] < 0.8
    lo, hi = hyb["pooled_ci"]["auc"]
    assert lo <= hyb["pooled"]["auc"] <= hi
    # threshold metrics follow the model's decisions (the 2D majority vote), AUC its scores
    assert dense["pooled"]["accuracy"] == 0.0 and dense["pooled"]["auc"] > 0.9
    assert len(hyb["per_fold"]) == 3 and hyb["n_lesions"] == 120
    c = res["comparisons"]["resnet50_2d"]
    assert c["folds"] == [0, 1, 2] and c["auc_ttest"]["n"] == 3 and c["auc_ttest"]["mean_diff"] < 0
    assert c["delong"]["n"] == 120 and c["delong"]["p"] < 0.01
    assert "hybrid3d" not in res["comparisons"]
    md = table2_markdown(res)
    for text in ("| Accuracy |", "| AUC |", "ResNet 50 (2D)", "DenseNet 121 (2D)", "Hybrid 3D (proposed)",
                 "DeLong p", "± "):
        assert text in md


def test_single_fold_gives_na_tests():
    runs = {m: {0: f[0]} for m, f in synthetic_runs().items()}
    res = evaluate_runs(runs, n_boot=50)
    assert np.isnan(res["comparisons"]["resnet50_2d"]["auc_ttest"]["p"])
    assert "n/a" in table2_markdown(res)


def test_one_lesion_of_a_class_gives_na_delong_instead_of_failing():
    keys = [f"case_{i}/1" for i in range(6)]
    y = np.array([1, 0, 0, 0, 0, 0])

    def fold(prob):
        return FoldPredictions(keys, np.array([k.split("/")[0] for k in keys]), y, np.array(prob),
                               (np.array(prob) >= 0.5).astype(int))

    runs = {"hybrid3d": {0: fold([0.9, 0.1, 0.2, 0.3, 0.4, 0.6])},
            "resnet50_2d": {0: fold([0.7, 0.2, 0.8, 0.3, 0.1, 0.4])}}
    d = evaluate_runs(runs, n_boot=0)["comparisons"]["resnet50_2d"]["delong"]
    assert d["n"] == 6 and np.isnan(d["p"])


def write_run(folder, folds):
    for k, p in folds.items():
        (folder / f"fold_{k}").mkdir(parents=True)
        lines = [",".join(PREDICTION_COLUMNS)]
        for key, y, prob, pred in zip(p.keys, p.y, p.prob, p.pred):
            case, lesion = key.split("/")
            lines.append(f"{case},{lesion},{y},{prob:.6f},{pred},1")
        (folder / f"fold_{k}" / "predictions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_evaluate_classification_writes_everything(tmp_path):
    runs = synthetic_runs()
    dirs = {}
    for m, folds in runs.items():
        dirs[m] = tmp_path / m
        write_run(dirs[m], folds)
    dirs["hybrid3d_noatt"] = tmp_path / "never_trained"
    out, _ = evaluate_classification(dirs, tmp_path / "crops", tmp_path / "eval", n_boot=100, attention=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.png", "roc.png", "table2.json", "table2.md"]
    data = json.loads((out / "table2.json").read_text(encoding="utf-8"),
                      parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert set(data["models"]) == {"hybrid3d", "resnet50_2d", "densenet121_2d"}
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError):
        evaluate_classification(dirs, tmp_path / "crops", tmp_path / "eval", n_boot=10, attention=False)
    with pytest.raises(EvaluationError, match="no finished fold"):
        collect_runs({"hybrid3d": tmp_path / "nothing"})


def test_evaluate_command_on_an_ascii_console(tmp_path):
    """Under ``PYTHONUTF8=0 LC_ALL=C`` stdout is ASCII: the "±" of Table 2 must not crash the command (it
    did in CI, as "'ascii' codec can't encode character"), and the files stay UTF-8."""
    for m, folds in synthetic_runs().items():
        write_run(tmp_path / "cls" / f"{m}__cpu", folds)
    env = subprocess_env({"PYTHONUTF8": "0", "LC_ALL": "C", "LANG": "C"})
    env.pop("PYTHONIOENCODING", None)
    check = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdout.encoding)"], env=env,
                           capture_output=True, text=True, check=True)
    assert check.stdout.strip().lower() in ("ascii", "ansi_x3.4-1968"), check.stdout
    r = subprocess.run([sys.executable, "-m", "nnunet_liver.cli.main", "classify", "evaluate",
                        "-m", "hybrid3d", "resnet50_2d", "densenet121_2d", "--preset", "cpu",
                        "--root", str(tmp_path / "cls"), "--crops", str(tmp_path / "crops"),
                        "-o", str(tmp_path / "eval"), "--n-boot", "20", "--no-attention"],
                       env=env, capture_output=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr.decode("ascii", "replace")
    assert b"\\xb1" in r.stdout  # "±" shown as its escape
    assert "±" in (tmp_path / "eval" / "table2.md").read_text(encoding="utf-8")
