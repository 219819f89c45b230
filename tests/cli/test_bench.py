"""``nnunet-liver bench``: runs the scripts, collects their results, and turns them into ratio rows."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_liver.cli import bench
from nnunet_liver.trainers._mixins import cpu_bf16_supported
from tests.conftest import subprocess_env

def run_bench(*argv):
    return subprocess.run([sys.executable, "-m", "nnunet_liver.cli.main", "bench", *argv], env=subprocess_env({}),
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)


def test_bench_runs_a_script_and_collects_its_ratios(tmp_path):
    out = tmp_path / "bench"
    r = run_bench("--only", "evaluation", "--quick", "-o", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["machine"]["cores"] >= 1 and results["machine"]["torch"]
    entry = results["benchmarks"]["evaluation"]
    script_result = json.loads((out / "evaluation" / "results.json").read_text(encoding="utf-8"))
    assert entry["result"] == script_result
    (row,) = entry["ratios"]
    assert row["ratio"] == script_result["ratio"] and row["value"] == script_result["full_seconds"]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert f"{script_result['ratio']:.3g}x" in summary and "Machine:" in summary

    again = run_bench("--only", "evaluation", "--quick", "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_a_failing_benchmark_is_reported_and_sets_the_exit_code(tmp_path, monkeypatch):
    """A script that fails leaves an error entry and a non-zero exit, the others still run."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bench_evaluate.py").write_text("import sys; print('boom'); sys.exit(3)\n", encoding="utf-8")
    monkeypatch.setattr(bench, "scripts_dir", lambda: scripts)
    import argparse

    ns = argparse.Namespace(out=str(tmp_path / "b"), only=["evaluation"], quick=True, device="cpu", overwrite=False)
    assert bench.run(ns) == 1
    results = json.loads((tmp_path / "b" / "results.json").read_text(encoding="utf-8"))
    assert results["benchmarks"]["evaluation"]["error"] == "exit code 3"
    assert "**Failed**" in (tmp_path / "b" / "summary.md").read_text(encoding="utf-8")


def test_missing_scripts_are_a_usage_error(tmp_path, monkeypatch):
    import argparse

    from nnunet_liver.cli.main import UsageError

    monkeypatch.setattr(bench, "scripts_dir", lambda: tmp_path)
    ns = argparse.Namespace(out=str(tmp_path / "b"), only=None, quick=True, device="cpu", overwrite=False)
    with pytest.raises(UsageError, match="bench_segmentation.py"):
        bench.run(ns)


@pytest.mark.parametrize("name, path", [("segmentation", "data/bench_segmentation_results.json"),
                                        ("classification", "data/bench_classification_results.json")])
def test_ratio_rows_of_real_results(name, path):
    """The extractors read real result files (kept from full runs of the scripts on 2026-11-26): every ratio
    row equals the figure it came from. tests/classification/test_bench_script.py checks a fresh output."""
    result = json.loads((Path(__file__).parent / path).read_text(encoding="utf-8"))
    rows = bench.RATIOS[name](result)
    assert rows
    if name == "segmentation":
        ds = next(r for r in rows if r["figure"].startswith("FLOPs per output voxel, DualStream"))
        assert ds["ratio"] == result["cost"]["DualStream"]["flops_ratio_vs_3d_unet"]
        rwa = next(r for r in rows if r["figure"].startswith("training step with random windows"))
        assert rwa["ratio"] == pytest.approx(1 + result["speed"]["rwa_overhead"]["overhead_ratio"])
    else:
        h = next(r for r in rows if r["figure"] == "inference lesions/s, hybrid3d")
        assert h["ratio"] == result["models"]["hybrid3d"]["inference_lesions_per_s_vs_resnet50_2d"]
        auc = next(r for r in rows if r["figure"] == "AUC (mean over seeds), resnet50_2d")
        assert auc["ratio"] == pytest.approx(1.0)
    text = bench.summary_markdown({"machine": bench.machine("cpu"), "quick": False, "created": "now",
                                   "benchmarks": {name: {"command": "x", "seconds": 1.0, "ratios": rows}}})
    assert text.count("\n| ") == len(rows) + 1


def test_predict_ratio_rows():
    result = {"nnunet_liver_predict": {"median_s": 11.0, "min_s": 10.0, "peak_rss_mib": 900.0},
              "nnunet_stock_predict": {"median_s": 10.0, "min_s": 10.0, "peak_rss_mib": 1000.0},
              "ratio_median": 1.1, "ratio_min": 1.0, "target_ratio": 1.2, "peak_rss_ratio": 0.9}
    rows = bench.RATIOS["predict"](result)
    assert [(r["value"], r["baseline"], r["ratio"]) for r in rows] == [(11.0, 10.0, 1.1), (10.0, 10.0, 1.0),
                                                                       (900.0, 1000.0, 0.9)]


