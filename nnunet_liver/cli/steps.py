"""A resumable pipeline of named steps with visible progress (used by ``demo`` and ``bench``).

A finished step leaves ``<out>/.steps/<name>.done`` holding the pipeline's ``signature`` (its settings); a
rerun with the same settings skips it, one with other settings redoes it. Once a step runs, every later step
runs too (their inputs may have changed). Steps that fail leave no marker.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Pipeline:
    out: Path
    env: dict[str, str]
    signature: dict = field(default_factory=dict)
    log: Callable[[str], None] = field(default=lambda s: print(s, flush=True))
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    _redoing: bool = field(default=False, init=False)

    def marker(self, name: str) -> Path:
        return self.out / ".steps" / (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") + ".done")

    def step(self, name: str, fn: Callable[[], object], index: int, total: int) -> None:
        head = f"[{index}/{total}] {name}"
        if not self._redoing and self._done(name):
            self.log(f"{head}: done in an earlier run, skipped")
            return
        self.log(f"{head} ...  (elapsed {self.elapsed()})")
        self._redoing = True
        self.marker(name).unlink(missing_ok=True)
        t0 = time.monotonic()
        fn()
        dt = time.monotonic() - t0
        self.timings[name] = dt
        self.marker(name).parent.mkdir(parents=True, exist_ok=True)
        self.marker(name).write_text(json.dumps({"seconds": round(dt, 2), "signature": self.signature}),
                                     encoding="utf-8")
        self.log(f"{head}: finished in {dt:.1f} s  (elapsed {self.elapsed()})")

    def _done(self, name: str) -> bool:
        try:
            return json.loads(self.marker(name).read_text(encoding="utf-8")).get("signature") == self.signature
        except (OSError, ValueError):
            return False

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60}:{s % 60:02d}"

    def run(self, argv: list[str], log_name: str, extra_env: dict[str, str] | None = None) -> None:
        """Run a command with this pipeline's environment (plus ``extra_env``); its output goes to
        ``logs/<log_name>.log`` and is shown live. A failure raises with the log's tail."""
        log_path = self.out / "logs" / f"{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra_env or {})
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        self.log(f"    $ {' '.join(argv)}   (log: {log_path})")
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    encoding="utf-8", errors="replace")
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if _worth_showing(line):
                    self.log("    " + line.rstrip())
            code = proc.wait()
        if code != 0:
            tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-30:])
            raise RuntimeError(f"{argv[0]} failed with exit code {code}; see {log_path}\n{tail}")


def _worth_showing(line: str) -> bool:
    """nnU-Net prints a lot; show epoch summaries, losses, timings and errors."""
    keys = ("Epoch ", "train_loss", "val_loss", "Pseudo dice", "Epoch time", "Mean Validation Dice",
            "Error", "error", "Traceback", "Done with", "Predicting ")
    return any(k in line for k in keys)
