"""Speed work must not change what the planner decides: ``sketchplan plan`` writes, byte for byte, the recorded
plans for the same inputs. The planning speed-up (issue 12) was checked against plans written by 541d307; the
files were then re-recorded on purpose when Adam's step became torch's fused kernel (its cheaper predicted step
tightens the default time bound, 3x all-Adam's step, so some choices changed), and when the shipped CPU profile
was re-measured with the ``subspace`` FD variant and the ``nonfinite_guard`` option joined the defaults (issue 20:
Sketchy's cheaper measured update makes it the pick for some tensors), and when ``batch_blocks`` joined them
(issue 20: roots and FD updates batched across tensors; the choices stayed, the predicted peaks of the batched
what-if rows fell, e.g. GPT-2 all blocked Shampoo 5.47 → 5.00 GB), and when ``nonfinite_guard`` became ``auto``
(off in an all-Adam optimizer: the all-Adam yardstick of the default time bound lost the guard's read, 94.1 →
70.5 ms for GPT-2 on this profile, so the bound tightened by a quarter and some choices moved to cheaper steps;
GPT-2 4 GiB: 3 of 148 tensors changed, score 0.524 → 0.518).

The expected plans (``tests/golden/plans/*.yaml.gz``) were written by the CLI; the preset specs
(``tests/golden/presets/*.json.gz``) are the analysed models it cached, seeded into this session's preset cache
so the test needs no model build (transformers is still needed for the cache's key: its version). The hardware
profile is pinned to the shipped one, so ``auto``'s calibration of this machine plays no part. To regenerate
after an intended change of plans, run the ``CASES`` below with ``python -m sketchplan plan ... --out F`` from
the repository root and ``gzip -9 -n F`` each output.
"""

from __future__ import annotations

import difflib
import gzip
import os
import shutil
from pathlib import Path

import pytest

from sketchplan.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
HW = ["--hardware", "cpu-amd-epyc-1t-torch"]
ALL = ["--methods", "adam,shampoo,sketchy,extreme_tensoring,kradagrad,soap,adafactor,lion,muon",
       "--compress", "none,bfloat16,int8", "--momenta", "float32,bfloat16,int8"]
#: name → the flags it was planned with (the golden file is plans/<name>.yaml.gz)
CASES = {
    "gpt2_4g": ["--model", "gpt2", "--memory-budget", "4GiB"],
    "gpt2_all": ["--model", "gpt2", "--memory-budget", "2GiB", *ALL],
    "llama7b_80g": ["--model", "llama-7b", "--memory-budget", "80GiB"],
    "llama70b_640g": ["--model", "llama-70b", "--memory-budget", "640GiB"],
    "llama70b_fsdp": ["--model", "llama-70b", "--memory-budget", "80GiB", "--world-size", "64",
                      "--parallelism", "fsdp"],
    "shapes_1g": ["--model", "examples/shapes.yaml", "--memory-budget", "1GiB"],
}


def _seed_presets() -> None:
    """Put the recorded preset specs where ``planner.sources.preset_spec`` looks for its cache."""
    from sketchplan.planner import sources

    for path in (GOLDEN / "presets").glob("*.json.gz"):
        name = path.name.removesuffix(".json.gz")
        target = sources._cache_path(name)
        if target is None:
            pytest.skip("the preset cache is off (SKETCHPLAN_NO_CACHE) or transformers is not installed")
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)


@pytest.mark.parametrize("name", list(CASES))
def test_plan_is_byte_identical_to_the_recorded_one(name, tmp_path, monkeypatch, capsys):
    if "SKETCHPLAN_NO_CACHE" in os.environ:
        monkeypatch.delenv("SKETCHPLAN_NO_CACHE")
    _seed_presets()
    monkeypatch.chdir(ROOT)  # the shapes file's source is recorded as given, relative to the repository
    out = tmp_path / "plan.yaml"
    assert main(["plan", *CASES[name], *HW, "--out", str(out)]) == 0
    capsys.readouterr()
    expected = gzip.decompress((GOLDEN / "plans" / f"{name}.yaml.gz").read_bytes()).decode()
    got = out.read_text()
    if got != expected:
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "recorded",
                                                 "now", n=1))[:40])
        pytest.fail(f"plan {name} differs from the recorded one:\n{diff}")
