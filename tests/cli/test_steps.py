"""The demo's resumable steps: skipped when done with the same settings, redone otherwise."""
from __future__ import annotations

from nnunet_liver.cli.steps import Pipeline


def test_steps_resume_only_with_the_same_settings(tmp_path):
    calls = []
    logs = []

    def run(signature):
        pipe = Pipeline(out=tmp_path, env={}, signature=signature, log=logs.append)
        pipe.step("a", lambda: calls.append("a"), 1, 2)
        pipe.step("b", lambda: calls.append("b"), 2, 2)

    run({"preset": "quick"})
    run({"preset": "quick"})
    assert calls == ["a", "b"] and sum("skipped" in line for line in logs) == 2
    run({"preset": "default"})
    assert calls == ["a", "b", "a", "b"]


def test_a_failed_step_leaves_no_marker(tmp_path):
    pipe = Pipeline(out=tmp_path, env={}, log=lambda s: None)

    def boom():
        raise RuntimeError("x")

    try:
        pipe.step("a", boom, 1, 1)
    except RuntimeError:
        pass
    assert not pipe.marker("a").exists()


def test_a_redone_step_redoes_every_later_step(tmp_path):
    """Default run done, then a quick run interrupted after step a, then default again: a is redone (its marker
    says quick), so b must be redone too although its own marker still says default."""
    calls = []

    def run(signature, stop_after_a=False):
        pipe = Pipeline(out=tmp_path, env={}, signature=signature, log=lambda s: None)
        pipe.step("a", lambda: calls.append(("a", signature)), 1, 2)
        if not stop_after_a:
            pipe.step("b", lambda: calls.append(("b", signature)), 2, 2)

    run("default")
    run("quick", stop_after_a=True)
    calls.clear()
    run("default")
    assert calls == [("a", "default"), ("b", "default")]


def test_marker_names_are_portable(tmp_path):
    pipe = Pipeline(out=tmp_path, env={})
    name = pipe.marker("predict the test cases with nnUNetv2_predict: 3D U-Net (x, y)").name
    assert name == "predict_the_test_cases_with_nnUNetv2_predict_3D_U-Net_x_y.done"
