"""``json_safe``: one conversion for every JSON file the project writes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from nnunet_liver.data.io import json_safe


def test_json_safe_makes_strict_json():
    value = {1: [np.float32(0.5), np.int64(3), float("nan"), (math.inf, -math.inf)], "p": Path("/a/b"),
             "nested": {"x": np.float64("nan"), "ok": "text", "none": None, "flag": True}}
    out = json_safe(value)
    assert out == {"1": [0.5, 3, None, [None, None]], "p": "/a/b",
                   "nested": {"x": None, "ok": "text", "none": None, "flag": True}}
    assert type(out["1"][1]) is int
    json.dumps(out, allow_nan=False)  # raises on any NaN left
