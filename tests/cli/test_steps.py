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