def test_nan_figures_become_null_and_only_keeps_the_other_entries(tmp_path, monkeypatch):
    """A NaN ratio (a robustness drop of 0) is written as null, and --only --overwrite replaces its own entry
    while the other benchmarks' entries stay."""
    import argparse

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bench_evaluate.py").write_text(
        "import json, sys, pathlib\nout = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])\n"
        "out.mkdir(parents=True, exist_ok=True)\n"
        "(out / 'results.json').write_text(json.dumps({'shape': [1, 2, 3], 'full_seconds': 2.0, "
        "'dice_seconds': 0.0, 'ratio': float('nan')}))\n", encoding="utf-8")
    monkeypatch.setattr(bench, "scripts_dir", lambda: scripts)
    out = tmp_path / "b"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"benchmarks": {"segmentation": {"command": "x", "seconds": 1.0,
                                                                                  "ratios": []}}}), encoding="utf-8")
    ns = argparse.Namespace(out=str(out), only=["evaluation"], quick=True, device="cpu", overwrite=True)
    assert bench.run(ns) == 0
    text = (out / "results.json").read_text(encoding="utf-8")
    results = json.loads(text)  # strict JSON: no NaN token
    assert "NaN" not in text and results["benchmarks"]["evaluation"]["ratios"][0]["ratio"] is None
    assert set(results["benchmarks"]) == {"segmentation", "evaluation"}


@pytest.mark.slow
def test_bench_runs_the_segmentation_cost_part_alone(tmp_path):
    """``--only segmentation --parts cost`` forwards the cost options; at tiny sizes every model has every CPU
    figure, positive, with the 3D U-Net's ratios 1.0, and the ratio rows and the table come from them."""
    out = tmp_path / "bench"
    env = subprocess_env({})
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "nnunet_liver.cli.main", "bench", "--only", "segmentation", "-o",
                        str(out), "--parts", "cost", "--cost-inplane", "32", "--cost-depth", "16", "--cost-steps", "1",
                        "--cost-case", "20,40,40", "--cost-cpu-predict", "on"], env=env, capture_output=True,
                       text=True, encoding="utf-8", errors="replace", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    entry = json.loads((out / "results.json").read_text(encoding="utf-8"))["benchmarks"]["segmentation"]
    assert "--parts cost --cost-inplane 32" in entry["command"]
    cost = entry["result"]["cost"]
    assert set(entry["result"]) == {"machine", "settings", "cost"}  # no phantoms, no training runs
    assert cost["plan"]["patch_3d_fullres"] == [128, 128, 128] and cost["settings"]["case"] == [20, 40, 40]
    models = cost["models"]
    assert list(models) == ["3D U-Net", "Ablation 0: spatial stream, fixed window", "Ablation 1: + RWA",
                            "Ablation 2: + attention gates", "DualStream"]
    figures = {"params", "flops_per_voxel", "cpu_fp32_step_ms_per_mvoxel", "cpu_fp32_peak_mib_per_mvoxel",
               "predict_s_per_case"}
    if cpu_bf16_supported():  # bf16 autocast is measured only where the CPU has it natively
        figures |= {"cpu_bf16_step_ms_per_mvoxel", "cpu_bf16_peak_mib_per_mvoxel"}
    if Path("/proc/self/statm").exists():  # Linux: the peak RSS beside malloc's live bytes
        figures.add("cpu_fp32_rss_mib_per_mvoxel")
    for label, m in models.items():
        assert set(m["vs_3d_unet"]) == figures, label
        assert all(m[k] > 0 and m["vs_3d_unet"][k] > 0 for k in figures), (label, m)
        cpu = m["cpu_fp32"]
        z, y, x = cpu["patch"]
        assert y <= 32 and x <= 32 and cpu["output_voxels"] == (z - 2 * m["z_margin"]) * y * x
        assert m["predict"]["tile"] == cpu["patch"] and m["predict"]["case"] == [20, 40, 40]
    assert models["3D U-Net"]["cpu_fp32"]["patch"] == [64, 32, 32]  # z: the smallest on which it trains
    assert all(v == 1.0 for v in models["3D U-Net"]["vs_3d_unet"].values())
    rows = {row["figure"]: row for row in entry["ratios"]}
    for precision in ("fp32", "bf16") if cpu_bf16_supported() else ("fp32",):
        step = rows[f"CPU {precision} training step, ms per million output voxels, DualStream"]
        assert step["value"] == models["DualStream"][f"cpu_{precision}_step_ms_per_mvoxel"]
        assert step["ratio"] == models["DualStream"]["vs_3d_unet"][f"cpu_{precision}_step_ms_per_mvoxel"]
    if not cpu_bf16_supported():
        assert not any("bf16" in figure for figure in rows) and "cpu_bf16" not in models["DualStream"]
    table = (out / "segmentation" / "results.md").read_text(encoding="utf-8")
    assert "| DualStream |" in table and "(1.00x)" in table and "Command: `python scripts/bench_segmentation.py" in table


def test_segmentation_options_need_the_segmentation_benchmark(tmp_path):
    import argparse

    from nnunet_liver.cli.main import UsageError

    ns = argparse.Namespace(out=str(tmp_path / "b"), only=["evaluation"], quick=True, device="cpu", overwrite=False,
                            parts="cost", cost_inplane=64)
    with pytest.raises(UsageError, match="segmentation"):
        bench.run(ns)
    assert bench.segmentation_options(ns) == ["--parts", "cost", "--cost-inplane", "64"]


def test_z_margin_is_forwarded_to_the_segmentation_benchmark(tmp_path):
    """`nnunet-liver bench --z-margin-mm 70` reaches the segmentation script; absent, nothing is forwarded."""
    from nnunet_liver.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--only", "segmentation", "--z-margin-mm", "70", "-o", str(tmp_path)])
    assert bench.segmentation_options(args)[-2:] == ["--z-margin-mm", "70.0"]
    args = build_parser().parse_args(["bench", "--only", "segmentation", "-o", str(tmp_path)])
    assert "--z-margin-mm" not in bench.segmentation_options(args)
